"""Benchmark: cost of the Backbone's extra outputs (V-V path + cloned taps) over a bare open_clip encode_image.

Same model, same batch, same process: per-image time of ``model.encode_image`` vs ``Backbone.encode`` and their
ratio (target < 1.4x).  Random weights (``--pretrained none``): speed does not depend on the weights.  Prints
figures only, asserts nothing.

    python bench/bench_backbone.py [--model ViT-B-16-plus-240] [--batch 8] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _once(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args()

    import torch

    from detector.method.backbone import load_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    bb = load_backbone(args.model, pretrained="none", device=args.device, precision=args.precision)
    pixels = torch.randn(args.batch, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    pixels = pixels.to(device=bb.device, dtype=bb.dtype)
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)

    def bare() -> None:
        with torch.no_grad():
            bb.model.encode_image(pixels)

    def ours() -> None:
        bb.encode(pixels)

    _once(bare, sync), _once(ours, sync)  # warm-up (allocations, kernel selection)
    # interleave the two so drifts (thermal, other processes) hit both alike
    t_bare: list[float] = []
    t_ours: list[float] = []
    for _ in range(args.repeats):
        t_bare.append(_once(bare, sync))
        t_ours.append(_once(ours, sync))
    med_bare = statistics.median(t_bare) / args.batch
    med_ours = statistics.median(t_ours) / args.batch
    print(f"device           : {bb.device} ({args.precision}), torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"model            : {bb.name}, {bb.image_size} px, grid {bb.grid}, depth {bb.depth}, "
          f"V-V blocks {bb.vv_blocks}, taps {bb.tap_layers}")
    print(f"batch x repeats  : {args.batch} x {args.repeats} (median)")
    print(f"encode_image     : {med_bare * 1000:8.1f} ms / image")
    print(f"Backbone.encode  : {med_ours * 1000:8.1f} ms / image (CLS + V-V patches + {len(bb.tap_layers)} taps)")
    print(f"ratio            : {med_ours / med_bare:8.2f} x   (target < 1.4x)")


if __name__ == "__main__":
    main()
