"""The worker processes of a build: ``prepare`` (decode, crop, and the attribute captioner) on every core.

Why processes: cropping and the attribute captioner are numpy/OpenCV code that holds the GIL for much of its
time, so threads do not scale; each worker gets the settings once (``_init``) and then only small jobs
(``stages.Job``), and sends back the stored-result dicts (pixels only when the captioner runs in the main
process). Workers start with ``forkserver`` (never a fork of a process that may hold a loaded model and its
threads: a forked OpenCV thread pool hangs), so, as with every ``multiprocessing`` user, a script that calls
``run_build`` must do it under ``if __name__ == "__main__":`` (or set ``workers=1``). Workers ignore Ctrl-C
(the main process decides when to stop, see ``build._StopFlag``), use one OpenCV thread each, and exit when
the main process is gone, so a ``kill -9`` of a build leaves no process behind.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from fsad_data.samples import Sample
from mfsc_builder.build_config import BuildConfig
from mfsc_builder.captioners import Captioner
from mfsc_builder.stages import Job, _Prepared, class_surface, prepare, runs_beside_crop

PRELOAD = ["mfsc_builder.workers", "mfsc_builder.captioners.attributes"]  # imported by the fork server
_STATE: dict[str, object] = {}
_WATCH_SECONDS = 0.5


def default_workers() -> int:
    """The cores this process may use (its CPU affinity), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def worker_pool(workers: int, cfg: BuildConfig, captioner: Captioner | None) -> ProcessPoolExecutor:
    """``workers`` processes that run :func:`prepare_in_worker` and :func:`surface_in_worker`; the settings and
    ``captioner`` (one that runs beside the crop, or None) are sent once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)  # once per Python process: later pools start in milliseconds
    return ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_init, initargs=(cfg, captioner, os.getpid()))


@contextlib.contextmanager
def build_workers(workers: int, cfg: BuildConfig, captioner: Captioner) -> Iterator[ProcessPoolExecutor | None]:
    """The build's worker processes while the image stages run (None for ``workers == 1``); a captioner that
    runs beside the crop (``runs_beside_crop``) is sent to them."""
    if workers <= 1:
        yield None
        return
    pool = worker_pool(workers, cfg, captioner if runs_beside_crop(captioner) else None)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def prepare_in_worker(job: Job) -> _Prepared:
    """``stages.prepare`` with the settings this worker was started with."""
    return prepare(_STATE["cfg"], job, _STATE["captioner"])  # type: ignore[arg-type]


def surface_in_worker(class_name: str, voters: list[Sample]) -> bool:
    """``stages.class_surface`` with the settings this worker was started with."""
    return class_surface(_STATE["cfg"], class_name, voters)  # type: ignore[arg-type]


def _init(cfg: BuildConfig, captioner: Captioner | None, main_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import cv2

        cv2.setNumThreads(1)  # one process per core already
    except ImportError:  # pragma: no cover - OpenCV is a dependency
        pass
    _STATE.update(cfg=cfg, captioner=captioner)
    threading.Thread(target=_exit_with, args=(main_pid,), name="mfsc-watch", daemon=True).start()


def _exit_with(main_pid: int) -> None:
    """Leave at once when the main process has died (kill -9 leaves no orphan working on). Dead means gone,
    a zombie not yet reaped (its parent may be waiting for the pipes this worker holds open), or this worker
    handed to another parent (the fork server exits with the main process)."""
    parent = os.getppid()
    stat = Path(f"/proc/{main_pid}/stat")
    while True:
        time.sleep(_WATCH_SECONDS)
        try:
            os.kill(main_pid, 0)
            zombie = stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to someone else
            zombie = True
        except OSError:
            zombie = False
        if zombie or os.getppid() != parent:
            os._exit(0)
