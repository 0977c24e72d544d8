"""Benchmark: per-image time of FineGrainedAD.predict vs a bare open_clip encode_image, same model, same run.

The detector is trained for one epoch with random ``ViT-B-16-plus-240`` weights (speed does not depend
on the weights) on the project's synthetic set with class-name prompts, then a batch of 8 RGB uint8
images is scored with ``predict`` (preprocessing, backbone with the V-V path and taps, textual and
visual maps, fusion, upsampling to 256 px, Gaussian smoothing) and, interleaved, the same model's
``encode_image`` runs on the already preprocessed batch. Target ratio: under 1.4x. Prints figures only.

    python bench/bench_predict.py [--model ViT-B-16-plus-240] [--batch 8] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args()

    import torch

    from detector.train import TrainConfig, train_model
    from fsad_data import load_rgb, make_demo_data

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_data(Path(tmp) / "demo")
        t0 = time.perf_counter()
        model = train_model(TrainConfig(data=str(root), class_name="pill_box", shots=1, seed=0, out=str(tmp),
                                        backbone=args.model, pretrained="none", epochs=1, image_epochs=1,
                                        baseline="promptad", device=args.device, precision=args.precision),
                            progress=False)
        t_build = time.perf_counter() - t0
        paths = sorted((root / "pill_box" / "test").glob("*/*.png"))
        images = [load_rgb(p) for p in (paths * args.batch)[: args.batch]]
    bb = model.backbone
    pixels = bb.preprocess(images)
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)

    def bare() -> None:
        with torch.no_grad():
            bb.model.encode_image(pixels)

    def ours() -> None:
        model.predict(images, resolution=args.resolution, branch="fused", batch_size=args.batch)

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    timed(bare), timed(ours)  # warm-up
    t_bare, t_ours = [], []
    for _ in range(args.repeats):  # interleaved so drifts hit both alike
        t_bare.append(timed(bare))
        t_ours.append(timed(ours))
    b, o = statistics.median(t_bare) / args.batch, statistics.median(t_ours) / args.batch
    print(f"model {args.model} (random weights), batch {args.batch}, {args.device} {args.precision}, "
          f"torch threads {torch.get_num_threads()}; detector built in {t_build:.1f} s")
    print(f"bare open_clip encode_image (preprocessed batch): {1000 * b:8.1f} ms / image")
    print(f"FineGrainedAD.predict (RGB uint8 -> maps {args.resolution}px):  {1000 * o:8.1f} ms / image")
    print(f"ratio predict / encode_image: {o / b:.2f}x   target: < 1.4x (median of {args.repeats})")


if __name__ == "__main__":
    main()
