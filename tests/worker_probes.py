"""Things a build's worker processes import in the tests of ``mfsc_builder.workers`` (they must be importable
by name in a spawned worker): a module that holds a lock in a thread as a busy OpenCV pool does, captioners
that hang where a worker starts or works, and the live processes of a session."""
from __future__ import annotations

import threading
import time
from pathlib import Path

from mfsc_builder.captioners.attributes import AttributeCaptioner

BUSY = threading.Lock()
_RELEASE = threading.Event()


def hold_in_a_thread() -> None:
    """A thread takes ``BUSY`` and keeps it, as a library's thread pool is busy while the process forks."""
    taken = threading.Event()

    def work() -> None:
        with BUSY:
            taken.set()
            _RELEASE.wait()

    threading.Thread(target=work, daemon=True).start()
    taken.wait()


def busy_lock_free(seconds: float = 1.0) -> bool:
    """In a worker: can it take ``BUSY``? Never in a fork of a process whose thread held it."""
    if BUSY.acquire(timeout=seconds):
        BUSY.release()
        return True
    return False


def opencv_threads() -> int:
    import cv2

    return cv2.getNumThreads()


class HangsWhenStarted(AttributeCaptioner):
    """Sent to the workers at their start: unpickling it there never ends."""

    def __reduce__(self):
        return time.sleep, (3600,)


class HangsOnEveryJob(AttributeCaptioner):
    """Runs in the workers: every caption call never ends."""

    def caption(self, requests):
        time.sleep(3600)
        return []


def session_processes(sid: int) -> list[int]:
    """Pids of the live processes of a session (Linux /proc): a command started with start_new_session=True and
    everything it started."""
    return _live_where(3, sid)


def children_of(pid: int) -> list[int]:
    """Pids of the live child processes of ``pid`` (the multiprocessing resource tracker included)."""
    return _live_where(1, pid)


def _live_where(field: int, value: int) -> list[int]:
    """Pids of the live (not zombie) processes whose /proc stat field after the name (1: ppid, 3: session)
    equals ``value``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids
