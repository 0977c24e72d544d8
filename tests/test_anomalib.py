"""FineGrainedAD as an anomalib model (``detector.integrations.anomalib``), on the tiny CLIP and a small copy of the
synthetic set (pill_box at 64 px) through anomalib's ``Folder`` datamodule: ``Engine.fit`` + ``test``, the pixel
AUROC against ``detector eval`` on the same checkpoint, ``predict``'s fields, the visualiser's images, the ONNX
export, and the installed ``anomalib`` command with the class path (flags and a YAML config).

Resolutions: the images are 64 x 64; anomalib's pre-processor resizes to ``resolution`` = 64 (a no-op here), so
its maps and masks are 64 x 64; ``detector eval --resolution 64`` scores at 64 x 64 too (masks resized bilinearly
and binarised, a no-op at the same size). Both score the same uint8 pixels with the same checkpoint.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("anomalib", reason="anomalib is not installed (pip install 'finegrained-ad[anomalib]')")

from conftest import TINY_CLIP_CONFIG

CLASS = "pill_box"
SIZE = 64
DEFECTS = ("color_spot", "missing_part")
MODEL = "detector.integrations.anomalib.FineGrainedAD"
ANOMALIB = Path(sys.executable).with_name("anomalib")
TINY = {"backbone": str(TINY_CLIP_CONFIG), "pretrained": "none", "epochs": 1, "image_epochs": 1}


@pytest.fixture(scope="module")
def small_set(demo_root, tmp_path_factory) -> Path:
    """pill_box of the synthetic set at 64 px, MVTec-AD layout: 4 train/good, 2 test/good, 2 images (and masks)
    per defect type. Returns the data root (``detector eval --data``); the class folder is ``root / CLASS``."""
    import cv2

    root = tmp_path_factory.mktemp("small") / "data"
    src = demo_root / CLASS
    parts = [("train/good", 4, cv2.INTER_AREA), ("test/good", 2, cv2.INTER_AREA)]
    parts += [(f"test/{d}", 2, cv2.INTER_AREA) for d in DEFECTS]
    for sub, n, interp in parts:
        for path in sorted((src / sub).glob("*.png"))[:n]:
            dest = root / CLASS / sub / path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dest), cv2.resize(cv2.imread(str(path)), (SIZE, SIZE), interpolation=interp))
            if sub.split("/")[1] in DEFECTS:
                mask = src / "ground_truth" / sub.split("/")[1] / f"{path.stem}_mask.png"
                out = root / CLASS / "ground_truth" / sub.split("/")[1] / mask.name
                out.parent.mkdir(parents=True, exist_ok=True)
                small = cv2.resize(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE),
                                   interpolation=cv2.INTER_NEAREST)
                cv2.imwrite(str(out), small)
    return root


def folder_args(root: Path) -> dict:
    """anomalib's Folder datamodule over the MVTec-AD class folder; validation = the test split (the few-shot
    post-processor's thresholds), so ``Engine.test`` scores every test image, as ``detector eval`` does."""
    return {"name": CLASS, "root": str(root / CLASS), "normal_dir": "train/good", "normal_test_dir": "test/good",
            "abnormal_dir": [f"test/{d}" for d in DEFECTS], "mask_dir": [f"ground_truth/{d}" for d in DEFECTS],
            "train_batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "val_split_mode": "same_as_test"}


def folder(root: Path):
    from anomalib.data import Folder

    return Folder(**folder_args(root))


def engine(root_dir: Path):
    from anomalib.engine import Engine

    return Engine(default_root_dir=root_dir, logger=False, accelerator="cpu", devices=1)


@pytest.fixture(scope="module")
def fitted(small_set, tiny_clip_name, tmp_path_factory):
    """Engine().fit then .test: (model, the test metrics, the engine's root folder)."""
    from detector.integrations.anomalib import FineGrainedAD

    work = tmp_path_factory.mktemp("anomalib-run")
    model = FineGrainedAD(k_shot=2, seed=0, resolution=SIZE, **TINY)
    eng = engine(work)
    dm = folder(small_set)
    eng.fit(model=model, datamodule=dm)
    metrics = eng.test(model=model, datamodule=dm)[0]
    return model, metrics, work


def test_fit_and_test_report_anomalib_metrics(fitted):
    model, metrics, _ = fitted
    assert {"image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score"} <= set(metrics)
    assert model.checkpoint_dir is not None and (model.checkpoint_dir / "config.json").is_file()


def test_shots_are_those_of_detector_train(fitted, small_set):
    """The k shots anomalib's train split gives are the ones ``detector train --shots 2 --seed 0`` picks."""
    from detector.store.checkpoint import checkpoint_meta
    from detector.store.data import class_samples, select_class_shots

    model, _, _ = fitted
    meta = checkpoint_meta(model.checkpoint_dir)
    ours = select_class_shots(class_samples(small_set, CLASS), CLASS, 2, 0)
    assert meta["shots"] == [s.file_name for s in ours]
    assert meta["config"]["seed"] == 0 and meta["config"]["recipe"] == "paper"
    assert meta["record"] is not None  # captions built on the fly (offline attribute captioner)


def test_pixel_auroc_equals_detector_eval(fitted, small_set, tmp_path):
    """Same checkpoint, same images, both at 64 x 64: anomalib's pixel (and image) AUROC = ``detector eval``'s."""
    from detector.run.evaluate import EvalConfig, run_eval

    model, metrics, _ = fitted
    res = run_eval(EvalConfig(checkpoint=model.checkpoint_dir, data=small_set, out=tmp_path / "eval",
                              resolution=SIZE, class_name=CLASS, exact_metrics=True, progress=False))
    assert abs(metrics["pixel_AUROC"] - res.metrics["pixel_auroc"]) < 1e-3
    assert abs(metrics["image_AUROC"] - res.metrics["image_auroc"]) < 1e-3


def test_visualiser_writes_images(fitted):
    _, _, work = fitted
    images = list(work.rglob("images/test/*/*.png"))
    assert len(images) == 6  # one per test image (2 good, 2 per defect type)


def test_predict_returns_image_batch_fields(fitted, small_set, tmp_path):
    """A trained checkpoint loaded with ``checkpoint=``: predict gives anomalib's ImageBatch fields."""
    from detector.integrations.anomalib import FineGrainedAD

    trained, _, _ = fitted
    model = FineGrainedAD(checkpoint=str(trained.checkpoint_dir), resolution=SIZE)
    batches = engine(tmp_path).predict(model=model, datamodule=folder(small_set))
    b = batches[0]
    assert type(b).__name__ == "ImageBatch"
    n = b.image.shape[0]
    assert b.pred_score.shape == (n,) and b.pred_label.shape == (n,)
    assert b.anomaly_map.shape[-2:] == (SIZE, SIZE) and b.pred_mask.shape[-2:] == (SIZE, SIZE)
    assert b.pred_mask.dtype == b.pred_label.dtype == __import__("torch").bool


def test_onnx_export_matches_the_torch_model(fitted, tmp_path):
    """``engine.export(..., ExportType.ONNX)``: the graph's scores and maps against the PyTorch path (which
    resizes with PIL; here the input is already the backbone's 64 px, so they agree closely)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # the dynamo exporter (the export extra)
    import onnxruntime as ort
    import torch
    from anomalib.deploy import ExportType

    model, _, _ = fitted
    path = engine(tmp_path).export(model=model, export_type=ExportType.ONNX, export_root=tmp_path / "export",
                                   input_size=(SIZE, SIZE))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    x = (x * 255).round() / 255
    session = ort.InferenceSession(str(path))
    outs = dict(zip([o.name for o in session.get_outputs()],
                    session.run(None, {session.get_inputs()[0].name: x.numpy()})))
    with torch.no_grad():
        ref = model.model(x)
    assert np.abs(outs["anomaly_map"] - ref.anomaly_map.numpy()).max() < 1e-3
    assert np.abs(outs["pred_score"] - ref.pred_score.numpy()).max() < 1e-3


def test_import_without_anomalib_says_one_line():
    """``import detector`` never imports anomalib; the class path without it says how to install it."""
    code = ("import sys; sys.modules['anomalib'] = None\n"
            "import detector, detector.cli, detector.run.train\n"
            "assert 'lightning' not in sys.modules\n"
            "try:\n    import detector.integrations.anomalib\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines() == [(
        "detector.integrations.anomalib needs anomalib 2.x: pip install 'finegrained-ad[anomalib]' "
        "(it does not need anomalib's clip extra)")]


def run_anomalib(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run([str(ANOMALIB), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


@pytest.mark.skipif(not ANOMALIB.is_file(), reason="no anomalib command beside this Python")
def test_anomalib_cli_fit_then_test_and_predict_from_yaml(small_set, tmp_path):
    """``anomalib fit --model <class path> --data anomalib.data.Folder ...`` as anomalib users write it, then
    ``anomalib test`` and ``predict`` with the same settings in a YAML config: they load the checkpoint the fit
    wrote to ``--model.out`` (nothing trained again)."""
    import yaml

    out = tmp_path / "fgad"
    model = {"k_shot": 2, "resolution": SIZE, "out": str(out), **TINY}
    flags = ["fit", "--model", MODEL, *[f"--model.{k}={v}" for k, v in model.items()], "--data", "anomalib.data.Folder"]
    for k, v in folder_args(small_set).items():
        flags.append(f"--data.{k}={v if not isinstance(v, list) else '[' + ', '.join(v) + ']'}")
    flags += ["--default_root_dir", str(tmp_path / "results"), "--trainer.accelerator", "cpu",
              "--trainer.logger", "false"]
    text = run_anomalib(flags, tmp_path)
    assert "no captions given" in text and (out / "checkpoint" / "config.json").is_file()
    config = {"model": {"class_path": MODEL, "init_args": model},
              "data": {"class_path": "anomalib.data.Folder", "init_args": folder_args(small_set)},
              "trainer": {"accelerator": "cpu", "logger": False}, "default_root_dir": str(tmp_path / "results")}
    (tmp_path / "fgad.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    text = run_anomalib(["test", "--config", "fgad.yaml"], tmp_path)
    assert "already holds the checkpoint of this run" in text and "pixel_AUROC" in text
    text = run_anomalib(["predict", "--config", "fgad.yaml"], tmp_path)
    assert "already holds the checkpoint of this run" in text
