"""The synthetic data set: layout, determinism, exact masks, truth.json, conversion to VisA raw."""
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from fsad_data import load_mask, load_rgb, make_demo_data, to_visa_raw
from fsad_data.synthetic import CLASSES, DEFECTS, N_PER_DEFECT, N_TEST_GOOD, N_TRAIN_GOOD


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_layout_and_size(demo_root: Path) -> None:
    total = sum(p.stat().st_size for p in demo_root.rglob("*") if p.is_file())
    assert total < 5_000_000
    assert (demo_root / "license.txt").is_file()
    for cls in CLASSES:
        assert len(list((demo_root / cls / "train" / "good").glob("*.png"))) == N_TRAIN_GOOD
        assert len(list((demo_root / cls / "test" / "good").glob("*.png"))) == N_TEST_GOOD
        for d in DEFECTS[cls]:
            imgs = sorted((demo_root / cls / "test" / d).glob("*.png"))
            assert len(imgs) == N_PER_DEFECT
            for img in imgs:
                assert (demo_root / cls / "ground_truth" / d / f"{img.stem}_mask.png").is_file()


def test_deterministic_for_seed(demo_root: Path, tmp_path: Path) -> None:
    again = make_demo_data(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(demo_root)
    other = make_demo_data(tmp_path / "other", seed=1)
    assert _digest(other) != _digest(demo_root)


def test_normal_images_differ_and_masks_are_exact(demo_root: Path) -> None:
    for cls in CLASSES:
        a = load_rgb(demo_root / cls / "train" / "good" / "000.png")
        b = load_rgb(demo_root / cls / "train" / "good" / "001.png")
        assert a.shape == (256, 256, 3) and not np.array_equal(a, b)
        for d in DEFECTS[cls]:
            raw = np.asarray(Image.open(demo_root / cls / "ground_truth" / d / "000_mask.png"))
            assert set(np.unique(raw)) == {0, 255}
            mask = load_mask(demo_root / cls / "ground_truth" / d / "000_mask.png", (256, 256))
            assert 20 < mask.sum() < 0.1 * mask.size


def test_defect_pixels_have_the_defect_colour(demo_root: Path) -> None:
    # colour-spot masks are exactly the painted pixels: every masked pixel has one colour, none outside it does
    img = load_rgb(demo_root / "pill_box" / "test" / "color_spot" / "000.png")
    mask = load_mask(demo_root / "pill_box" / "ground_truth" / "color_spot" / "000_mask.png")
    colours = np.unique(img[mask], axis=0)
    assert len(colours) == 1
    assert not (img[~mask] == colours[0]).all(axis=1).any()


def test_truth_json(demo_root: Path) -> None:
    truth = json.loads((demo_root / "pill_box" / "truth.json").read_text())
    assert truth["background"] == "white" and truth["component_count"] == 3
    assert [(c["colour"], c["location"]) for c in truth["components"]] == [
        ("red", "top left"), ("yellow", "center"), ("green", "bottom right")
    ]
    # the red part really is red at its location on a normal image
    img = load_rgb(demo_root / "pill_box" / "train" / "good" / "000.png").astype(int)
    r, g, b = img[64, 64]
    assert r > 180 and g < 80 and b < 80
    assert json.loads((demo_root / "fabric" / "truth.json").read_text())["kind"] == "texture"


def test_to_visa_raw(demo_root: Path, tmp_path: Path) -> None:
    out = to_visa_raw(demo_root, tmp_path / "visa")
    with open(out / "split_csv" / "1cls.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["object", "split", "label", "image", "mask"]
    anomalies = [r for r in rows if r["label"] == "anomaly"]
    assert len(anomalies) == sum(len(DEFECTS[c]) * N_PER_DEFECT for c in CLASSES)
    values = set()
    for r in anomalies:
        assert (out / r["image"]).is_file()
        raw = np.asarray(Image.open(out / r["mask"]))
        values |= set(np.unique(raw).tolist())
    assert 255 not in values and values <= {0, 1, 38}
    assert sum(r["split"] == "train" for r in rows) == len(CLASSES) * N_TRAIN_GOOD
