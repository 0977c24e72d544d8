"""Model cards (README.md with YAML metadata) in every checkpoint, `detector push` (mocked Hub) and loading by
Hub id from a folder laid out as a Hub snapshot (offline)."""
import json
import shutil
from unittest import mock

import numpy as np
import pytest
import yaml
from detector_fixtures import RECORD, hub_snapshot, make_image
from typer.testing import CliRunner

from detector.cli import app
from detector.errors import DetectorError

runner = CliRunner()


def _card(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1]), text


def test_every_saved_checkpoint_has_an_honest_card(widget_checkpoint):
    meta, text = _card(widget_checkpoint)
    f = meta["finegrained_ad"]
    assert f["class_name"] == "widget" and f["shots"] == ["good/000.png", "good/001.png"] and f["seed"] == 0
    assert f["backbone"]["random_weights"] is True and f["backbone"]["pretrained"] == "none"
    assert f["method"] == "promptad" and f["captions"]["source"] is None
    assert f["training"]["pixel_loss"]["epochs"] == 1 and f["recipe"]["epochs"] == 1
    assert f["evaluation"] is None and "model-index" not in meta
    assert "Random backbone weights" in text and "Not evaluated yet" in text


def test_card_of_a_pretrained_captioned_evaluated_checkpoint(widget_checkpoint, tmp_path):
    from detector.store.model_card import record_evaluation

    folder = shutil.copytree(widget_checkpoint, tmp_path / "ckpt")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["meta"]["record"] = {**RECORD, "reference_images": ["good/000.png"], "reference_selection": "k=1 seed=0",
                             "defect_vocab": "generic", "provenance": {"backend": "attributes", "status": "ok"}}
    cfg["meta"]["config"]["captions"] = "org/mfsc-widgets"
    cfg["meta"]["baseline"] = None
    cfg["meta"]["backbone"].update(pretrained="laion400m_e32", weights_sha256="ab" * 32)
    (folder / "config.json").write_text(json.dumps(cfg))
    record_evaluation(folder, {"class_name": "widget", "branch": "fused", "resolution": 64, "n_images": 9,
                               "metrics": {"image_auroc": 0.875, "pixel_auroc": 0.9, "aupro": None},
                               "data": "/data/widgets", "scores": [1, 2, 3]})
    meta, text = _card(folder)
    f = meta["finegrained_ad"]
    assert f["backbone"]["weights_sha256"] == "ab" * 32 and f["backbone"]["random_weights"] is False
    assert f["captions"]["source"] == "org/mfsc-widgets" and f["captions"]["provenance"]["backend"] == "attributes"
    assert f["method"] == "finegrained-ad" and f["evaluation"]["fused"]["n_images"] == 9
    assert "scores" not in f["evaluation"]["fused"]  # a summary, not the per-image rows
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"image_auroc": 87.5, "pixel_auroc": 90.0}
    assert "| fused | 64 | 9 | 87.50 | 90.00 | – |" in text and "Random backbone" not in text


def test_two_evaluations_of_one_checkpoint_take_turns_and_keep_both(widget_checkpoint, tmp_path):
    """While one evaluation updates the checkpoint's evaluation.json, another waits for it instead of writing
    over it (a lost update dropped one branch from the card); the lock file goes with the last one."""
    import threading

    from detector.store.model_card import EVALUATION_LOCK, read_evaluations, record_evaluation
    from fsad_data.folder_lock import FolderLock

    folder = shutil.copytree(widget_checkpoint, tmp_path / "ckpt")
    first = FolderLock(folder / EVALUATION_LOCK)
    first.acquire()  # the first evaluation is between reading and writing evaluation.json
    record = {"class_name": "widget", "resolution": 64, "n_images": 9, "metrics": {"image_auroc": 0.5}}
    second = threading.Thread(target=record_evaluation, args=(folder, {**record, "branch": "image"}))
    second.start()
    second.join(0.5)
    assert second.is_alive() and read_evaluations(folder) == {}  # it waits
    (folder / "evaluation.json").write_text(json.dumps({"fused": {**record, "branch": "fused"}}))
    first.release()
    second.join(30)
    assert not second.is_alive() and sorted(read_evaluations(folder)) == ["fused", "image"]
    assert not (folder / EVALUATION_LOCK).exists()
    assert "| image | 64 | 9 |" in (folder / "README.md").read_text()


