"""A small caption record, drawn images and a Hub-cache snapshot shared by the detector tests."""
import shutil
from pathlib import Path

import numpy as np

RECORD = {
    "class_name": "widget",
    "object_name": "widget",
    "texts": [
        {"level": "image", "group": "image", "normal": ["a photo of a grey widget"],
         "abnormal": ["a photo of a broken widget"]},
        {"level": "background", "group": "background", "normal": ["white background"],
         "abnormal": ["dirty white background"]},
        {"level": "component", "group": "cap", "normal": ["a round cap on the top"],
         "abnormal": ["a round cap on the bottom"]},
        {"level": "colour", "group": "colour", "normal": ["grey colour"], "abnormal": ["red colour"]},
    ],
}


def make_image(square: tuple[int, int, int] | None = None, size: int = 64) -> np.ndarray:
    """Constant light-grey image, optionally with a red square (y, x, side)."""
    a = np.full((size, size, 3), 200, np.uint8)
    if square is not None:
        y, x, s = square
        a[y : y + s, x : x + s] = (220, 30, 30)
    return a


def hub_snapshot(folder: Path, cache: Path, repo_id: str, monkeypatch,
                 rev: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """``folder`` laid out as the Hub cache's snapshot of ``repo_id`` (models--ORG--NAME/snapshots/REV,
    refs/main) under ``cache``, which huggingface_hub then reads (offline); returns the repo folder."""
    import huggingface_hub.constants as hc

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / rev)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    return repo


def train_and_evaluate(root: Path, data: Path, backbone: str, class_name: str) -> tuple[Path, Path]:
    """``detector train`` (1-epoch class-name checkpoint, 1 shot) then ``detector eval`` at 64 px, through the CLI as
    the README gives them; returns (checkpoint, evaluation) folders under ``root``."""
    from typer.testing import CliRunner

    from detector.cli import app

    runner = CliRunner()
    ckpt, ev = root / "ckpt", root / "eval"
    res = runner.invoke(app, [str(a) for a in [
        "train", "--data", data, "--class", class_name, "--shots", "1", "--out", ckpt, "--backbone", backbone,
        "--pretrained", "none", "--epochs", "1", "--image-epochs", "1", "--baseline", "promptad"]])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(ev),
                              "--resolution", "64"])
    assert res.exit_code == 0, res.output
    return ckpt, ev
