"""Start-up of the build's worker pool: spawned workers (now) against the fork server with a preload (before).

What is timed: from creating a pool of ``--workers`` processes to every worker having started (OpenCV imported,
one OpenCV thread set) and answered one job, for the first pool of a fresh process and for the pools after it.
Each method runs in its own process, ``--repeat`` times. The fork server is the code before the fix, rebuilt
here: it preloads the worker and attribute-captioner modules, and its forked workers can hang for ever in
``cv2.setNumThreads`` (OpenCV 5.1 runs a thread pool from import): a pool that does not answer within
``--hang-after`` seconds is counted as hung, not timed.

    python bench/bench_workers.py [--workers 2] [--pools 3] [--repeat 3] [--hang-after 20]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _forkserver_init(started) -> None:  # started: a multiprocessing.Value
    import cv2

    cv2.setNumThreads(1)
    with started.get_lock():
        started.value += 1


def _pid() -> int:
    return os.getpid()


def _spawned(workers: int, timeout: float) -> tuple:
    from mfsc_builder.build_config import BuildConfig
    from mfsc_builder.workers import WorkerPool

    pool = WorkerPool(workers, BuildConfig(), None, timeout=timeout)
    return pool.executor, pool.started


def _forked(workers: int, timeout: float) -> tuple:
    """The pool before the fix: a fork server that preloads the worker and attribute-captioner modules."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["mfsc_builder.workers", "mfsc_builder.captioners.attributes"])
    started = ctx.Value("i", 0)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_forkserver_init, initargs=(started,))
    return pool, lambda: started.value


def child(method: str, workers: int, pools: int, hang_after: float) -> None:
    """One fresh process: ``pools`` pools one after another; prints their start-up times as JSON."""
    make = {"spawn": _spawned, "forkserver": _forked}[method]
    times: list[float] = []
    for _ in range(pools):
        t0 = time.perf_counter()
        executor, started = make(workers, hang_after)
        futures = [executor.submit(_pid) for _ in range(workers)]
        try:
            for f in futures:
                f.result(timeout=hang_after)
            while started() < workers:  # every worker through its start-up: shutdown cannot hang
                if time.perf_counter() - t0 > hang_after:
                    raise TimeoutError
                time.sleep(0.005)
        except TimeoutError:
            print(json.dumps({"times": times, "hung": True}), flush=True)
            os._exit(0)
        times.append(time.perf_counter() - t0)
        executor.shutdown(wait=True)
    print(json.dumps({"times": times, "hung": False}), flush=True)


def run_once(method: str, workers: int, pools: int, hang_after: float) -> dict:
    """One fresh child process. Its output goes to files, not pipes: hung forked workers would hold a pipe open."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", method, str(workers), str(pools),
                                 str(hang_after)], cwd=str(ROOT), stdout=out, stderr=err, text=True,
                                start_new_session=True)
        try:
            proc.wait(timeout=hang_after * pools + 120)
        finally:  # forked workers of a hung pool have no parent-death signal: the whole session goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        lines = [ln for ln in out.read().splitlines() if ln.startswith("{")]
        if not lines:
            raise SystemExit(f"{method}: no result (exit {proc.returncode}): {err.read()[-2000:]}")
    return json.loads(lines[-1])


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:7.0f} ms" if times else "      - "


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--pools", type=int, default=3, help="pools made one after another in each process")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per method")
    ap.add_argument("--hang-after", type=float, default=20.0)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, workers, pools, hang_after = args.child
        child(method, int(workers), int(pools), float(hang_after))
        return
    import cv2

    print(f"worker pool start-up, {args.workers} workers, OpenCV {cv2.__version__}, {args.repeat} processes x "
          f"{args.pools} pools per method")
    rows = {}
    for method in ("spawn", "forkserver"):
        first, later, hung = [], [], 0
        for _ in range(args.repeat):
            res = run_once(method, args.workers, args.pools, args.hang_after)
            times = res["times"]
            hung += bool(res["hung"])
            if times:
                first.append(times[0])
                later += times[1:]
        rows[method] = (first, later, hung)
        print(f"  {method:<10} first pool {_ms(first)}   later pools {_ms(later)}   "
              f"hung: {hung} of {args.repeat} processes")
    s_first, f_first = rows["spawn"][0], rows["forkserver"][0]
    if s_first and f_first:
        print(f"  spawn / forkserver, first pool: {statistics.median(s_first) / statistics.median(f_first):.2f}x")
    if rows["spawn"][1] and rows["forkserver"][1]:
        print(f"  spawn / forkserver, later pools: "
              f"{statistics.median(rows['spawn'][1]) / statistics.median(rows['forkserver'][1]):.1f}x")


if __name__ == "__main__":
    main()
