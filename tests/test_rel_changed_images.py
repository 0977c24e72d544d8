"""Issue 22: files edited since `mfsc build` recorded them (size and SHA-256 in every `images` row, `--images
reference` keeping nothing else) are not used silently. `detector train` refuses changed shots in one line naming
them; `detector eval` leaves changed test images out of naming_accuracy with one warning line."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app as detector_app
from detector.store import captions as C
from detector.store.data import select_class_shots
from fsad_data import Sample, read_dataset
from mfsc_builder.cli import app as mfsc_app

CLASS = "pill_box"
runner = CliRunner()


def _edit(path: Path) -> None:
    """Paint a patch: the same size in pixels, other bytes."""
    pixels = np.array(Image.open(path).convert("RGB"))
    pixels[:8, :8] = 255 - pixels[:8, :8]
    Image.fromarray(pixels).save(path)


def _train(cap: Path, data: Path, out: Path, tiny: str):
    return runner.invoke(detector_app, [
        "train", "--captions", str(cap), "--data", str(data), "--class", CLASS, "--shots", "1", "--seed", "0",
        "--out", str(out), "--backbone", tiny, "--pretrained", "none", "--epochs", "1", "--image-epochs", "1"])


@pytest.fixture(scope="module")
def edited(demo_root, tmp_path_factory, tiny_clip_name):
    """A reference build of the class, a checkpoint trained from it, then one shot and one test image edited."""
    tmp = tmp_path_factory.mktemp("changed")
    data, cap = tmp / "data", tmp / "captions"
    shutil.copytree(demo_root / CLASS, data / CLASS)  # the session's demo data stays as it is
    res = runner.invoke(mfsc_app, ["build", str(data), "--out", str(cap), "--classes", CLASS, "--images",
                                   "reference", "--workers", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    ckpt = tmp / "ckpt"
    res = _train(cap, data, ckpt, tiny_clip_name)
    assert res.exit_code == 0, res.output + res.stderr
    samples = sorted(read_dataset(data, classes=[CLASS]), key=lambda s: s.id)
    (shot,) = select_class_shots(samples, CLASS, 1, 0)  # what --shots 1 --seed 0 trains on
    test = next(s for s in samples if s.split == "test" and s.label == 1)
    _edit(shot.image_path)
    _edit(test.image_path)
    n_test = sum(s.split == "test" for s in samples)
    return {"data": data, "cap": cap, "ckpt": ckpt, "tmp": tmp, "shot": f"{CLASS}/{shot.file_name}",
            "test": f"{CLASS}/{test.file_name}", "n_test": n_test}


def test_train_refuses_a_changed_shot_naming_it(edited, tiny_clip_name):
    res = _train(edited["cap"], edited["data"], edited["tmp"] / "again", tiny_clip_name)
    assert res.exit_code == 1, res.output + res.stderr
    err = " ".join(res.stderr.split())  # the terminal may wrap the one line
    assert err.startswith("error: 1 of 1 shot images changed since the captions in"), err
    assert f"({edited['shot']})" in err and "mfsc build" in err and "--force" in err
    assert "Traceback" not in res.output + res.stderr
    assert not (edited["tmp"] / "again" / "config.json").exists()


def test_eval_warns_and_leaves_the_changed_test_image_out_of_naming(edited):
    out = edited["tmp"] / "eval"
    res = runner.invoke(detector_app, ["eval", "--checkpoint", str(edited["ckpt"]), "--data", str(edited["data"]),
                                       "--out", str(out), "--resolution", "64"])
    assert res.exit_code == 0, res.output + res.stderr
    warning = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1, res.stderr
    assert warning[0].startswith(f"warning: 1 of {edited['n_test']} test images changed since the captions in ")
    assert f"({edited['test']}): left out of naming_accuracy" in warning[0]
    note = json.loads((out / "metrics.json").read_text())["naming"]["note"]
    assert f"({edited['test']}): left out of naming_accuracy" in note


def _sample(tmp: Path, name: str, mask: Path | None = None) -> Sample:
    return Sample(id=f"c/test/x/{name}", class_name="c", split="test", label=int(mask is not None), defect_type="x",
                  image_path=tmp / name, mask_path=mask, file_name=name)


def _row(data: bytes, mask: bytes | None = None, name: str = "") -> dict:
    sha = (lambda b: hashlib.sha256(b).hexdigest())
    return {"image_file": name, "image_file_size": len(data), "image_sha256": sha(data),
            "mask_file": f"m-{name}" if mask is not None else "", "mask_file_size": len(mask or b""),
            "mask_sha256": sha(mask) if mask is not None else ""}


def test_size_first_then_the_hash_only_when_sizes_match(tmp_path, monkeypatch):
    hashed = []
    real = C.file_sha256
    monkeypatch.setattr(C, "file_sha256", lambda p: hashed.append(Path(p).name) or real(p))
    for name, body in (("same.png", b"abcd"), ("longer.png", b"abcdef"), ("flipped.png", b"abcz"),
                       ("m.png", b"img"), ("mask.png", b"MASK")):
        (tmp_path / name).write_bytes(body)
    samples = [_sample(tmp_path, "same.png"), _sample(tmp_path, "longer.png"), _sample(tmp_path, "flipped.png"),
               _sample(tmp_path, "m.png", mask=tmp_path / "mask.png"), _sample(tmp_path, "norow.png"),
               _sample(tmp_path, "gone-mask.png")]
    (tmp_path / "gone-mask.png").write_bytes(b"g")
    rows = {samples[0].id: _row(b"abcd", name="same.png"), samples[1].id: _row(b"abcd", name="longer.png"),
            samples[2].id: _row(b"abcd", name="flipped.png"), samples[3].id: _row(b"img", b"MASC", name="m.png"),
            samples[5].id: _row(b"g", b"old mask", name="gone-mask.png")}
    changed, checked = C.changed_files(samples, rows)
    assert checked == 5  # norow.png has no row: not checked
    assert [name for _, name in changed] == ["longer.png", "flipped.png", "m-m.png", "m-gone-mask.png"]
    assert "longer.png" not in hashed  # a size that differs needs no hash
    assert C.changed_line(changed, checked, "test images", "D") == (
        "4 of 5 test images changed since the captions in D were built (longer.png, flipped.png, m-m.png and 1 more)")


def test_a_hub_id_or_a_folder_without_images_is_not_checked(tmp_path):
    s = _sample(tmp_path, "a.png")
    C.check_shot_files("org/name", "c", [s])  # no download: nothing to compare with
    C.check_shot_files(tmp_path, "c", [s])
