"""Benchmark: the exact pixel metrics (AUROC, AP, F1-max, AUPRO@0.3) against the previous code, in time and memory.

Same pixels, same run (default 192 maps of 400x400, the size of issue 22): the time and the peak memory of
``detector.eval.metrics.pixel_metrics`` and of ``PixelMaps`` (what ``detector eval --exact-metrics`` holds: the
maps added in batches of 8, then the metrics) against the previous implementation (one packed sort of every
pixel carrying its region id, several full-size temporaries), loaded from git (``--old-rev``, the last
commit with it); how far apart their figures are (the exact figures should agree to 1e-14; F1-max and its
threshold bit for bit); then the streaming ``PixelHistogram`` (the default of ``detector eval``) and
scikit-learn's ``roc_auc_score`` alone for scale. Peak memory is measured in a fresh process per variant,
above the inputs: numpy's allocations (tracemalloc) and the resident set (Linux: peak RSS reset through
/proc/self/clear_refs). Prints figures only, asserts nothing.

    python bench/bench_metrics.py [--images 192] [--size 400] [--repeats 3] [--old-rev REV]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OLD_REV = "4da26130deef0980d948002a37438d21e6821524"  # the last commit with the one-sort pixel metrics
KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_f1_threshold", "aupro")


def make_case(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps with smooth noise plus a raised score on blob-shaped defects in half of the images."""
    import cv2

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            c = tuple(int(v) for v in rng.integers(size // 8, size - size // 8, 2))
            cv2.circle(masks[i].view(np.uint8), c, int(rng.integers(3, size // 10)), 1, -1)
    maps = rng.random((n, size, size), dtype=np.float32)
    for i in range(n):
        maps[i] = cv2.GaussianBlur(maps[i], (0, 0), 4)
    maps += masks * np.float32(0.05)
    return maps, masks


def old_module(rev: str) -> ModuleType | None:
    """detector/metrics.py (its path then) as of ``rev`` (None when git or the commit is not there)."""
    try:
        src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:detector/metrics.py"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "old_metrics.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_metrics", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_metrics"] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def run(mod: ModuleType, path: str, maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """The pixel metrics the way ``path`` computes them: pixel_metrics at once, or PixelMaps in batches of 8."""
    if path == "metrics":
        return mod.pixel_metrics(maps, masks)
    acc = mod.PixelMaps(len(maps))
    for start in range(0, len(maps), 8):
        acc.add(maps[start : start + 8], masks[start : start + 8])
    return acc.metrics()


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_child(which: str, path: str, images: int, size: int, rev: str) -> None:
    """(In a fresh process) the peak memory of one variant above its inputs, as one JSON line."""
    import detector.eval.metrics as new

    mod = new if which == "new" else old_module(rev)
    maps, masks = make_case(images, size)
    rss_reset = False
    try:
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        rss_reset = True
    except OSError:
        pass
    rss0 = _status_kib("VmRSS")
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    run(mod, path, maps, masks)
    traced = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    hwm = _status_kib("VmHWM")
    rss = (hwm - rss0) * 1024 if rss_reset and hwm is not None and rss0 is not None else None
    print(json.dumps({"traced": traced, "rss": rss}))


def peak(which: str, path: str, args: argparse.Namespace) -> dict[str, float | None]:
    out = subprocess.run([sys.executable, __file__, "--peak", which, path, "--images", str(args.images),
                          "--size", str(args.size), "--old-rev", args.old_rev],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--size", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old-rev", default=OLD_REV, help="git revision holding the previous detector/eval/metrics.py")
    ap.add_argument("--peak", nargs=2, metavar=("WHICH", "PATH"), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.peak:
        peak_child(*args.peak, args.images, args.size, args.old_rev)
        return

    from sklearn.metrics import roc_auc_score

    import detector.eval.metrics as new

    old = old_module(args.old_rev)
    maps, masks = make_case(args.images, args.size)
    n_px = maps.size
    print(f"pixels: {args.images} maps x {args.size}x{args.size} = {n_px / 1e6:.1f} M (float32), "
          f"{masks.mean():.1%} defect pixels")
    if old is None:
        print(f"previous code: git revision {args.old_rev} not found; only the current code is measured")

    times: dict[str, list[float]] = {"new": [], "old": [], "hist": [], "sklearn": []}
    for _ in range(args.repeats):
        for name, fn in (("new", lambda: new.pixel_metrics(maps, masks)),
                         ("old", (lambda: old.pixel_metrics(maps, masks)) if old else None)):
            if fn is None:
                continue
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "new":
                exact = got
            else:
                before = got
        t0 = time.perf_counter()
        hist = new.PixelHistogram()
        for start in range(0, len(maps), 8):
            hist.add(maps[start : start + 8], masks[start : start + 8])
        quick = hist.metrics()
        times["hist"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ref = roc_auc_score(masks.ravel(), maps.ravel())  # once: a scale, and the slowest by far
    times["sklearn"].append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"time, median of {args.repeats}:")
    print(f"  pixel_metrics (AUROC, AP, F1-max, AUPRO), exact:   {t['new']:.2f} s" +
          (f"   previous code {t['old']:.2f} s   ratio {t['new'] / t['old']:.2f}x" if old else ""))
    print(f"  PixelHistogram, batches of 8 (streaming default):  {t['hist']:.2f} s")
    print(f"  sklearn roc_auc_score alone (once):                {t['sklearn']:.2f} s")

    print("peak memory above the inputs (fresh process each; bytes per pixel: numpy's allocations, resident set):")
    for path, title in (("metrics", "pixel_metrics(maps, masks)"), ("maps", "PixelMaps (eval --exact-metrics)")):
        cur = peak("new", path, args)
        line = (f"  {title:34s} {cur['traced'] / 2**20:7.0f} MiB = {cur['traced'] / n_px:4.1f} B/px"
                + (f" (RSS {cur['rss'] / n_px:4.1f} B/px)" if cur["rss"] is not None else ""))
        if old:
            prev = peak("old", path, args)
            line += (f"   previous {prev['traced'] / 2**20:7.0f} MiB = {prev['traced'] / n_px:4.1f} B/px"
                     + (f" (RSS {prev['rss'] / n_px:4.1f} B/px)" if prev["rss"] is not None else "")
                     + f"   ratio {cur['traced'] / prev['traced']:.2f}x")
        print(line)

    if old:
        diffs = ", ".join(f"{k} {abs(exact[k] - before[k]):.1e}" for k in KEYS)
        print(f"exact vs previous code |diff|: {diffs}")
    print(f"pixel AUROC exact {exact['pixel_auroc']:.6f} vs sklearn {ref:.6f} (|diff| "
          f"{abs(exact['pixel_auroc'] - ref):.1e}); AUPRO {exact['aupro']:.4f}")
    held = new.PixelMaps(len(maps))
    for start in range(0, len(maps), 8):
        held.add(maps[start : start + 8], masks[start : start + 8])
    print(f"held: histogram {hist.nbytes / 2**20:.2f} MiB whatever the number of maps; PixelMaps "
          f"{held.nbytes / 2**20:.1f} MiB ({held.nbytes / n_px:.2f} B/px, {held.nbytes / hist.nbytes:.0f}x)")
    diffs = ", ".join(f"{k} {abs(quick[k] - exact[k]):.1e}" for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max",
                                                                       "aupro"))
    print(f"histogram vs exact |diff|: {diffs} (AUROC bound {hist.record()['auroc_bound']:.1e})")


if __name__ == "__main__":
    main()
