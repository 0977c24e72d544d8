"""`detector export --precision int8`: NNCF's post-training quantisation of the OpenVINO graph, calibrated on the
class's normal images, checked against the fp32 graph on images calibration did not see, refused past its limits,
and run by bare OpenVINO (tiny CLIP, the synthetic data set)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from detector_fixtures import make_image
from typer.testing import CliRunner

from detector.cli import app
from detector.deploy.quantise import DriftLimits, _spearman, augmented, evenly, exceeded
from detector.errors import DetectorError

pytest.importorskip("openvino")
pytest.importorskip("nncf")
runner = CliRunner()
LOOSE = ["--max-drift", "map_mean=1", "--max-drift", "score_spearman=-1", "--max-drift", "auroc_points=100"]


def _export(ckpt, data, out, *extra):
    return runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--format", "openvino", "--precision", "int8",
                               "--data", str(data), "--class", "pill_box", "--resolution", "32", "--out", str(out),
                               *extra])


@pytest.fixture(scope="module")
def int8_dir(widget_checkpoint, demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "widget-int8"
    res = _export(widget_checkpoint, demo_root, out, *LOOSE)
    assert res.exit_code == 0, res.output + res.stderr
    assert "int8 drift from fp32: mean map change" in res.output and "image auroc" in res.output
    return out


def test_int8_export_records_its_drift_and_how_it_was_calibrated(int8_dir, demo_root):
    spec = json.loads((int8_dir / "export.json").read_text())
    assert spec["precision"] == "int8" and sorted(p.name for p in int8_dir.iterdir()) == [
        "export.json", "model.bin", "model.xml"]
    rec = spec["int8"]
    d = rec["drift"]
    assert d["check_images"] >= 1 and d["calibration_images"] >= 32 and d["test_images"] > 0
    assert 0 <= d["map_mean"] <= d["map_max"] and -1 <= d["score_spearman"] <= 1
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        assert set(d[key]) == {"fp32", "int8", "change_points"}
    assert rec["limits"] == {"map_mean": 1.0, "score_spearman": -1.0, "auroc_points": 100.0}
    assert rec["calibration"]["class_name"] == "pill_box" and rec["calibration"]["data"] == str(demo_root)
    assert rec["tool"] == "nncf" and rec["nncf_version"]
    assert rec["auroc_limits_applied"] is False  # the tiny checkpoint has random weights
    assert d["image_auroc_step_points"] > 0
    xml = (int8_dir / "model.xml").read_text()
    assert "FakeQuantize" in xml or "fake_quantize" in xml.lower()  # the graph really holds int8 ranges


def test_int8_graph_runs_in_bare_openvino_without_torch(int8_dir, tmp_path):
    np.save(tmp_path / "imgs.npy", np.stack([make_image(), make_image((30, 30, 10))]))
    code = (
        "import sys\nsys.modules['torch'] = None  # `import torch` raises ImportError from here on\n"
        "import numpy as np\nfrom detector.run.runtime import load_exported\n"
        f"m = load_exported({str(int8_dir)!r})\n"
        f"p = m.predict(list(np.load({str(tmp_path / 'imgs.npy')!r})))\n"
        "assert p.maps.shape == (2, 32, 32) and np.isfinite(p.maps).all() and np.isfinite(p.scores).all()\n"
        "print('LOADED', sorted(k for k in ('torch', 'open_clip', 'nncf') if sys.modules.get(k)))\n")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


def test_a_limit_below_the_measured_drift_refuses_the_export(int8_dir, widget_checkpoint, demo_root, tmp_path):
    measured = json.loads((int8_dir / "export.json").read_text())["int8"]["drift"]["map_mean"]
    assert measured > 0
    out = tmp_path / "refused"
    res = _export(widget_checkpoint, demo_root, out, "--max-drift", f"map_mean={measured / 2}", "--max-drift",
                  "score_spearman=-1", "--max-drift", "auroc_points=100")
    assert res.exit_code == 1
    assert "int8 export refused: mean map change" in res.stderr and "--precision fp16" in res.stderr
    assert not out.exists()  # nothing written


def test_int8_requests_that_cannot_work_are_one_clear_line(widget_checkpoint, demo_root, tmp_path):
    from detector.deploy.export import export_checkpoint

    with pytest.raises(DetectorError, match="use --format openvino with --data ROOT"):
        export_checkpoint(widget_checkpoint, "openvino", tmp_path / "new" / "a", precision="int8")
    assert not (tmp_path / "new").exists()  # refused before the lock beside OUT made its parent
    res = runner.invoke(app, ["export", "--checkpoint", str(widget_checkpoint), "--format", "onnx", "--precision",
                              "int8", "--data", str(demo_root), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "use --format openvino" in res.stderr
    res = runner.invoke(app, ["export", "--checkpoint", str(widget_checkpoint), "--format", "openvino",
                              "--data", str(demo_root), "--out", str(tmp_path / "c")])
    assert res.exit_code == 1 and "calibrate an int8 export: add --precision int8" in res.stderr
    res = _export(widget_checkpoint, demo_root, tmp_path / "d", "--class", "no_such_class")
    assert res.exit_code == 1 and "no_such_class" in res.stderr  # before the checkpoint is loaded and traced
    for bad in ("map=1", "map_mean", "map_mean=x", "map_mean=-1", "map_mean=nan"):
        with pytest.raises(DetectorError, match="--max-drift"):
            DriftLimits.parse([bad])
    assert not any((tmp_path / n).exists() for n in "bcd")


def test_limits_calibration_views_and_rank_correlation():
    figures = {"map_mean": 0.03, "score_spearman": 0.95, "image_auroc": {"change_points": -1.5},
               "pixel_auroc": {"change_points": 0.2}}
    assert exceeded(figures, DriftLimits()) == ["mean map change 0.0300 > map_mean=0.02",
                                                "image auroc -1.50 points < -1"]
    assert exceeded(figures, DriftLimits.parse(["map_mean=0.05", "auroc_points=2"])) == []
    assert exceeded(figures, DriftLimits.parse(["map_mean=0.05"]), meaningful=False) == []  # random weights
    assert exceeded({**figures, "image_auroc_step_points": 2.0}, DriftLimits.parse(["map_mean=0.05"])) == []
    imgs = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    views = augmented(imgs, 7)
    assert views.shape == (7, 4, 4, 3) and np.array_equal(views[0], imgs[0]) and np.array_equal(views[1], imgs[1])
    assert np.array_equal(views[2], imgs[0][:, ::-1]) and np.array_equal(views[6], np.rot90(imgs[0], 1))
    assert augmented(imgs, 1).shape[0] == 2  # never fewer than the images themselves
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert _spearman(a, a + 0.3 * b) == pytest.approx(stats.spearmanr(a, a + 0.3 * b).statistic, abs=1e-12)
    assert _spearman(a[:1], b[:1]) is None  # one image: no order to keep, and no limit can hold
    ties = np.array([1.0, 2.0, 2.0, 3.0])
    assert _spearman(ties, ties[::-1]) == pytest.approx(stats.spearmanr(ties, ties[::-1]).statistic, abs=1e-12)
    assert _spearman(np.array([1.0, 2.0, 3.0]), np.array([5.0, 5.0, 5.0])) == 0.0  # collapsed scores keep no order
    assert _spearman(np.array([3.0, 2.0, 1.0]), np.array([5.0, 5.0, 5.0])) == 0.0  # whatever the images' order
    assert evenly(list(range(10)), 4) == [0, 2, 5, 7] and evenly([1, 2], 4) == [1, 2]


class _Graph:
    """A compiled graph's call shape (``output(name)``, ``graph({input: x})``) over fixed per-image scores."""

    def __init__(self, scores, nan=False):
        self.scores = np.asarray(scores, np.float32)
        self.nan = nan

    def output(self, name):
        return name

    def __call__(self, inputs):
        x = next(iter(inputs.values()))
        idx = x[:, 0, 0, 0].astype(int)  # each image carries its index in its first pixel
        maps = np.repeat(self.scores[idx][:, None, None], 4, 1).repeat(4, 2)
        return {"scores": self.scores[idx], "maps": maps * (np.nan if self.nan else 1.0)}


def _images_with_index(n):
    x = np.zeros((n, 4, 4, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return x


def test_drift_of_a_data_set_without_masks_is_image_level_and_a_nan_graph_is_refused():
    """A folder of anomalies without masks (as `detector eval` allows): image metrics only, no mask needed; a
    quantised graph that gives NaN is refused whatever the limits."""
    from detector.deploy.quantise import ClassImages, drift

    images = ClassImages(calibration=_images_with_index(4), check=_images_with_index(3),
                         test=_images_with_index(4),
                         test_samples=[SimpleNamespace(label=v) for v in (0, 0, 1, 1)], image_level=True)
    figures = drift(_Graph([0.1, 0.2, 0.8, 0.9]), _Graph([0.1, 0.25, 0.7, 0.95]), images, 4)
    assert figures["image_auroc"]["fp32"] == 1.0 and figures["image_auroc"]["change_points"] == 0.0
    assert figures["pixel_auroc"]["change_points"] is None and figures["score_spearman"] == 1.0
    with pytest.raises(DetectorError, match="NaN or infinite"):
        drift(_Graph([0.1, 0.2, 0.8, 0.9]), _Graph([0.1, 0.2, 0.8, 0.9], nan=True), images, 4)
