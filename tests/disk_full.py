"""A disk that fills up mid-write, for the tests of every atomic writer: ``os.fdopen`` (what ``mkstemp``-based
writers open their temporary file with) returns a file whose write stores half of the bytes, then fails with
ENOSPC, so a writer that leaves its partial file behind, or reports the temporary name, is caught."""
from __future__ import annotations

import errno
import os


class DiskFull:
    """A file wrapper whose write stores half of the bytes and then fails with ENOSPC."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data) -> int:
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def fill_disk_on_fdopen(monkeypatch, after: int = 0) -> list[int]:
    """``os.fdopen(...)`` returns a disk-full file from the (after+1)-th call on; returns the call counter."""
    real = os.fdopen
    calls = [0]

    def fdopen(fd, *args, **kwargs):
        calls[0] += 1
        fh = real(fd, *args, **kwargs)
        return DiskFull(fh) if calls[0] > after else fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    return calls
