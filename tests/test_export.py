"""`detector export`: the ONNX/OpenVINO graph equals the PyTorch path (tiny CLIP), runs without torch, and
`detector predict --engine` writes the same outputs as the PyTorch engine."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detector_fixtures import make_image
from typer.testing import CliRunner

from detector.cli import app
from detector.errors import DetectorError

runner = CliRunner()
RES = 48  # not the default 256 and not the input size 64: the resolution really reaches the graph


def _images(n, seed=0):
    """Drawn images of other sizes than the 64 px input (so the resize path is exercised)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = make_image((int(rng.integers(0, 50)), int(rng.integers(0, 50)), 12), size=80 + 8 * i)
        out.append(np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def ckpt(widget_checkpoint, tmp_path_factory):
    """The widget checkpoint with a stored threshold (as `detector eval` writes it) at RES."""
    folder = shutil.copytree(widget_checkpoint, tmp_path_factory.mktemp("exp") / "widget")
    (folder / "threshold.json").write_text(json.dumps({"fused": {
        "pixel_threshold": 0.3, "image_threshold": 0.5, "resolution": RES}}))
    return folder


@pytest.fixture(scope="module")
def onnx_dir(ckpt, tmp_path_factory):
    from detector.deploy.export import export_checkpoint

    return export_checkpoint(ckpt, "onnx", tmp_path_factory.mktemp("onnx") / "widget-onnx")


@pytest.fixture(scope="module")
def torch_model(ckpt):
    from detector.store.saved_detector import load_detector

    return load_detector(ckpt)


def _assert_same(pred, ref, tol=1e-4):
    assert pred.maps.shape == ref.maps.shape and pred.maps.dtype == np.float32
    np.testing.assert_allclose(pred.scores, ref.scores, atol=tol, rtol=0)
    np.testing.assert_allclose(pred.maps, ref.maps, atol=tol, rtol=0)


def test_onnx_equals_pytorch_for_batch_1_and_5(onnx_dir, torch_model):
    from detector.run.runtime import load_exported

    images = _images(5)
    ref = torch_model.predict(images, resolution=RES)
    exported = load_exported(onnx_dir)
    assert exported.resolution == RES  # the threshold's resolution is the default
    _assert_same(exported.predict(images[:1]), torch_model.predict(images[:1], resolution=RES))
    _assert_same(exported.predict(images, batch_size=5), ref)
    _assert_same(exported.predict(images, batch_size=2), ref)  # batches of 2, 2, 1 through one graph
    assert ref.maps.std() > 0  # the maps are not constant: the comparison means something


def test_graph_and_spec(onnx_dir, ckpt):
    import onnx

    g = onnx.load(str(onnx_dir / "model.onnx")).graph
    (inp,) = g.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [64, 64, 3]  # batch dynamic, size fixed
    assert [o.name for o in g.output] == ["scores", "maps"]
    assert not [i.name for i in g.initializer if 49408 in i.dims]  # no token embedding: no text tower
    spec = json.loads((onnx_dir / "export.json").read_text())
    assert spec["input"]["size"] == [64, 64] and spec["input"]["normalisation"]["in_graph"] is True
    assert spec["resolution"] == RES and spec["class_name"] == "widget" and spec["branch"] == "fused"
    assert spec["thresholds"]["pixel_threshold"] == 0.3 and spec["smoothing_sigma"] == 4.0
    import hashlib

    assert spec["checkpoint"]["weights_sha256"] == hashlib.sha256(
        (ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert spec["checkpoint_meta"]["meaningful"] is False  # random weights, said so


def test_runtime_runs_with_torch_unimportable(onnx_dir, torch_model):
    """Only onnxruntime, numpy and Pillow: torch is blocked in the subprocess and never imported."""
    images = _images(2, seed=3)
    np.save(onnx_dir.parent / "imgs.npy", np.stack([im[:80, :80] for im in images]))
    code = (
        "import sys\nsys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "import numpy as np\nfrom detector.run.runtime import load_exported\n"
        f"m = load_exported({str(onnx_dir)!r})\n"
        f"p = m.predict(list(np.load({str(onnx_dir.parent / 'imgs.npy')!r})))\n"
        f"np.save({str(onnx_dir.parent / 'out.npy')!r}, p.maps)\n"
        "print('LOADED', sorted(k for k in ('torch', 'open_clip', 'transformers') if sys.modules.get(k)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "LOADED []" in out.stdout, out.stdout + out.stderr
    ref = torch_model.predict([im[:80, :80] for im in images], resolution=RES)
    np.testing.assert_allclose(np.load(onnx_dir.parent / "out.npy"), ref.maps, atol=1e-4, rtol=0)


def test_detector_api_runs_an_export(onnx_dir, ckpt):
    from detector import Detector

    images = _images(2)
    via_onnx = Detector.load(onnx_dir).predict(images)
    via_torch = Detector.load(ckpt).predict(images)
    for a, b in zip(via_onnx, via_torch):
        assert a.score == pytest.approx(b.score, abs=1e-4) and a.map.shape == b.map.shape
        np.testing.assert_allclose(a.map, b.map, atol=1e-4)
        np.testing.assert_array_equal(a.mask, a.map >= 0.3)
        assert a.anomalous == b.anomalous
    with pytest.raises(DetectorError, match="exported at resolution"):
        Detector.load(onnx_dir).predict(images, resolution=64)
    with pytest.raises(DetectorError, match="needs an export"):
        Detector.load(ckpt, engine="onnx")


def test_predict_engine_onnx_writes_what_torch_writes(onnx_dir, ckpt, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(_images(3, seed=5)):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    outs = {}
    for engine, source in (("torch", ckpt), ("onnx", onnx_dir)):
        outs[engine] = tmp_path / engine
        res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(source), "--out", str(outs[engine]),
                                  "--threshold", "auto", "--engine", engine, "--batch-size", "2"])
        assert res.exit_code == 0, res.output + res.stderr
    rows = {e: list(csv.DictReader((outs[e] / "scores.csv").open())) for e in outs}
    assert [r["name"] for r in rows["onnx"]] == [r["name"] for r in rows["torch"]] == ["000.png", "001.png", "002.png"]
    for a, b in zip(rows["onnx"], rows["torch"]):
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-4)
        assert a["anomalous"] == b["anomalous"]
        assert (a["map"], a["overlay"], a["mask"]) == (b["map"], b["overlay"], b["mask"])
        np.testing.assert_allclose(np.load(outs["onnx"] / a["map"]), np.load(outs["torch"] / b["map"]), atol=1e-4)
        for kind in ("overlay", "mask"):
            assert (outs["onnx"] / a[kind]).is_file()
    assert json.loads((outs["onnx"] / "scores.json").read_text())["engine"] == "onnx"
    res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(tmp_path / "x"),
                              "--engine", "onnx"])
    assert res.exit_code == 1 and "not an export folder" in res.stderr


