"""The worker processes of a build: ``prepare`` (decode, crop, and the attribute captioner) on every core.

Why processes: cropping and the attribute captioner are numpy/OpenCV code that holds the GIL for much of its
time, so threads do not scale; each worker gets the settings once (``_init``) and then only small jobs
(``steps.Job``), and sends back the stored-result dicts (pixels only when the captioner runs in the main
process).

Why ``spawn``: a worker is a fresh interpreter that imports what it needs itself, so it never inherits another
process's threads. A fork (``fork``, or ``forkserver`` with a preload) copies a process whose libraries may
already run thread pools: OpenCV 5.1 starts one at import, and a forked worker then blocked for ever in
``cv2.setNumThreads`` on a condition variable that a thread of the parent was waiting on. Whatever a library
does at import, a spawned worker starts clean; it costs about half a second per build
(``bench/bench_workers.py``). As with every ``multiprocessing`` user, a script that calls ``run_build`` must do it
under ``if __name__ == "__main__":`` (or set ``workers=1``).

A pool that does not answer is an error, not a wait (``WorkerPool.result``): workers that have not started, or no
job finished, within ``worker_timeout`` seconds stop the build with one line. Workers ignore Ctrl-C from birth
(the main process decides when to stop, see ``build._StopFlag``), use one OpenCV thread each, and die with the
main process (the kernel's parent-death signal on Linux, a watch thread elsewhere), so neither ``kill -9`` nor a
stuck worker leaves a process behind; the pool is killed, never waited for, when the build stops early.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import cv2

from fsad_data.samples import Sample
from mfsc_builder.build_config import BuildConfig
from mfsc_builder.captioners import Captioner
from mfsc_builder.errors import BuildError, BuildInterrupted
from mfsc_builder.steps import Job, Prepared, StopRequest, class_surface, prepare, runs_beside_crop

START_METHOD = "spawn"  # see the module docstring: never a fork of a process that may run threads
STOP_GRACE_SECONDS = 5.0  # after Ctrl-C, how long a wait for a busy worker may still last
CLOSE_GRACE_SECONDS = 5.0  # how long a closing pool waits for its workers to finish the job in hand
_POLL_SECONDS = 0.2  # waits are cut into slices so that a stop or a deadline is seen at once
_WATCH_SECONDS = 0.5
_STATE: dict[str, object] = {}
T = TypeVar("T")


def default_workers() -> int:
    """The cores this process may use (its CPU affinity), at most 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


class WorkerPool:
    """``workers`` spawned processes that run :func:`prepare_in_worker` and :func:`surface_in_worker`, and the
    deadlines that turn a silent pool into one line (``result``). All processes start at once, when the pool is
    made, so a worker that cannot start is found by the first wait."""

    def __init__(self, workers: int, cfg: BuildConfig, captioner: Captioner | None, timeout: float) -> None:
        context = multiprocessing.get_context(START_METHOD)
        self.timeout = timeout
        self._started = context.Value("i", 0)  # each worker adds one when its start-up is done
        self._since = time.monotonic()
        self._stop_seen: float | None = None  # when a wait first saw the stop request
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init,
                                            initargs=(cfg, captioner, os.getpid(), self._started))
        try:
            with _sigint_ignored():  # inherited through exec: a worker never turns Ctrl-C into a traceback
                for _ in range(workers):  # each submit to a pool with no idle worker starts one process
                    self.executor.submit(_started)
        except BaseException:
            self.close(finished=False)
            raise
        self.workers = len(self._processes()) or workers  # the processes started above, all expected to answer

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        return self.executor.submit(fn, *args)

    def started(self) -> int:
        return int(self._started.value)

    def result(self, future: Future[T], what: str, stop: StopRequest | None = None) -> T:
        """``future``'s result. A pool whose workers have not all started within ``timeout`` seconds of its
        creation, or that has not finished this job (``what``) within ``timeout`` seconds of this wait, is a
        ``BuildError`` naming what hung; once a stop is requested, waits end ``STOP_GRACE_SECONDS`` after it."""
        began = time.monotonic()
        while True:
            try:
                return future.result(timeout=_POLL_SECONDS)
            except FutureTimeout:
                pass
            except BrokenExecutor as exc:
                raise worker_died(exc) from None
            now = time.monotonic()
            if self.started() < self.workers and now - self._since > self.timeout:
                raise BuildError(f"{self.workers - self.started()} of {self.workers} worker processes of the build "
                                 f"did not start within {self.timeout:g} s (hung in their start-up); "
                                 f"{_HANG_HINT}")
            if now - began > self.timeout:
                raise BuildError(f"no worker process finished {what} within {self.timeout:g} s (a worker hung or "
                                 f"the job is far slower than usual); {_HANG_HINT}")
            if stop is not None and stop.requested and self._stop_seen is None:
                self._stop_seen = now
            if self._stop_seen is not None and now - self._stop_seen > STOP_GRACE_SECONDS:
                raise BuildInterrupted("interrupted while a worker process was busy; the parts finished before "
                                       "are stored: run the same command again to resume")

    def close(self, finished: bool) -> None:
        """Jobs not started are dropped and the workers leave once their job in hand is done; a worker still
        busy after ``CLOSE_GRACE_SECONDS`` (hung) is killed instead of waited for, so a stuck worker can never
        hold the build open."""
        running = {p.sentinel: p for p in self._processes()}  # read first: shutdown forgets them
        results = getattr(self.executor, "_result_queue", None)
        self.executor.shutdown(wait=False, cancel_futures=True)  # its manager thread reaps the processes
        deadline = time.monotonic() + CLOSE_GRACE_SECONDS
        try:
            while running:  # a sentinel is ready once its process has exited, whoever reaps it
                for gone in multiprocessing.connection.wait(list(running), max(0.0, deadline - time.monotonic())):
                    running.pop(gone)  # type: ignore[call-overload]
                if time.monotonic() >= deadline:
                    break
        finally:  # even when a signal ends the wait
            for p in running.values():
                p.kill()
            if running and results is not None:
                # a worker killed while it sent a result leaves half a message; with this process's copy of the
                # pipe's write end closed, the pool's manager thread reads its end instead of waiting for ever
                # (and Python's exit, which joins that thread, with it)
                results._writer.close()

    def _processes(self) -> list[Any]:
        """The pool's processes (``multiprocessing.Process``). concurrent.futures keeps them, and its result
        pipe, in private attributes (Python 3.14 adds ``kill_workers``); without them ``close`` only asks."""
        return list((getattr(self.executor, "_processes", None) or {}).values())


