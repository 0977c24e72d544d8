"""What `detector predict` writes for each image (issue 20, section 3): file names with one extension, the
caption band on every overlay, and the outputs a user turns off (--no-overlays, --no-maps) cost nothing."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from detector_fixtures import make_image
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app
from detector.eval import overlay_caption as C
from detector.method.model import Prediction
from detector.run import predict as P
from detector.store.thresholds import Thresholds

runner = CliRunner()


# ------------------------------------------------------------------------------------------ file names
def test_output_stems_drop_the_extension_and_keep_folders():
    assert P.output_stems(["good/000.png", "bad/crack/000.jpg", "x.tiff"]) == ["good/000", "bad/crack/000", "x"]
    assert P.output_file("overlay", "good/000") == "overlays/good/000.png"
    assert P.output_file("map", "good/000") == "maps/good/000.npy"


def test_output_stems_keep_inputs_that_share_a_stem_apart():
    names = ["x.jpg", "x.png", "x_jpg.png", "sub/y.PNG", "sub/Y.jpg", "a.b.png"]
    stems = P.output_stems(names)
    # the literal x_jpg.png keeps its own stem; the x.jpg that would take it next gets -2
    assert stems == ["x_jpg-2", "x_png", "x_jpg", "sub/y_PNG", "sub/Y_jpg", "a.b"]
    assert len({s.casefold() for s in stems}) == len(names)  # distinct on a case-insensitive file system too
    assert P.output_stems(names) == stems  # the same inputs, the same names on every run


def test_output_stems_never_make_a_file_where_another_input_needs_a_folder():
    # an input folder named x.png beside an image x.png: overlays/x.png cannot be both a file and a folder
    assert P.output_stems(["x.png", "x.png/y.png"]) == ["x_png", "x.png/y"]
    assert P.output_stems(["x", "x.png"]) == ["x", "x_png"]  # a name without an extension


def test_x_png_and_x_jpg_never_overwrite_each_other(tmp_path):
    src = make_image((5, 5, 20))
    for name in ("x.png", "x.jpg"):
        Image.fromarray(src).save(tmp_path / name, quality=95)
    items = P.list_inputs([tmp_path / "x.png", tmp_path / "x.jpg"])
    rows = P.predict_paths(FakeModel(), items, tmp_path / "out", P.PredictSettings(thresholds=_thr(0.5, 0.5), resolution=16))
    for kind in ("map", "overlay", "mask"):
        paths = [r[kind] for r in rows]
        assert len(set(paths)) == 2 and all((tmp_path / "out" / p).is_file() for p in paths), paths
    assert sorted(r["overlay"] for r in rows) == ["overlays/x_jpg.png", "overlays/x_png.png"]
    assert not list((tmp_path / "out").rglob("*.png.png")) and not list((tmp_path / "out").rglob("*.jpg.*"))


# ------------------------------------------------------------------------------------------ the caption
@pytest.mark.parametrize(("anomalous", "threshold", "first"), [
    (True, 0.612, "ANOMALOUS: score 0.734 >= 0.612"),
    (False, 0.9, "normal: score 0.734 < 0.9"),
    (None, None, "no image threshold: score 0.734"),
])
def test_caption_verdict_says_the_decision_and_the_score_against_the_threshold(anomalous, threshold, first):
    lines = C.caption_lines(0.7341, threshold, anomalous, None)
    assert [ln.text for ln in lines] == [first]
    assert lines[0].rgb == C.VERDICT_RGB[C.verdict(anomalous)]


def test_caption_shows_digits_enough_to_tell_score_and_threshold_apart():
    assert C.caption_lines(0.61234, 0.61201, True, None)[0].text == "ANOMALOUS: score 0.6123 >= 0.612"
    assert C.caption_lines(0.5, 0.5, True, None)[0].text == "ANOMALOUS: score 0.5 >= 0.5"


def test_caption_numbers_the_defects_as_the_regions_are_numbered():
    lines = C.caption_lines(0.9, 0.5, True, ["scratch on the cap, top left", "dent on the body, center"])
    assert [ln.text for ln in lines[1:]] == ["1. scratch on the cap, top left", "2. dent on the body, center"]
    assert C.caption_lines(0.1, 0.5, False, [])[1].text == "no defect region at the pixel threshold"


def _band(picture: np.ndarray, lines: list[C.Line], **kw) -> np.ndarray:
    out = C.add_caption(picture, lines, **kw)
    np.testing.assert_array_equal(out[: picture.shape[0], : picture.shape[1]], picture)  # the picture untouched
    return out[picture.shape[0]:]


@pytest.mark.parametrize("size", [64, 256, 1600])
def test_caption_band_below_the_picture_is_readable_at_any_size(size):
    pic = np.full((size, size, 3), 200, np.uint8)
    band = _band(pic, C.caption_lines(0.7, 0.6, True, ["scratch on the cap, top left, 0.8% of the image"]))
    assert band.shape[1] == max(size, C.MIN_WIDTH)
    ink = np.any(band != C.BAND_RGB, axis=2)
    assert ink.mean() > 0.01  # text is drawn
    rows = np.nonzero(ink.any(axis=1))[0]
    assert rows.max() - rows.min() >= band.shape[1] / 40  # letters grow with the width (two lines here)


def test_caption_wraps_long_sentences_and_caps_the_lines():
    sentences = [f"defect {k} on the round red cap at the top left, 0.8% of the image, score 0.9" for k in range(9)]
    lines = C.caption_lines(0.7, 0.6, True, sentences)
    pic = np.zeros((64, 400, 3), np.uint8)
    few = _band(pic, lines[:2], max_lines=6)
    many = _band(pic, lines, max_lines=6)
    assert many.shape[0] > few.shape[0]
    rows = C._fit(lines, 380, 400 / (C.CHARS_PER_LINE * C._CHAR_W), 1, 6)
    texts = [line.text for _, line in rows]
    assert len(rows) <= 6 and texts[-1].startswith("+") and texts[-1].endswith("more defects (defects.json)")
    shown = sum(t[:2].rstrip(".").isdigit() for t in texts)  # numbered items drawn whole, the rest counted
    assert texts[-1].startswith(f"+{len(sentences) - shown} ")
    assert any(x > 0 for x, _ in rows)  # a wrapped item's next line indents under its text


# ------------------------------------------------------------------------------------------ outputs on / off
class FakeModel:
    """A model whose maps are a ramp (a different level per image): no backbone, instant."""

    def predict(self, images, resolution=256, branch="fused", batch_size=8):
        ramp = np.linspace(0, 1, resolution * resolution, dtype=np.float32).reshape(resolution, resolution)
        return Prediction(np.linspace(0.2, 0.8, len(images), dtype=np.float32),
                          np.stack([ramp * (i + 1) for i in range(len(images))]))


def _thr(pixel: float | None, image: float | None) -> Thresholds:
    return Thresholds(pixel, image, None, "value")


def _folder(tmp_path: Path, n: int = 3, size: int = 48) -> Path:
    for i in range(n):
        (tmp_path / "in" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(make_image((4, 4, 8 + i), size=size)).save(tmp_path / "in" / "good" / f"{i:03d}.png")
    return tmp_path / "in"


def test_each_overlay_has_a_caption_band_and_the_csv_names_every_file(tmp_path):
    items = P.list_inputs([_folder(tmp_path, size=400)])
    out = tmp_path / "out"
    rows = P.predict_paths(FakeModel(), items, out, P.PredictSettings(thresholds=_thr(0.7, 0.5), resolution=16, batch_size=2))
    table = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["overlay"] for r in table] == ["overlays/good/000.png", "overlays/good/001.png", "overlays/good/002.png"]
    for r in table:
        for kind in ("map", "overlay", "mask"):
            assert (out / r[kind]).is_file(), r[kind]
        pic = np.asarray(Image.open(out / r["overlay"]).convert("RGB"))
        assert pic.shape[1] == 400 and pic.shape[0] > 400  # the band under the 400 x 400 picture
        band = pic[400:]
        assert np.any(band != C.BAND_RGB, axis=2).mean() > 0.005  # the verdict is written in it
        assert np.load(out / r["map"]).shape == (400, 400)
    assert json.loads((out / "scores.json").read_text())["images"][0]["overlay"] == "overlays/good/000.png"
    assert P.summary_line(rows, out).endswith("scores.csv, scores.json, masks/, overlays/, maps/")
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no scratch left behind


def test_overlays_show_the_decision_and_the_named_defects_in_region_order(widget_checkpoint, tmp_path, monkeypatch):
    from detector.store.saved_detector import load_detector

    model = load_detector(widget_checkpoint)
    folder = tmp_path / "in"
    folder.mkdir()
    for i, square in enumerate([(5, 40, 6), None, (20, 10, 16)]):
        Image.fromarray(make_image(square)).save(folder / f"{i}.png")
    items = P.list_inputs([folder])
    maps = model.predict([make_image(s) for s in [(5, 40, 6), None, (20, 10, 16)]]).maps
    pixel = float(np.quantile(maps, 0.97))  # a few regions per image
    seen = []
    real = C.caption_lines
    monkeypatch.setattr(C, "caption_lines", lambda *a: seen.append(a) or real(*a))
    rows = P.predict_paths(model, items, tmp_path / "out", P.PredictSettings(thresholds=_thr(pixel, 0.0), resolution=64,
                           min_area=0.0))
    named = json.loads((tmp_path / "out" / "defects.json").read_text())["images"]
    assert [n["regions"] for n in named] == [r["regions"] for r in rows] == ["regions/0.png", "regions/1.png",
                                                                             "regions/2.png"]
    assert sum(len(n["defects"]) for n in named) > 0
    for (score, image_threshold, anomalous, sentences), row, n in zip(seen, rows, named):
        assert (score, image_threshold, anomalous) == (row["score"], 0.0, row["anomalous"])
        assert sentences == [d["sentence"] for d in n["defects"]]  # numbered 1.. as draw_regions numbers them


def test_no_overlays_and_no_maps_write_nothing_of_them_and_the_summary_says_what_was_written(tmp_path):
    items = P.list_inputs([_folder(tmp_path)])
    out = tmp_path / "out"
    rows = P.predict_paths(FakeModel(), items, out, P.PredictSettings(thresholds=_thr(0.7, None), resolution=16,
                           overlays=False, maps=False))
    assert sorted(p.name for p in out.iterdir()) == ["masks", "scores.csv", "scores.json"]
    assert all("overlay" not in r and "map" not in r and r["mask"].startswith("masks/") for r in rows)
    line = P.summary_line(rows, out)
    assert line.endswith("scores.csv, scores.json, masks/") and "overlays/" not in line and "maps/" not in line


def test_cli_no_overlays_no_maps(widget_checkpoint, tmp_path):
    folder = _folder(tmp_path, n=2)
    out = tmp_path / "pred"
    res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(widget_checkpoint), "--out", str(out),
                              "--no-overlays", "--no-maps", "--resolution", "32"])
    assert res.exit_code == 0, res.output + res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.json"]
    said = " ".join(res.output.split())
    assert said.endswith(f"in {out}: scores.csv, scores.json"), said
    table = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["name"] for r in table] == ["good/000.png", "good/001.png"] and "overlay" not in table[0]
    res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(widget_checkpoint), "--out", str(out),
                              "--no-maps", "--resolution", "32"])
    assert res.exit_code == 0, res.output + res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["overlays", "scores.csv", "scores.json"]
    assert " ".join(res.output.split()).endswith("scores.csv, scores.json, overlays/")


def test_detector_commands_import_open_clip_without_transformers_and_timm():
    """The lean import (the `detector` commands set FGAD_LEAN_OPEN_CLIP=1) builds the backbone as before and
    leaves both libraries importable afterwards."""
    import os
    import subprocess
    import sys

    config = Path(__file__).parent / "assets" / "fgad-tiny-test.json"
    code = ("import sys\nfrom detector.method.backbone import load_backbone\n"
            f"bb = load_backbone({str(config)!r}, pretrained='none')\n"
            "print('LOADED', [m for m in ('transformers', 'timm') if m in sys.modules], bb.depth)\n"
            "import timm, transformers\nprint('IMPORTABLE')\n")
    env = {**os.environ, "FGAD_LEAN_OPEN_CLIP": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         check=False)
    assert "LOADED [] 4" in out.stdout and "IMPORTABLE" in out.stdout, out.stdout + out.stderr