def test_openvino_export_and_engine(ckpt, torch_model, tmp_path):
    pytest.importorskip("openvino")
    from detector.run.runtime import load_exported

    out = tmp_path / "ov"
    res = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--format", "openvino", "--out", str(out),
                              "--resolution", "32"])
    assert res.exit_code == 0, res.output + res.stderr
    # no threshold.json: the stored threshold was picked at RES, it does not hold for maps at 32
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.bin", "model.xml"]
    images = _images(3)
    _assert_same(load_exported(out).predict(images), torch_model.predict(images, resolution=32))
    res = runner.invoke(app, ["predict", "x.png", "--checkpoint", str(out), "--out", str(tmp_path / "p"),
                              "--engine", "onnx"])
    assert res.exit_code == 1 and "OpenVINO export; run it with --engine openvino" in res.stderr


def test_openvino_fp16_is_close(ckpt, torch_model, tmp_path):
    pytest.importorskip("openvino")
    from detector.deploy.export import export_checkpoint
    from detector.run.runtime import load_exported

    out = export_checkpoint(ckpt, "openvino", tmp_path / "ov16", precision="fp16")
    images = _images(2)
    _assert_same(load_exported(out).predict(images), torch_model.predict(images, resolution=RES), tol=2e-2)


def test_export_errors_are_clear(ckpt, tmp_path, monkeypatch):
    from detector.deploy.export import export_checkpoint

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(DetectorError, match="not an earlier export"):
        export_checkpoint(ckpt, "onnx", tmp_path / "mine")
    with pytest.raises(DetectorError, match="fp16 is OpenVINO"):
        export_checkpoint(ckpt, "onnx", tmp_path / "o", precision="fp16")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(DetectorError, match="OpenVINO is not installed: pip install openvino"):
        export_checkpoint(ckpt, "openvino", tmp_path / "o")
    assert not (tmp_path / "o").exists()
