"""Benchmark: ONNX Runtime (CPU) on the exported graph vs FineGrainedAD.predict vs bare encode_image, same run.

The detector is trained for one epoch with random ``ViT-B-16-plus-240`` weights (speed does not depend on the
weights) on the project's synthetic set with class-name prompts, saved, and exported with ``detector export``
(dynamo exporter, fp32). The same RGB uint8 images then go, interleaved, through
- ``ExportedModel.predict`` (Pillow resize, then the graph: normalisation, backbone with the V-V path and taps,
  textual and visual maps, fusion, upsampling, Gaussian smoothing) on ONNX Runtime's CPU provider;
- ``FineGrainedAD.predict`` (the PyTorch path: the same steps);
- open_clip's ``encode_image`` on the already preprocessed batch (the floor: the image tower alone).
Both engines get the same number of CPU threads. Target: ONNX at most 0.9x the PyTorch predict time. Prints
figures only (median per image over the repeats).

Measured once (2026-12-01, 2 shared CPU cores under load from other jobs, 2 threads, 4 images, 3 repeats, 4 min
14 s in all, peak RSS 4.0 GB): encode_image 2890 ms / image, PyTorch predict 3159 ms, ONNX Runtime 2079 ms
(max |diff| 4e-7): ONNX / PyTorch predict 0.66x, ONNX / encode_image 0.72x, predict / encode_image 1.09x.

    python bench/bench_export.py [--model ViT-B-16-plus-240] [--images 4] [--repeats 3] [--threads 0]
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
    ap.add_argument("--images", type=int, default=4, help="images per batch (the same for every engine)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch and ONNX Runtime (0: torch's)")
    args = ap.parse_args()

    import torch

    from detector.config import TrainConfig
    from detector.deploy.export import export_checkpoint
    from detector.run.runtime import load_exported
    from detector.run.train import train_model
    from detector.store.saved_detector import save_detector
    from fsad_data import load_rgb, make_demo_data

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_data(Path(tmp) / "demo")
        t0 = time.perf_counter()
        model = train_model(TrainConfig(data=str(root), class_name="pill_box", shots=1, seed=0, out=str(tmp),
                                        backbone=args.model, pretrained="none", epochs=1, image_epochs=1,
                                        baseline="promptad"), progress=False)
        t_build = time.perf_counter() - t0
        paths = sorted((root / "pill_box" / "test").glob("*/*.png"))
        images = [load_rgb(p) for p in (paths * args.images)[: args.images]]
        ckpt = save_detector(model, Path(tmp) / "ckpt")
        t0 = time.perf_counter()
        out = export_checkpoint(ckpt, "onnx", Path(tmp) / "onnx", resolution=args.resolution)
        t_export = time.perf_counter() - t0
        size_mb = (out / "model.onnx").stat().st_size / 2**20
        exported = load_exported(out, threads=threads)
        bb = model.backbone
        pixels = bb.preprocess(images)

        def bare() -> None:
            with torch.no_grad():
                bb.model.encode_image(pixels)

        def ours() -> None:
            model.predict(images, resolution=args.resolution, branch="fused", batch_size=args.images)

        def onnx() -> None:
            exported.predict(images, batch_size=args.images)

        def timed(fn) -> float:
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        import numpy as np

        ref, got = model.predict(images, resolution=args.resolution), exported.predict(images)
        diff = max(float(np.abs(ref.scores - got.scores).max()), float(np.abs(ref.maps - got.maps).max()))
        timed(bare), timed(ours), timed(onnx)  # warm-up
        runs: dict[str, list[float]] = {"bare": [], "ours": [], "onnx": []}
        for _ in range(args.repeats):  # interleaved so drifts hit all alike
            for name, fn in (("bare", bare), ("ours", ours), ("onnx", onnx)):
                runs[name].append(timed(fn) / args.images)
    b, o, x = (statistics.median(runs[k]) for k in ("bare", "ours", "onnx"))
    print(f"model {args.model} (random weights), {args.images} images, CPU, {threads} threads for torch and "
          f"ONNX Runtime; detector built in {t_build:.1f} s, exported in {t_export:.1f} s ({size_mb:.0f} MB)")
    print(f"bare open_clip encode_image (preprocessed batch): {1000 * b:8.1f} ms / image")
    print(f"FineGrainedAD.predict, PyTorch (maps {args.resolution}px):  {1000 * o:8.1f} ms / image")
    print(f"ExportedModel.predict, ONNX Runtime CPU:         {1000 * x:8.1f} ms / image   (max |diff| {diff:.1e})")
    print(f"ratio ONNX / PyTorch predict: {x / o:.2f}x   target: <= 0.9x (median of {args.repeats})")
    print(f"ratio ONNX / encode_image: {x / b:.2f}x   PyTorch predict / encode_image: {o / b:.2f}x")


if __name__ == "__main__":
    main()
