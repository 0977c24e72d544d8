"""One run at a time per output folder, for `mfsc build` and the `detector` commands alike.

Why an OS lock (``filelock``) and not a pid file: the kernel releases it when the process ends, however it
ends, so a killed run never blocks the next one; a pid file left by a ``kill -9`` blocks it as soon as that
pid is reused by another process, which in a container happens within seconds. The lock file's content is
``filelock``'s (its soft fallback, on file systems without ``flock``, keeps its marker there), so the
refusal names the lock file, not the process.

The file is deleted while still held, then unlocked, so no lock file stays beside the users' folders: a run
that opens the path afterwards creates a new one, and one that opened the old file just before the delete
finds, once it has locked it, that it has no name any more (filelock re-checks the link count) and tries
again on the new one.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import TracebackType
from typing import Self

_RETRIES = 5  # attempts when the lock's folder vanishes under us (see acquire)


class FolderInUse(Exception):
    """Another live run holds the lock (or did not let go of it within the timeout)."""

    def __init__(self, lock_file: Path) -> None:
        self.lock_file = lock_file
        super().__init__(f"{lock_file} is held by another run")


class FolderLock:
    """Hold ``lock_file`` (created with its folder) from ``acquire`` to ``release``. A second holder, in this
    process or another, gets ``FolderInUse`` at once, or after waiting up to ``timeout`` seconds for the first
    to finish."""

    def __init__(self, lock_file: str | Path, timeout: float = 0) -> None:
        self.lock_file, self.timeout = Path(lock_file), timeout
        self._lock = None
        self._made: list[Path] = []

    def acquire(self) -> None:
        from filelock import FileLock, Timeout  # about 50 ms of imports: only once a lock is taken

        lock = FileLock(self.lock_file, timeout=self.timeout)
        self._made = []
        for attempt in range(_RETRIES):
            missing = _missing_folders(self.lock_file.parent)  # one path's chain: the longest is every one we made
            self._made = missing if len(missing) > len(self._made) else self._made
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire()
                break
            except Timeout:
                raise FolderInUse(self.lock_file) from None
            except FileNotFoundError:  # another run let go of its lock and removed the folders both needed
                if attempt == _RETRIES - 1:
                    raise
        self._lock = lock

    def release(self) -> None:
        if self._lock is None:
            return
        with contextlib.suppress(OSError):  # on Windows an open lock file cannot go; filelock removes it there
            self.lock_file.unlink()
        self._lock.release()
        self._lock = None
        # a run refused after taking the lock leaves no folder behind that only the lock needed; a folder the
        # run (or anyone) wrote into is not empty, and rmdir leaves it and everything above it
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _missing_folders(folder: Path) -> list[Path]:
    """The folders of ``folder``'s path that do not exist yet, deepest first (those ``mkdir`` will create)."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def lock_beside(folder: str | Path, name: str | None = None) -> FolderLock:
    """The lock of a run that replaces ``folder`` whole (``.NAME.lock`` in its parent, so the swap never moves
    it): one owner of where that lock lives, for both halves. ``name``: another lock beside it (a benchmark
    shard). Not taken yet: ``acquire`` it, or use it as a context manager."""
    folder = Path(folder).resolve()  # `--out .` has no name, and two spellings of one folder share its lock
    return FolderLock(folder.parent / f".{name or folder.name}.lock")
