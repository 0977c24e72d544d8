"""Checkpoints on the Hugging Face Hub: a local folder or an ``ORG/NAME`` model repo, resolved to a folder.

Why a folder: a checkpoint (``model.safetensors`` + ``config.json`` + card) and an export (``model.onnx`` or
OpenVINO files + ``export.json``) are both plain folders, so a Hub snapshot of one is exactly the folder that
was uploaded and every loader (``load_detector``, the ONNX runtime) reads it unchanged. Downloads go through
``huggingface_hub.snapshot_download`` (its cache, ``HF_HUB_OFFLINE=1`` for cache-only); pickles are never
downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path

from detector.errors import DetectorError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.md", "*.onnx", "*.onnx.data", "*.xml", "*.bin"]


def is_hub_id(source: str) -> bool:
    """``ORG/NAME`` as the Hub spells repo ids (one slash, no leading dot or slash)."""
    return bool(HUB_ID.match(source)) and ".." not in source


def resolve_checkpoint(source: str | Path, revision: str | None = None) -> Path:
    """The local folder of ``source``: an existing folder as given, else the snapshot of Hub repo ``ORG/NAME``.

    OpenVINO's ``.bin`` weights are raw buffers, not pickles; torch pickles (``*.pt``, ``*.pth``, ``*.ckpt``)
    are not in the allowed patterns and a snapshot is never unpickled.
    """
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DetectorError(f"{path} is a file; pass a checkpoint or export folder, or a Hub id ORG/NAME")
        return path
    name = str(source)
    if not is_hub_id(name):
        raise DetectorError(f"{name} not found: pass a checkpoint folder (`detector train --out`), an export "
                            "folder (`detector export --out`) or a Hub model id ORG/NAME")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, repo_type="model", revision=revision, allow_patterns=ALLOW_PATTERNS)
    except Exception as exc:  # huggingface_hub raises many types (offline, 404, auth): one clear line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise DetectorError(f"{name} is no local folder and could not be fetched from the Hub ({type(exc).__name__}: "
                            f"{first}); check the path or id, `hf auth login` for private repos, and the network "
                            "(HF_HUB_OFFLINE=1 uses only the local cache)") from exc
    return Path(folder)
