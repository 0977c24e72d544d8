"""A file's SHA-256, read in blocks (flat memory for multi-GB weights): the one way both halves fingerprint a
file they record (backbone weights, checkpoint tensors, caption images, a shots file) or check it later."""
from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 8 << 20  # 8 MiB: large enough that the hash, not the reads, sets the pace


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()
