"""One owner decides "random backbone weights" (detector.method.weights.is_random_weights). ``--pretrained None``
once trained on random weights (the loader lower-cased the tag) while checkpoint_io compared case-sensitively and
metrics.json called the figures meaningful; every reader now asks the same function."""
import pytest

from detector.method.weights import is_random_weights
from detector.store.checkpoint import checkpoint_info


@pytest.mark.parametrize("tag, random", [(None, True), ("", True), ("none", True), ("None", True), (" NONE ", True),
                                         ("laion400m_e32", False), ("/weights/none.pt", False)])
def test_is_random_weights(tag, random):
    assert is_random_weights(tag) is random


@pytest.mark.parametrize("tag", ["None", "NONE", "none"])
def test_random_weights_in_any_case_are_never_meaningful(tag):
    meta = {"config": {"pretrained": tag, "shots": 1}, "backbone": {"name": "x", "pretrained": tag}}
    assert checkpoint_info(meta)["meaningful"] is False
    assert checkpoint_info({**meta, "backbone": {"name": "x", "pretrained": "laion400m_e32"}})["meaningful"] is True


def test_train_with_pretrained_None_records_random_weights_everywhere(tiny_clip_name, demo_root, tmp_path):
    """The whole path: train with ``--pretrained None`` (capital N), then eval and the model card."""
    import json

    from typer.testing import CliRunner

    from detector.cli import app
    from detector.store.model_card import card_data

    ckpt = tmp_path / "ckpt"
    res = CliRunner().invoke(app, ["train", "--baseline", "promptad", "--data", str(demo_root), "--class", "hex_nut",
                                   "--shots", "1", "--backbone", tiny_clip_name, "--pretrained", "None", "--epochs",
                                   "1", "--image-epochs", "1", "--out", str(ckpt)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(demo_root), "--out",
                                   str(tmp_path / "ev"), "--resolution", "32"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["meaningful"] is False
    assert "not meaningful" in res.output
    assert card_data(ckpt)["finegrained_ad"]["backbone"]["random_weights"] is True
