"""Benchmark: per-image time of FineGrainedAD.predict and of `detector predict`'s whole file pass vs a bare
open_clip encode_image, same model, same run.

The detector is trained for one epoch with random ``ViT-B-16-plus-240`` weights (speed does not depend
on the weights) on the project's synthetic set with class-name prompts, then a batch of 8 RGB uint8
images is scored with ``predict`` (preprocessing, backbone with the V-V path and taps, textual and
visual maps, fusion, upsampling to 256 px, Gaussian smoothing) and, interleaved, the same model's
``encode_image`` runs on the already preprocessed batch. Target ratio: under 1.4x.

Then ``detector predict``'s file pass (``predict.predict_paths``: decode, predict, maps, masks, named defects,
overlays with their caption, scores) on ``--files`` PNG files of ``--size`` px, with a pixel and an image
threshold: with the default outputs, with the overlays at zlib level 6 (Pillow's default, what they were saved
at before), with ``--no-overlays``, and with ``--no-overlays --no-maps``; the share of the run spent on overlays
is the difference. Last, loading the saved checkpoint in a fresh interpreter (imports + weights), as the
`detector` commands import open_clip (without transformers and timm) and as a plain import does. Prints
figures only.

    python bench/bench_predict.py [--model ViT-B-16-plus-240] [--batch 8] [--repeats 5] [--device cpu]
        [--files 8] [--size 1024] [--rounds 2]
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
    ap.add_argument("--files", type=int, default=8, help="image files for the predict file pass (0: skip it)")
    ap.add_argument("--size", type=int, default=1024, help="side of those files in pixels")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the file pass (median)")
    ap.add_argument("--loads", type=int, default=2, help="fresh-process loads per import mode (min; 0: skip)")
    args = ap.parse_args()

    import torch

    from detector.config import TrainConfig
    from detector.run.train import train_model
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
        files = _write_files(paths, Path(tmp) / "files", args.files, args.size)
        from detector.store.saved_detector import save_detector

        ckpt = save_detector(model, Path(tmp) / "ckpt") if args.loads else None
        _bench(args, model, images, files, ckpt, t_build)


def _write_files(paths: list[Path], folder: Path, n: int, size: int) -> list[Path]:
    """``n`` PNG files of ``size`` px: the synthetic test images enlarged, with camera-like noise (what PNG
    encoding of a photo's overlay costs depends on it)."""
    import cv2
    import numpy as np

    from fsad_data import load_rgb
    from fsad_data.atomic import write_png_atomic

    rng = np.random.default_rng(0)
    out = []
    for i, p in enumerate((paths * max(1, n))[:n]):
        big = cv2.resize(load_rgb(p), (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        big = np.clip(big + rng.normal(0, 3, big.shape), 0, 255).astype(np.uint8)
        write_png_atomic(folder / f"{i:03d}.png", big)
        out.append(folder / f"{i:03d}.png")
    return out


def _bench(args: argparse.Namespace, model, images, files: list[Path], ckpt: Path | None, t_build: float) -> None:
    import torch

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
    if files:
        _file_pass(args, model, files, b)
    if ckpt is not None:
        _loads(args, ckpt)


def _file_pass(args: argparse.Namespace, model, files: list[Path], bare: float) -> None:
    """``predict_paths`` over the files with each output setting, interleaved rounds, per image."""
    import numpy as np

    from detector.run import predict as P
    from detector.store.thresholds import Thresholds
    from fsad_data import load_rgb

    first = model.predict([load_rgb(files[0])], resolution=args.resolution, branch="fused")
    thresholds = Thresholds(float(np.quantile(first.maps, 0.99)), float(first.scores[0]), None, "bench")
    items = P.list_inputs(files)
    settings = {  # name -> (overlays, maps, overlay zlib level)
        "default outputs (maps, overlays, masks, regions)": (True, True, P.OVERLAY_PNG_LEVEL),
        "  the same, overlays at zlib level 6 (before)": (True, True, None),
        "--no-overlays": (False, True, P.OVERLAY_PNG_LEVEL),
        "--no-overlays --no-maps": (False, False, P.OVERLAY_PNG_LEVEL),
    }
    times: dict[str, list[float]] = {k: [] for k in settings}
    level = P.OVERLAY_PNG_LEVEL
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds + 1):  # round 0 warms up
            for i, (name, (overlays, maps, png)) in enumerate(settings.items()):
                P.OVERLAY_PNG_LEVEL = png
                t = time.perf_counter()
                P.predict_paths(model, items, Path(tmp) / f"{r}-{i}", P.PredictSettings(
                    thresholds=thresholds, resolution=args.resolution, batch_size=args.batch, overlays=overlays, maps=maps))
                if r:
                    times[name].append((time.perf_counter() - t) / len(items))
    P.OVERLAY_PNG_LEVEL = level
    med = {k: statistics.median(v) for k, v in times.items()}
    full, before = (med[k] for k in list(settings)[:2])
    no_overlays = med["--no-overlays"]
    print(f"detector predict file pass, {len(items)} PNG files of {args.size} x {args.size} px, pixel + image "
          f"threshold (median of {args.rounds} interleaved rounds):")
    for name, v in med.items():
        print(f"  {name:52s} {1000 * v:8.1f} ms / image   {v / bare:6.2f}x encode_image")
    print(f"  share of the default run spent on overlays: {100 * (full - no_overlays) / full:.0f}% "
          f"(at zlib level 6: {100 * (before - no_overlays) / before:.0f}%)")


def _loads(args: argparse.Namespace, ckpt: Path) -> None:
    """Seconds to load the checkpoint in a fresh interpreter: imports (torch, open_clip) and the backbone."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; sys.path.insert(0, {str(root)!r})\n"
            f"from detector.store.saved_detector import load_detector\nload_detector({str(ckpt)!r}, device={args.device!r})")
    modes = {"as the detector commands import open_clip (lean)": "1", "plain open_clip import": "0"}
    best = {k: float("inf") for k in modes}
    for _ in range(args.loads):
        for name, lean in modes.items():
            env = {**os.environ, "FGAD_LEAN_OPEN_CLIP": lean}
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env)
            best[name] = min(best[name], time.perf_counter() - t)
    print(f"load the checkpoint in a fresh process (imports + backbone; min of {args.loads}):")
    for name, v in best.items():
        print(f"  {name:52s} {v:6.2f} s")


if __name__ == "__main__":
    main()
