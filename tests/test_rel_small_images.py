"""A 1x1 image (a placeholder, a broken export) in every command that reads images (issue 11, section 4).

Before: `mfsc build` stopped with "image of size 1x1 is too small to crop" (no file, no way out), and
`detector train/eval/predict` silently upsampled the single pixel into a uniform picture and scored or trained on
it. Now each command stops with one line naming the file and its size and suggesting `--on-error skip`; with that
flag the image is left out and listed (build_info.json, metrics.json, scores.json; train picks other shots).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app as detector_app
from mfsc_builder.cli import app as mfsc_app

runner = CliRunner()
TINY_CLIP = Path(__file__).parent / "assets" / "fgad-tiny-test.json"


@pytest.fixture(scope="module")
def data(demo_root, tmp_path_factory) -> Path:
    """The synthetic pill_box class with a shot and the first test image replaced by 1x1 pictures."""
    root = tmp_path_factory.mktemp("small") / "data"
    shutil.copytree(demo_root / "pill_box", root / "pill_box")
    for split, name in (("train", "002.png"), ("test", "000.png")):  # train/good/002.png: the first shot of seed 0
        Image.new("RGB", (1, 1), (128, 128, 128)).save(root / "pill_box" / split / "good" / name)
    return root


@pytest.fixture(scope="module")
def ckpt(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small-ckpt") / "ckpt"
    res = runner.invoke(detector_app, _train(demo_root, out))
    assert res.exit_code == 0, res.output
    return out


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--class", "pill_box", "--shots", "2", "--out", str(out), "--backbone",
            str(TINY_CLIP), "--pretrained", "none", "--epochs", "1", "--image-epochs", "1", "--baseline", "promptad",
            *extra]


def _args(command: str, data: Path, ckpt: Path, out: Path) -> tuple[object, list[str]]:
    if command == "mfsc build":
        return mfsc_app, ["build", str(data), "--out", str(out), "--quiet", "--seed", "1"]  # reference: 001.png
    if command == "detector train":
        return detector_app, _train(data, out)
    if command == "detector eval":
        return detector_app, ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out),
                              "--resolution", "32"]
    return detector_app, ["predict", str(data / "pill_box" / "test" / "good"), "--checkpoint", str(ckpt), "--out",
                          str(out)]


COMMANDS = ["mfsc build", "detector train", "detector eval", "detector predict"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_1x1_image_is_one_line_naming_it_and_the_skip_flag(command, data, ckpt, tmp_path):
    app, args = _args(command, data, ckpt, tmp_path / "out")
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    err = " ".join(res.stderr.split())
    bad = {"mfsc build": ["train/good/002.png", "test/good/000.png"], "detector train": ["train/good/002.png"]}.get(
        command, ["test/good/000.png"])
    assert err.startswith("error: image ") and "Traceback" not in res.output, res.output
    assert any(str(data / "pill_box" / b) in err for b in bad) and "1x1 px" in err, err
    assert "--on-error skip" in err and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("command", COMMANDS)
def test_with_on_error_skip_the_image_is_left_out_and_listed(command, data, ckpt, tmp_path):
    out = tmp_path / "out"
    app, args = _args(command, data, ckpt, out)
    res = runner.invoke(app, [*args, "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    bad = str(data / "pill_box" / "test" / "good" / "000.png")
    if command == "mfsc build":
        info = json.loads((out / "build_info.json").read_text())
        assert len(info["skipped"]) == 2 and all("1x1 px" in s[1] for s in info["skipped"]), info["skipped"]
    elif command == "detector train":
        shots = json.loads((out / "config.json").read_text())["meta"]["shots"]
        assert len(shots) == 2 and "train/good/002.png" not in shots, shots
    elif command == "detector eval":
        metrics = json.loads((out / "metrics.json").read_text())
        assert [s["path"] for s in metrics["skipped"]] == [bad] and metrics["n_images"] == 11
        assert "skipped" in " ".join(res.output.split())
    else:
        scores = json.loads((out / "scores.json").read_text())
        assert [s["path"] for s in scores["skipped"]] == [bad] and "000.png" not in [r["name"] for r in
                                                                                   scores["images"]]
        assert "1 image(s) skipped" in " ".join(res.output.split())


def test_a_build_whose_only_reference_image_is_skipped_is_one_line(data, tmp_path):
    """--on-error skip with the class's one reference image unreadable: no class record can be made; one line
    saying so (before: a ValueError traceback from writing an empty classes dataset)."""
    res = runner.invoke(mfsc_app, ["build", str(data), "--out", str(tmp_path / "out"), "--quiet", "--on-error",
                                   "skip"])  # seed 0: the reference is train/good/002.png, the 1x1 picture
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = " ".join(res.stderr.split())
    assert "Traceback" not in res.output and "no class record could be made" in err and "--seed" in err, err
    assert not (tmp_path / "out" / "classes").exists()


def test_benchmark_names_the_image_and_with_on_error_skip_lists_it_per_cell(data, tmp_path):
    args = ["benchmark", "--data", str(data), "--out", str(tmp_path / "b"), "--classes", "pill_box", "--shots", "2",
            "--seeds", "0", "--no-main", "--baseline", "promptad", "--backbone", str(TINY_CLIP), "--pretrained",
            "none", "--epochs", "1", "--image-epochs", "1", "--resolution", "32", "--dataset-name", "synthetic"]
    res = runner.invoke(detector_app, args)
    assert res.exit_code == 1, res.output
    err = " ".join(res.stderr.split())
    assert str(data / "pill_box" / "train" / "good" / "002.png") in err and "--on-error skip" in err, err
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output, res.output
    res = runner.invoke(detector_app, [*args, "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    cell = tmp_path / "b" / "cells" / "promptad" / "pill_box" / "k2_s0"
    metrics = json.loads((cell / "metrics.json").read_text())
    assert [s["path"] for s in metrics["skipped"]] == [str(data / "pill_box" / "test" / "good" / "000.png")]
    shots = json.loads((cell / "checkpoint" / "config.json").read_text())["meta"]["shots"]
    assert len(shots) == 2 and "train/good/002.png" not in shots, shots
