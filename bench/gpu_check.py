"""GPU check: the figures a CUDA user needs, in one run of a few minutes, with random weights.

Why: nobody on the project's machines has a GPU; whoever has one runs ``bench/gpu_check.sh`` (this
script with ``--device cuda``) once and quotes the output with the card's name. Random
``ViT-B-16-plus-240`` weights: speed, memory and the bf16 error do not depend on the weights. It prints,
each against a baseline measured in the same run:

- predict: ms per image of ``FineGrainedAD.predict`` (RGB uint8 -> fused maps at the paper's 400 px)
  at batch 1, 8 and 32, against the same model's bare ``encode_image`` on the preprocessed batch;
- training: one class (pill_box of the synthetic set, its ``mfsc build`` record, 4 shots) with the
  paper's 100 pixel + 50 image epochs, against its floor: one image pass over the shots, the 4x4-tiled
  pass MLSA needs, and one text-encoder forward + backward per epoch of each prompt set;
- bf16 against fp32: the largest and mean absolute difference of the maps and the image scores of the
  same checkpoint loaded in both precisions;
- peak GPU memory (``torch.cuda.max_memory_allocated``) of training and of predict at the largest batch
  (on CPU: the process's peak RSS).

``--device cpu --tiny`` is a dry run on the tests' tiny CLIP (a test runs it): the same code path in
seconds, figures meaningless. Prints figures only, asserts nothing.

    python bench/gpu_check.py [--device cuda] [--tiny] [--epochs 100] [--image-epochs 50] [--batches 1,8,32]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
TINY = ROOT / "tests" / "assets" / "fgad-tiny-test.json"
CLASS = "pill_box"


def _timer(device: str):
    import torch

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    return timed


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _data(args: argparse.Namespace, tmp: Path) -> tuple[dict, list, list[str], list]:
    """(caption record, shot images, shot names, test images) of pill_box of the synthetic set."""
    import fsad_data

    root = fsad_data.make_demo_data(tmp / "synthetic", seed=0)
    if args.tiny:
        from bench_train import RECORD as record
    else:
        from bench_train import _real_record

        record = _real_record(tmp, root)
    samples = fsad_data.read_dataset(root, classes=[CLASS])
    shots = fsad_data.select_shots(samples, CLASS, args.shots, 0)
    tests = [fsad_data.load_rgb(s.image_path) for s in samples if s.split == "test"]
    return record, [fsad_data.load_rgb(s.image_path) for s in shots], [s.file_name for s in shots], tests


def _floor(args: argparse.Namespace, cfg, model, shots: list, record: dict) -> dict[str, float]:
    """Seconds of the necessary training compute, measured on the trained model's own backbone."""
    from detector.method.fit import encode_shots
    from detector.method.model import build_prompt_sets

    timed = _timer(args.device)
    bb = model.backbone

    def best(fn) -> float:
        return min(timed(fn) for _ in range(max(1, args.repeats)))

    best(lambda: bb.encode(bb.preprocess(shots)))  # warm-up
    t_img = best(lambda: bb.encode(bb.preprocess(shots)))
    t_tiled = max(0.0, best(lambda: encode_shots(bb, shots, tiles=4)) - t_img)
    pixel, image = build_prompt_sets(bb, record, record.get("object_name", CLASS), None, [],
                                     cfg.prompt_config(cfg.n_pro_pixel), cfg.prompt_config(cfg.n_pro_image))
    pixel.to(bb.device)
    image.to(bb.device)

    def fwd_bwd(prompts) -> None:
        prompts.encode_prompts().float().sum().backward()
        prompts.zero_grad(set_to_none=True)

    fwd_bwd(pixel)  # warm-up
    return {"image_pass": t_img, "tiled_pass": t_tiled, "text_pixel": best(lambda: fwd_bwd(pixel)),
            "text_image": best(lambda: fwd_bwd(image))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="dry run: the tests' tiny CLIP, 2+1 epochs, small batches")
    ap.add_argument("--model", default=None, help="open_clip name (default ViT-B-16-plus-240; --tiny: tiny CLIP)")
    ap.add_argument("--epochs", type=int, default=None, help="pixel epochs (default 100, the paper's; --tiny: 2)")
    ap.add_argument("--image-epochs", type=int, default=None, help="image epochs (default 50; --tiny: 1)")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--batches", default=None, help="predict batch sizes (default 1,8,32; --tiny: 1,2)")
    ap.add_argument("--resolution", type=int, default=None, help="map size (default 400, the paper's; --tiny: 64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median, floor: min)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    args.model = args.model or (str(TINY) if args.tiny else "ViT-B-16-plus-240")
    args.epochs = args.epochs if args.epochs is not None else (2 if args.tiny else 100)
    args.image_epochs = args.image_epochs if args.image_epochs is not None else (1 if args.tiny else 50)
    args.resolution = args.resolution or (64 if args.tiny else 400)
    batches = [int(b) for b in (args.batches or ("1,2" if args.tiny else "1,8,32")).split(",") if b.strip()]
    if args.tiny:
        args.repeats = min(args.repeats, 2)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: --device {args.device} but torch {torch.__version__} sees no CUDA device; run it on a "
              "machine with a CUDA GPU and a CUDA build of torch (or --device cpu --tiny for a dry run)",
              file=sys.stderr)
        return 2
    from detector.config import TrainConfig
    from detector.run.train import train_model
    from detector.store.saved_detector import load_detector

    dev = args.device
    card = torch.cuda.get_device_name(torch.device(dev)) if dev.startswith("cuda") else "cpu"
    print(f"gpu_check: {card}, torch {torch.__version__}, model {Path(args.model).name} (random weights), "
          f"{args.shots} shots of {CLASS}, maps {args.resolution} px")
    timed = _timer(dev)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record, shots, names, tests = _data(args, tmp)

        # ---- training: the paper's schedule against its floor
        cfg = TrainConfig(class_name=CLASS, backbone=args.model, pretrained="none", shots=args.shots, seed=0,
                          epochs=args.epochs, image_epochs=args.image_epochs, device=dev)
        _reset_peak(dev)
        t0 = time.perf_counter()
        model = train_model(cfg, progress=False, shot_images=shots, shot_names=names, record=record)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t_train = time.perf_counter() - t0
        peak_train = _peak_mb(dev)
        tm = model.meta["timing_s"]
        fl = _floor(args, cfg, model, shots, record)
        floor = fl["image_pass"] + fl["tiled_pass"] + args.epochs * fl["text_pixel"] + args.image_epochs * fl["text_image"]
        spent = tm["encode_and_regions"] + tm["pixel"] + tm["image"]
        print(f"train {args.epochs}+{args.image_epochs} epochs: {spent:8.2f} s (+ {tm['load']:.1f} s backbone load; "
              f"{t_train:.1f} s in all)  floor {floor:8.2f} s  ratio {spent / floor:5.2f}x")
        print(f"  pixel epoch {tm['pixel'] / max(1, args.epochs):7.3f} s (floor {fl['text_pixel']:.3f} s); image epoch "
              f"{tm['image'] / max(1, args.image_epochs):7.3f} s (floor {fl['text_image']:.3f} s); shots + regions "
              f"{tm['encode_and_regions']:.2f} s (floor {fl['image_pass'] + fl['tiled_pass']:.2f} s)")

        # ---- predict against bare encode_image, same model, same run, interleaved
        bb = model.backbone
        peak_predict = 0.0
        for b in sorted(batches):
            images = (tests * b)[:b]
            pixels = bb.preprocess(images)

            def bare(pixels=pixels) -> None:
                with torch.no_grad():
                    bb.model.encode_image(pixels)

            def ours(images=images, b=b) -> None:
                model.predict(images, resolution=args.resolution, branch="fused", batch_size=b)

            _reset_peak(dev)
            timed(bare), timed(ours)  # warm-up
            t_bare, t_ours = [], []
            for _ in range(args.repeats):
                t_bare.append(timed(bare))
                t_ours.append(timed(ours))
            e, o = statistics.median(t_bare) / b * 1000, statistics.median(t_ours) / b * 1000
            peak_predict = _peak_mb(dev)
            print(f"predict batch {b:3d}: {o:8.2f} ms/image   encode_image {e:8.2f} ms/image   ratio {o / e:5.2f}x   "
                  f"peak {peak_predict:7.0f} MB")

        # ---- bf16 against fp32: the same checkpoint in both precisions
        from detector.store.saved_detector import save_detector

        ckpt = save_detector(model, tmp / "ckpt")
        images = tests[: max(batches)]
        ref = load_detector(ckpt, device=dev, precision="fp32").predict(images, resolution=args.resolution)
        low = load_detector(ckpt, device=dev, precision="bf16").predict(images, resolution=args.resolution)
        d_map = abs(low.maps.astype("float64") - ref.maps.astype("float64"))
        d_score = abs(low.scores.astype("float64") - ref.scores.astype("float64"))
        print(f"bf16 vs fp32 ({len(images)} test images): maps max |diff| {d_map.max():.2e}, mean {d_map.mean():.2e} "
              f"(fp32 map range {ref.maps.min():.3f}..{ref.maps.max():.3f}); scores max |diff| {d_score.max():.2e}")
    what = "GPU memory (max_memory_allocated)" if dev.startswith("cuda") else "RSS of the process"
    print(f"peak {what}: training {peak_train:.0f} MB, predict at batch {max(batches)} {peak_predict:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