_HANG_HINT = ("the build stopped, finished parts are stored; rerun the same command to resume, raise "
              "--worker-timeout if your images are huge, or run without worker processes with --workers 1")


@contextlib.contextmanager
def build_workers(workers: int, cfg: BuildConfig, captioner: Captioner) -> Iterator[WorkerPool | None]:
    """The build's worker processes while the image stages run (None for ``workers == 1``); a captioner that
    runs beside the crop (``runs_beside_crop``) is sent to them."""
    if workers <= 1:
        yield None
        return
    pool = WorkerPool(workers, cfg, captioner if runs_beside_crop(captioner) else None, cfg.worker_timeout)
    finished = False
    try:
        yield pool
        finished = True
    finally:
        pool.close(finished)


def worker_died(exc: BaseException) -> BuildError:
    """The line for a worker process that died (killed, out of memory, or an unguarded script)."""
    return BuildError(f"a worker process of the build died ({exc}); if you call run_build from a script, put "
                      "the call under `if __name__ == \"__main__\":` (Python's rule for worker processes), or "
                      "use --workers 1; rerun to resume")


def prepare_in_worker(job: Job) -> Prepared:
    """``steps.prepare`` with the settings this worker was started with."""
    return prepare(_STATE["cfg"], job, _STATE["captioner"])  # type: ignore[arg-type]


def surface_in_worker(class_name: str, voters: list[Sample]) -> bool:
    """``steps.class_surface`` with the settings this worker was started with."""
    return class_surface(_STATE["cfg"], class_name, voters)  # type: ignore[arg-type]


def _started() -> None:
    """The job that makes the pool start a process (the start-up itself is counted by ``_init``)."""


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _init(cfg: BuildConfig, captioner: Captioner | None, main_pid: int, started: Any) -> None:
    _die_with(main_pid)  # first: whatever hangs after this, the worker goes with the build
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one process per core already
    _STATE.update(cfg=cfg, captioner=captioner)
    with started.get_lock():
        started.value += 1


def _die_with(main_pid: int) -> None:
    """Leave when the main process dies: the kernel kills this worker (Linux's parent-death signal, which holds
    even while the worker hangs in native code), or a watch thread notices (elsewhere, and as a second net)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != main_pid:  # the main process died before the line above
                os._exit(0)
    threading.Thread(target=_exit_with, args=(main_pid,), name="mfsc-watch", daemon=True).start()


def _exit_with(main_pid: int) -> None:
    """Leave at once when the main process has died (kill -9 leaves no orphan working on). Dead means gone,
    a zombie not yet reaped (its parent may be waiting for the pipes this worker holds open), or this worker
    handed to another parent."""
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