def test_push_dry_run_and_mocked_upload(widget_checkpoint, tmp_path):
    from detector.store.hub import push_checkpoint

    folder = shutil.copytree(widget_checkpoint, tmp_path / "ckpt")
    (folder / "old.pt").write_bytes(b"not a pickle we would ever send")
    (folder / "threshold.json").write_text(json.dumps({"fused": {"pixel_threshold": 0.5, "resolution": 64}}))
    out = push_checkpoint(folder, "org/widget-detector", dry_run=tmp_path / "dry")
    assert sorted(p.name for p in out.iterdir()) == [".detector-dry-run", "README.md", "config.json",
                                                     "model.safetensors", "threshold.json"]
    assert _card(out)[0]["finegrained_ad"]["repo_id"] == "org/widget-detector"
    assert 'Detector.load("org/widget-detector")' in (out / "README.md").read_text()
    api = mock.Mock()
    api.create_repo.return_value = "https://hub.example/org/widget-detector"
    sent = {}

    def upload_folder(**kw):
        sent.update(kw, files=sorted(p.name for p in __import__("pathlib").Path(kw["folder_path"]).iterdir()))

    api.upload_folder.side_effect = upload_folder
    url = push_checkpoint(folder, "org/widget-detector", private=True, api=api)
    assert url == "https://hub.example/org/widget-detector"
    api.create_repo.assert_called_once_with("org/widget-detector", repo_type="model", private=True, exist_ok=True)
    assert sent["repo_type"] == "model" and sent["files"] == sorted(p.name for p in out.iterdir()
                                                                    if p.name != ".detector-dry-run")
    with pytest.raises(DetectorError, match="ORG/NAME"):
        push_checkpoint(folder, "no-slash", api=mock.Mock())
    api.upload_folder.side_effect = RuntimeError("401 unauthorized")
    with pytest.raises(DetectorError, match="upload of .* failed: RuntimeError: 401"):
        push_checkpoint(folder, "org/widget-detector", api=api)


def test_push_command_and_predict_by_hub_id(widget_checkpoint, tmp_path, monkeypatch):
    """What `detector push` uploads, laid out as the Hub cache, loads with `--checkpoint ORG/NAME` offline."""
    from PIL import Image

    dry = tmp_path / "dry"
    res = runner.invoke(app, ["push", str(widget_checkpoint), "--repo-id", "org/widget", "--dry-run", str(dry)])
    assert res.exit_code == 0, res.output + res.stderr
    hub_snapshot(dry, tmp_path / "hub", "org/widget", monkeypatch, rev="89abcdef0123456789abcdef0123456789abcdef")
    Image.fromarray(make_image((10, 10, 20))).save(tmp_path / "a.png")
    res = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--checkpoint", "org/widget", "--out",
                              str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output + res.stderr
    from detector.store.saved_detector import load_detector

    ref = load_detector(widget_checkpoint).predict([make_image((10, 10, 20))])
    got = json.loads((tmp_path / "pred" / "scores.json").read_text())
    assert got["checkpoint"] == "org/widget"
    assert got["images"][0]["score"] == pytest.approx(float(ref.scores[0]), abs=1e-6)
    assert np.load(tmp_path / "pred" / "maps" / "a.npy").shape == (64, 64)
    res = runner.invoke(app, ["push", str(tmp_path / "nothing"), "--repo-id", "org/x", "--dry-run", str(dry)])
    assert res.exit_code == 1 and "error:" in res.stderr
