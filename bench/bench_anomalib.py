"""Benchmark: one few-shot cell through anomalib (``detector.integrations.anomalib.FineGrainedAD`` in an
``Engine``) beside the same cell through ``detector train`` + ``detector eval``, and anomalib's WinCLIP on the
same data beside both.

The cell: one class of the project's synthetic set (pill_box, 8 normal training images, 12 test images at 256
px), k shots, the backbone ViT-B-16-plus-240 with RANDOM weights for everything (FineGrainedAD with
``--pretrained none``; WinCLIP with its open_clip model built with ``pretrained=None``): only time and memory
mean anything here, never the metrics. The captions are built once beforehand (``mfsc build``, offline
attribute captioner) and both FineGrainedAD paths read the same folder, so captioning is in neither time.
FineGrainedAD's maps are at 256 px in both paths (anomalib's pre-processor size; ``detector eval
--resolution 256``); WinCLIP works at its fixed 240 px.

Each path runs in its own process (its peak RSS is that process's own high-water mark, ``ru_maxrss``); the
times are wall-clock seconds of the fit (training, plus anomalib's validation pass that sets the thresholds) and
of the test (scoring the test split and the metrics, anomalib's visualiser off), excluding imports. Ratios are
against ``detector train`` / ``detector eval`` measured in the same run. Prints figures only, asserts nothing.

    python bench/bench_anomalib.py [--shots 1] [--epochs 2] [--image-epochs 1] [--threads 0] [--skip-winclip]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLASS = "pill_box"
DEFECTS = ("color_spot", "missing_part")

CHILD = r'''
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
args = json.loads({args!r})
if args["threads"]:
    import torch
    torch.set_num_threads(args["threads"])


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def folder():
    from anomalib.data import Folder
    root = os.path.join(args["data"], "{cls}")
    return Folder(name="{cls}", root=root, normal_dir="train/good", normal_test_dir="test/good",
                  abnormal_dir=["test/" + d for d in {defects!r}],
                  mask_dir=["ground_truth/" + d for d in {defects!r}], train_batch_size=8, eval_batch_size=8,
                  num_workers=0, val_split_mode="same_as_test")


def engine(work):
    from anomalib.engine import Engine
    return Engine(default_root_dir=work, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)


def run_detector():
    from detector.cli import app
    common = ["--data", args["data"], "--class", "{cls}"]
    train = ["train", *common, "--shots", str(args["shots"]), "--out", args["work"] + "/ckpt", "--captions",
             args["captions"], "--pretrained", "none", "--epochs", str(args["epochs"]), "--image-epochs",
             str(args["image_epochs"])]
    t0 = time.perf_counter()
    app(train, standalone_mode=False)
    t1 = time.perf_counter()
    app(["eval", "--checkpoint", args["work"] + "/ckpt", "--data", args["data"], "--out", args["work"] + "/eval",
         "--resolution", "256"], standalone_mode=False)
    return t1 - t0, time.perf_counter() - t1


def run_anomalib():
    from detector.integrations.anomalib import FineGrainedAD
    model = FineGrainedAD(k_shot=args["shots"], captions=args["captions"], pretrained="none",
                          epochs=args["epochs"], image_epochs=args["image_epochs"], resolution=256,
                          visualizer=False, out=args["work"] + "/fgad")
    return fit_and_test(model)


def run_winclip():
    import anomalib.models.image.winclip.torch_model as tm
    tm.PRETRAINED = None  # random weights: no download (the module passes it to open_clip.create_model...)
    from anomalib.models import WinClip
    return fit_and_test(WinClip(class_name="pill box", k_shot=args["shots"], visualizer=False))


def fit_and_test(model):
    eng, dm = engine(args["work"]), folder()
    t0 = time.perf_counter()
    eng.fit(model=model, datamodule=dm)
    t1 = time.perf_counter()
    metrics = eng.test(model=model, datamodule=dm, verbose=False)
    return t1 - t0, time.perf_counter() - t1


fit_s, test_s = {{"detector": run_detector, "anomalib": run_anomalib, "winclip": run_winclip}}[args["path"]]()
print("RESULT " + json.dumps({{"fit_s": fit_s, "test_s": test_s, "peak_mb": peak_mb()}}))
'''


def make_data(tmp: Path) -> tuple[Path, Path]:
    """The synthetic set and its captions for the class (``mfsc build``, the offline attribute captioner)."""
    from fsad_data.synthetic import make_demo_data

    data = make_demo_data(tmp / "data", seed=0)
    captions = tmp / "captions"
    subprocess.run([sys.executable, "-m", "mfsc_builder.cli", "build", str(data), "--out", str(captions),
                    "--classes", CLASS], check=True, stdout=subprocess.DEVNULL)
    return data, captions


def run_path(path: str, args: argparse.Namespace, data: Path, captions: Path, tmp: Path) -> dict[str, float]:
    work = tmp / path
    spec = json.dumps({"path": path, "data": str(data), "captions": str(captions), "work": str(work),
                       "shots": args.shots, "epochs": args.epochs, "image_epochs": args.image_epochs,
                       "threads": args.threads})
    code = CHILD.format(root=str(ROOT), args=spec, cls=CLASS, defects=DEFECTS)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode != 0 or not line:
        tail = (res.stdout + res.stderr)[-2000:]
        print(f"{path}: failed (exit {res.returncode})\n{tail}", file=sys.stderr)
        return {}
    return json.loads(line[-1][len("RESULT "):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--skip-winclip", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-anomalib-") as t:
        tmp = Path(t)
        data, captions = make_data(tmp)
        paths = ["detector", "anomalib"] + ([] if args.skip_winclip else ["winclip"])
        rows = {p: run_path(p, args, data, captions, tmp) for p in paths}
    base = rows.get("detector") or {}
    print(f"\nfew-shot cell: {CLASS}, k={args.shots}, ViT-B-16-plus-240 random weights, "
          f"{args.epochs} + {args.image_epochs} epochs (FineGrainedAD), CPU")
    print(f"{'path':<34}{'fit s':>8}{'x':>7}{'test s':>8}{'x':>7}{'peak MB':>9}{'x':>7}")
    names = {"detector": "detector train + eval", "anomalib": "anomalib Engine, FineGrainedAD",
             "winclip": "anomalib Engine, WinCLIP"}
    for p, r in rows.items():
        if not r:
            print(f"{names[p]:<34}failed")
            continue
        cells = []
        for key in ("fit_s", "test_s", "peak_mb"):
            ratio = r[key] / base[key] if base.get(key) else float("nan")
            cells.append(f"{r[key]:>{9 if key == 'peak_mb' else 8}.1f}{ratio:>6.2f}x")
        print(f"{names[p]:<34}{''.join(cells)}")
    return 0 if all(rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
