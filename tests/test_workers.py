"""The build's worker pool (``mfsc_builder.workers``): workers start clean whatever the main process's libraries
run (the OpenCV 5.1 deadlock), a pool that does not answer is one line within ``worker_timeout``, and Ctrl-C or
SIGTERM end a stuck build within seconds with no process left behind."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import worker_probes

from fsad_data.cli_guard import INTERRUPTED, TERMINATED
from mfsc_builder.build import BuildConfig, run_build
from mfsc_builder.build_config import MAX_WORKER_TIMEOUT
from mfsc_builder.errors import BuildError
from mfsc_builder.workers import WorkerPool

CLASS = "pill_box"
ROOT = Path(__file__).resolve().parents[1]


def _cfg(demo_root: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(source=str(demo_root), out=str(out), classes=[CLASS], workers=2, **kw)


def _tracker_or_gone(pid: int) -> bool:
    """Multiprocessing's resource tracker, or a process that exited since it was listed (a race CI hit)."""
    try:
        return b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _no_worker_left() -> bool:
    """Every child of this test process is gone but multiprocessing's resource tracker (one per process)."""
    deadline = time.time() + 10
    while time.time() < deadline:
        kids = [p for p in worker_probes.children_of(os.getpid()) if not _tracker_or_gone(p)]
        if not kids:
            return True
        time.sleep(0.1)
    return False


def test_a_busy_thread_of_the_main_process_cannot_hang_a_worker(tmp_path):
    """The cause of the OpenCV 5.1 hang, made certain: a thread holds a lock when the workers start. A forked
    process inherits the lock held by a thread it does not have (it would wait for ever); a worker of the pool
    does not, because it is a fresh interpreter."""
    worker_probes.hold_in_a_thread()
    fork = multiprocessing.get_context("fork")
    with fork.Pool(1) as forked:  # the hazard is real
        assert forked.apply_async(worker_probes.busy_lock_free, (0.5,)).get(timeout=60) is False
    pool = WorkerPool(2, BuildConfig(), None, timeout=60)
    try:
        assert pool.result(pool.submit(worker_probes.busy_lock_free, 5.0), "the lock probe") is True
    finally:
        pool.close(finished=True)
    assert _no_worker_left()


def test_workers_start_while_the_main_process_runs_an_opencv_thread_pool():
    """The reported hang itself: OpenCV's own thread pool busy in the main process while pools start; every
    worker starts, sets one OpenCV thread and answers (the old fork server hung here on 5.1, most starts)."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(4)
    image = np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), np.uint8)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            cv2.GaussianBlur(image, (31, 31), 0)

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        for _ in range(3):
            pool = WorkerPool(2, BuildConfig(), None, timeout=60)
            try:
                futures = [pool.submit(worker_probes.opencv_threads) for _ in range(4)]
                assert [pool.result(f, "the OpenCV probe") for f in futures] == [1, 1, 1, 1]
                deadline = time.time() + 30
                while pool.started() < 2 and time.time() < deadline:
                    time.sleep(0.05)
                assert pool.started() == 2
            finally:
                pool.close(finished=True)
    finally:
        stop.set()
        thread.join()
        cv2.setNumThreads(threads)
    assert _no_worker_left()


def test_workers_that_hang_in_their_start_up_are_one_line_within_the_bound(demo_root, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(BuildError) as err:
        run_build(_cfg(demo_root, tmp_path / "out", worker_timeout=2), captioner=worker_probes.HangsWhenStarted())
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert "2 of 2 worker processes of the build did not start within 2 s" in message
    assert "--workers 1" in message and "--worker-timeout" in message and "\n" not in message
    assert elapsed < 30, elapsed
    assert _no_worker_left()  # the hung workers are killed, not waited for


def test_a_job_that_never_finishes_is_one_line_within_the_bound_and_the_build_resumes(demo_root, tmp_path):
    out = tmp_path / "out"
    t0 = time.monotonic()
    with pytest.raises(BuildError) as err:
        run_build(_cfg(demo_root, out, worker_timeout=8), captioner=worker_probes.HangsOnEveryJob())
    assert time.monotonic() - t0 < 45
    message = str(err.value)  # 8 s: two workers surely start in that time on a loaded machine, then hang
    assert message.startswith(f"no worker process finished the images {CLASS}/") and "within 8 s" in message
    assert "--workers 1" in message
    assert _no_worker_left()
    summary = run_build(_cfg(demo_root, out))  # the same build, healthy captioner: it goes on in the same folder
    assert summary.images == {"train": 8, "test": 12}


STUCK_BUILD = textwrap.dedent("""
    import sys
    import typer
    import worker_probes
    from fsad_data.cli_guard import run_guarded
    from mfsc_builder.build import BuildConfig, run_build
    from mfsc_builder.errors import BuildError, BuildInterrupted

    if __name__ == "__main__":
        cfg = BuildConfig(source=sys.argv[1], out=sys.argv[2], classes=[sys.argv[3]], workers=2,
                          worker_timeout=600)
        try:
            run_guarded(lambda: run_build(cfg, captioner=worker_probes.HangsOnEveryJob()), (BuildError,),
                        stopped=(BuildInterrupted,), interrupted="interrupted")
        except typer.Exit as stop:
            sys.exit(stop.exit_code)
""")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, TERMINATED), (signal.SIGINT, INTERRUPTED)])
def test_a_stuck_build_stops_within_seconds_and_leaves_no_process(demo_root, tmp_path, sig, code):
    """SIGTERM (to the build alone, as a process manager sends it) or Ctrl-C while every worker hangs: the
    build ends within seconds with its exit code, and no process of it is left (workers, resource tracker)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", STUCK_BUILD, str(demo_root), str(tmp_path / "out"), CLASS],
                            env=env, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "out" / "work" / "manifest.json").exists():
        time.sleep(0.05)
    time.sleep(1.0)  # the workers are inside their hung jobs now
    assert len(worker_probes.session_processes(proc.pid)) >= 3  # the build, its workers, the resource tracker
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in stderr
    deadline = time.time() + 10
    while worker_probes.session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert worker_probes.session_processes(proc.pid) == []


@pytest.mark.parametrize(("value", "hint"), [(0, "above 0"), (-1, "above 0"), (float("nan"), "above 0"),
                                           (float("inf"), f"at most {MAX_WORKER_TIMEOUT}")])
def test_a_worker_timeout_out_of_range_is_refused(demo_root, tmp_path, value, hint):
    with pytest.raises(BuildError, match=hint):
        run_build(_cfg(demo_root, tmp_path / "out", worker_timeout=value))
