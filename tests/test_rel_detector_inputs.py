"""Bad inputs on the detector side, through the `detector` CLI: broken and odd images for predict, an empty
class for train, a full disk while writing outputs. Each: exit 1, one line naming the file and the fix, no
traceback, and no half-written output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from disk_full import fill_disk_on_fdopen
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app
from detector.store.saved_detector import save_detector

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_clip_name) -> Path:
    """A tiny 1-epoch class-name (PromptAD) checkpoint: no caption dataset needed."""
    from detector.config import TrainConfig
    from detector.run.train import train_model

    img = np.full((64, 64, 3), 200, np.uint8)
    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=1, image_epochs=1,
                      shots=1, baseline="promptad")
    model = train_model(cfg, progress=False, shot_images=[img], shot_names=["good/000.png"], record=None)
    return save_detector(model, tmp_path_factory.mktemp("ckpt") / "widget")


def _invoke(args: list[str]):
    res = CliRunner().invoke(app, [str(a) for a in args])
    text = " ".join(res.output.split())
    return res, text


def _one_error_line(res) -> str:
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and lines and lines[-1].startswith("error:"), res.output
    return " ".join(res.output.split())


def _scene(size: int = 48) -> np.ndarray:
    a = np.full((size, size, 3), 220, np.uint8)
    a[10:30, 12:36] = (30, 90, 200)
    return a


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "not-an-image"])
def test_predict_on_a_broken_image_names_it_and_writes_nothing(checkpoint, tmp_path, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(_scene()).save(folder / "a_good.png")
    bad = folder / "b_bad.png"
    Image.fromarray(_scene()).save(bad)
    if kind == "zero-byte":
        bad.write_bytes(b"")
    elif kind == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        bad.write_text("<html>not found</html>")
    out = tmp_path / "out"
    res, _ = _invoke(["predict", "--checkpoint", checkpoint, folder, "--out", out])
    text = _one_error_line(res)
    assert str(bad) in text and ("re-download" in text or "re-export" in text), text
    assert not (out / "scores.csv").exists() and not (out / "scores.json").exists()


def test_predict_accepts_gray_rgba_16bit_and_palette_images(checkpoint, tmp_path):
    """Every mode is scored like its RGB conversion (same score as the RGB file of the same pixels)."""
    import csv

    import cv2

    g = _scene()
    gray = cv2.cvtColor(g, cv2.COLOR_RGB2GRAY)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.repeat(gray[..., None], 3, 2)).save(folder / "gray_as_rgb.png")
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(g).save(folder / "rgb.png")
    Image.fromarray(np.dstack([g, np.full(gray.shape, 9, np.uint8)])).save(folder / "rgba.png")
    pal = Image.fromarray(g).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(folder / "palette.png")
    pal.convert("RGB").save(folder / "palette_as_rgb.png")
    out = tmp_path / "out"
    res, _ = _invoke(["predict", "--checkpoint", checkpoint, folder, "--out", out, "--resolution", "32"])
    assert res.exit_code == 0, res.output
    with open(out / "scores.csv", newline="") as f:
        scores = {r["name"].removesuffix(".png"): float(r["score"]) for r in csv.DictReader(f)}
    same = pytest.approx  # equal pixels; only the batch position differs (float rounding of batched matmuls)
    assert scores["gray"] == same(scores["gray_as_rgb"], abs=1e-5) and scores["gray16"] == same(scores["gray"], abs=1e-5)
    assert scores["rgba"] == same(scores["rgb"], abs=1e-5)
    assert scores["palette"] == same(scores["palette_as_rgb"], abs=1e-5)
    assert scores["rgb"] != same(scores["gray"], abs=1e-4)  # the colour matters: the comparison is not vacuous


def test_predict_on_file_names_with_spaces_and_non_ascii(checkpoint, tmp_path):
    folder = tmp_path / "in ü"
    (folder / "sub dir").mkdir(parents=True)
    Image.fromarray(_scene()).save(folder / "sub dir" / "bild ä 1.png")
    Image.fromarray(_scene()).save(folder / "画像.png")
    out = tmp_path / "out é"
    res, _ = _invoke(["predict", "--checkpoint", checkpoint, folder, "--out", out, "--resolution", "32"])
    assert res.exit_code == 0, res.output
    assert (out / "maps" / "sub dir" / "bild ä 1.npy").is_file() and (out / "maps" / "画像.npy").is_file()
    assert "画像" in (out / "scores.csv").read_text(encoding="utf-8")


def test_train_on_an_empty_class_is_one_line_and_writes_no_checkpoint(tmp_path):
    data = tmp_path / "data"
    for sub in ("train/good", "test/good"):
        (data / "hollow" / sub).mkdir(parents=True)
    out = tmp_path / "ckpt"
    res, _ = _invoke(["train", "--data", data, "--class", "hollow", "--out", out, "--baseline", "promptad",
                      "--backbone", ROOT / "tests/assets/fgad-tiny-test.json", "--pretrained", "none",
                      "--epochs", "1", "--image-epochs", "1", "--shots", "1"])
    text = _one_error_line(res)
    assert "hollow" in text, text
    assert not out.exists()


def test_predict_with_a_full_disk_is_one_line_saying_so(checkpoint, tmp_path, monkeypatch):
    Image.fromarray(_scene()).save(tmp_path / "x.png")
    fill_disk_on_fdopen(monkeypatch)
    res, _ = _invoke(["predict", "--checkpoint", checkpoint, tmp_path / "x.png", "--out", tmp_path / "out", "--resolution", "32"])
    monkeypatch.undo()
    text = _one_error_line(res)
    assert "No space left" in text, text
    left = [p.name for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    assert not left, left
