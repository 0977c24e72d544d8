"""`detector serve`'s settings and their defaults, in a module without LitServe or torch: the CLI reads its
flags' defaults here (for a fast --help), the service (``detector.deploy.serve``) its settings."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServer.run binds (it refuses other addresses)
MAX_UPLOAD_MB = 32  # one request's body
MAX_PIXELS = 40_000_000  # one image's width x height, read from its header before decoding (RGB: 120 MB)
MAX_IMAGES = 16  # images in one request
MAX_BATCH = 8  # requests LitServe puts in one Detector.predict call
BATCH_TIMEOUT = 0.005  # s LitServe waits for a batch to fill


@dataclass(frozen=True)
class Limits:
    """What one request may cost before it is refused."""

    max_bytes: int = MAX_UPLOAD_MB << 20
    max_pixels: int = MAX_PIXELS
    max_images: int = MAX_IMAGES


@dataclass
class ServeSettings:
    """``detector serve``'s flags."""

    sources: list[str]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None  # the key itself (read from --api-key-env by the CLI), never printed
    limits: Limits = field(default_factory=Limits)
    max_batch: int = MAX_BATCH
    batch_timeout: float = BATCH_TIMEOUT
    workers: int = 1  # inference workers per detector and device
    device: str = "cpu"
    engine: str | None = None
    watch: Path | None = None
    allow_threshold_change: bool = False
    log_level: str = "warning"
