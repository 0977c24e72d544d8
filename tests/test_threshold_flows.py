"""The README's threshold flows as an engineer runs them, with no file copied by hand: train -> eval ->
``predict --threshold auto``; the Python API with ``"auto"`` and with an evaluation folder; a stale or missing
evaluation is one line saying which eval to run (``detector.store.thresholds`` decides for all of them)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.cli import app

runner = CliRunner()
CLASS = "pill_box"


@pytest.fixture(scope="module")
def evaluated(demo_root, tmp_path_factory, tiny_clip_name) -> tuple[Path, Path]:
    """A checkpoint and its evaluation, made by the commands the README gives."""
    from detector_fixtures import train_and_evaluate

    return train_and_evaluate(tmp_path_factory.mktemp("threshold-flows"), demo_root, tiny_clip_name, CLASS)


def _picked(ev: Path) -> dict:
    return json.loads((ev / "threshold.json").read_text())["fused"]


def test_predict_auto_takes_the_latest_evaluation_of_the_checkpoint(evaluated, demo_root, tmp_path):
    ckpt, ev = evaluated
    assert not (ckpt / "threshold.json").exists()  # nothing copied: eval recorded it in evaluation.json
    res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), str(demo_root / CLASS / "test"),
                              "--out", str(tmp_path / "pred"), "--threshold", "auto"])
    assert res.exit_code == 0, res.output
    used = json.loads((tmp_path / "pred" / "scores.json").read_text())
    picked = _picked(ev)
    assert (used["threshold"]["pixel"], used["threshold"]["image"]) == (picked["pixel_threshold"],
                                                                        picked["image_threshold"])
    assert used["resolution"] == picked["resolution"] == 64  # the evaluation's resolution, not predict's 256
    assert used["threshold"]["source"].endswith("evaluation.json)")
    flagged = sum(r["anomalous"] for r in used["images"])
    named = sum(r["n_defects"] for r in used["images"])
    assert res.stdout.strip() == (f"12 image(s) scored, {flagged} flagged anomalous (image threshold), {named} "
                                  f"region(s) named; in {tmp_path / 'pred'}: scores.csv, scores.json, defects.json, "
                                  "masks/, regions/, overlays/, maps/")


def test_the_api_takes_auto_and_an_evaluation_folder_alike(evaluated, demo_root):
    from detector import Detector

    ckpt, ev = evaluated
    image = min((demo_root / CLASS / "test").rglob("*.png"))
    det = Detector.load(ckpt)
    assert det.resolution == 64
    picked = _picked(ev)
    assert repr(det) == (f"Detector({str(ckpt)!r}: class 'pill_box', backbone {det.meta['backbone']['model_name']}, shots 1, "
                         f"resolution 64, thresholds pixel {picked['pixel_threshold']:.4g}, "
                         f"image {picked['image_threshold']:.4g})")
    auto = det.predict(image)[0]
    from_folder = det.predict(image, threshold=ev)[0]
    from_file = det.predict(image, threshold=str(ev / "threshold.json"))[0]
    picked = _picked(ev)
    for r in (auto, from_folder, from_file):
        assert r.mask is not None and r.anomalous == (r.score >= picked["image_threshold"])
        assert (r.mask == (r.map >= picked["pixel_threshold"])).all()
    with pytest.raises(Exception, match="picked at resolution 64, not 32"):
        det.predict(image, threshold=ev, resolution=32)


def test_a_checkpoint_never_evaluated_or_evaluated_for_other_weights_says_which_eval_to_run(evaluated, tmp_path,
                                                                                           demo_root):
    ckpt, _ = evaluated
    fresh = shutil.copytree(ckpt, tmp_path / "fresh")
    (fresh / "evaluation.json").unlink()
    res = runner.invoke(app, ["predict", "--checkpoint", str(fresh), str(demo_root / CLASS / "test"),
                              "--out", str(tmp_path / "pred"), "--threshold", "auto"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"run `detector eval --checkpoint {fresh}" in " ".join(res.stderr.split())
    other = shutil.copytree(ckpt, tmp_path / "other")
    index = json.loads((other / "evaluation.json").read_text())
    index["fused"]["thresholds"]["checkpoint_sha256"] = "0" * 64
    (other / "evaluation.json").write_text(json.dumps(index))
    res = runner.invoke(app, ["predict", "--checkpoint", str(other), str(demo_root / CLASS / "test"),
                              "--out", str(tmp_path / "pred2"), "--threshold", "auto"])
    assert res.exit_code == 1 and "another checkpoint" in res.stderr


def test_an_export_carries_the_evaluations_thresholds_and_predicts_with_auto(evaluated, demo_root, tmp_path):
    pytest.importorskip("onnxruntime")
    ckpt, ev = evaluated
    res = runner.invoke(app, ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    spec = json.loads((tmp_path / "x" / "export.json").read_text())
    picked = _picked(ev)
    assert spec["thresholds"]["pixel_threshold"] == picked["pixel_threshold"]
    assert spec["thresholds"]["resolution"] == 64  # the export's maps are at the evaluation's resolution
    res = runner.invoke(app, ["predict", str(demo_root / CLASS / "test"), "--checkpoint", str(tmp_path / "x"),
                              "--engine", "onnx", "--out", str(tmp_path / "pred"), "--threshold", "auto"])
    assert res.exit_code == 0, res.output
    used = json.loads((tmp_path / "pred" / "scores.json").read_text())["threshold"]
    assert (used["pixel"], used["image"]) == (picked["pixel_threshold"], picked["image_threshold"])


def test_an_image_threshold_given_decides_anomalous_in_predict_and_the_api(evaluated, demo_root, tmp_path):
    from detector import Detector

    ckpt, ev = evaluated
    picked = _picked(ev)
    res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), str(demo_root / CLASS / "test"),
                              "--out", str(tmp_path / "pred"), "--threshold", str(ev), "--image-threshold", "-1e9"])
    assert res.exit_code == 0, res.output
    used = json.loads((tmp_path / "pred" / "scores.json").read_text())
    assert (used["threshold"]["pixel"], used["threshold"]["image"]) == (picked["pixel_threshold"], -1e9)
    assert used["resolution"] == 64 and all(r["anomalous"] for r in used["images"])
    res = runner.invoke(app, ["predict", "--checkpoint", str(ckpt), str(demo_root / CLASS / "test"),
                              "--out", str(tmp_path / "pred2"), "--threshold", "auto", "--image-threshold", "nan"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert " ".join(res.stderr.split()).startswith("error: --image-threshold 'nan' is not a finite number;")
    image = min((demo_root / CLASS / "test").rglob("*.png"))
    det = Detector.load(ckpt)
    r = det.predict(image, image_threshold=1e9)[0]
    assert r.anomalous is False and r.mask is not None  # the pixel threshold of auto stays
    assert det.predict(image, threshold=None, image_threshold=-1e9)[0].anomalous is True
    with pytest.raises(Exception, match=r"^image_threshold 'inf' is not a finite number"):
        det.predict(image, image_threshold=float("inf"))
