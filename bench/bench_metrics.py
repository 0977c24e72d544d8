"""Benchmark: all pixel metrics (AUROC, AP, F1-max, AUPRO@0.3) on 200 maps of 256x256, vs sklearn's AUROC.

Same pixels, same process: the time of ``detector.metrics.pixel_metrics`` (the exact path, one sort
shared by every metric), of ``PixelHistogram`` (the streaming default of ``detector eval``: maps added in
batches of 8, then the metrics), and of scikit-learn's ``roc_auc_score`` alone; the bytes each metrics
path holds, and how far the histogram's figures are from the exact ones. Target: under 5 s for all
pixel metrics together. Prints figures only, asserts nothing.

    python bench/bench_metrics.py [--images 200] [--size 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from sklearn.metrics import roc_auc_score

    from detector.metrics import PixelHistogram, pixel_metrics

    maps, masks = make_case(args.images, args.size)
    n_px = maps.size
    ours, streamed, theirs = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        got = pixel_metrics(maps, masks)
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hist = PixelHistogram()
        for start in range(0, len(maps), 8):
            hist.add(maps[start : start + 8], masks[start : start + 8])
        quick = hist.metrics()
        streamed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = roc_auc_score(masks.ravel(), maps.ravel())
        theirs.append(time.perf_counter() - t0)
    a, h, b = statistics.median(ours), statistics.median(streamed), statistics.median(theirs)
    print(f"pixels: {args.images} maps x {args.size}x{args.size} = {n_px / 1e6:.1f} M (float32)")
    print(f"detector.metrics.pixel_metrics (AUROC, AP, F1-max, AUPRO): {a:.2f} s (median of {args.repeats})")
    print(f"PixelHistogram, batches of 8 (same metrics, streaming):    {h:.2f} s")
    print(f"sklearn roc_auc_score alone:                               {b:.2f} s")
    print(f"ratio ours / sklearn AUROC: exact {a / b:.2f}x, histogram {h / b:.2f}x   target: all pixel metrics < 5 s")
    print(f"pixel AUROC ours {got['pixel_auroc']:.6f} vs sklearn {ref:.6f} (|diff| "
          f"{abs(got['pixel_auroc'] - ref):.1e}); AUPRO {got['aupro']:.4f}")
    held = maps.nbytes + masks.nbytes
    print(f"memory: histogram holds {hist.nbytes / 2**20:.2f} MiB whatever the number of maps; the exact path "
          f"holds the maps and masks, {held / 2**20:.1f} MiB ({held / hist.nbytes:.0f}x)")
    diffs = ", ".join(f"{k} {abs(quick[k] - got[k]):.1e}" for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max",
                                                                     "aupro"))
    print(f"histogram vs exact |diff|: {diffs} (AUROC bound {hist.record()['auroc_bound']:.1e})")


if __name__ == "__main__":
    main()
