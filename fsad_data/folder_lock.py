"""One run at a time per output folder, for `mfsc build` and the `detector` commands alike.

Why an OS lock (``filelock``) and not a pid file: the kernel releases it when the process ends, however it
ends, so a killed run never blocks the next one; a pid file left by a ``kill -9`` blocks it as soon as that
pid is reused by another process, which in a container happens within seconds. The holder writes its pid
into the lock file, only so that a refused run can name it.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType
from typing import Self


class FolderInUse(Exception):
    """Another live process holds the lock; ``holder`` is its pid when the lock file says it."""

    def __init__(self, lock_file: Path, holder: int | None) -> None:
        self.lock_file, self.holder = lock_file, holder
        super().__init__(f"{lock_file} is held by {f'process {holder}' if holder else 'another process'}")


class FolderLock:
    """Hold ``lock_file`` (created with its folder) from ``acquire`` to ``release``; the file is removed on
    release. A second holder, in this process or another, gets ``FolderInUse`` at once, or after waiting up
    to ``timeout`` seconds for the first to finish."""

    def __init__(self, lock_file: str | Path, timeout: float = 0) -> None:
        self.lock_file, self.timeout = Path(lock_file), timeout
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def acquire(self) -> None:
        from filelock import FileLock, Timeout

        self.lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.lock_file, timeout=self.timeout)
        try:
            lock.acquire()
        except Timeout:
            raise FolderInUse(self.lock_file, _holder(self.lock_file)) from None
        self._lock = lock
        with contextlib.suppress(OSError), open(self.lock_file, "r+", encoding="ascii") as fh:
            fh.truncate()
            fh.write(str(os.getpid()))

    def release(self) -> None:
        if self._lock is None:
            return
        self._lock.release()
        self._lock = None
        self.lock_file.unlink(missing_ok=True)  # filelock re-checks the inode, so a peer racing for it is safe

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _holder(lock_file: Path) -> int | None:
    try:
        return int(lock_file.read_text(encoding="ascii").strip()) or None
    except (OSError, ValueError):
        return None
