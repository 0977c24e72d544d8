"""Writers of tiny data set trees in every accepted layout, for the fsad_data tests (8x8 images)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (8, 8)  # (W, H)


def write_image(path: Path, value: int = 100, size: tuple[int, int] = SIZE, fmt: str | None = None) -> Path:
    """An RGB image filled with ``value`` (the value makes images distinguishable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value % 256, np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def write_mask(path: Path, value: int = 255, size: tuple[int, int] = SIZE) -> Path:
    """A mask with a 2x2 defect in the top-left corner set to ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), np.uint8)
    arr[:2, :2] = value
    Image.fromarray(arr).save(path)
    return path


def make_mvtec(
    root: Path,
    classes: tuple[str, ...] = ("widget",),
    n_train: int = 3,
    n_good: int = 2,
    defects: dict[str, int] | None = None,
    mask_suffix: str = "_mask",
    image_suffix: str = ".png",
) -> Path:
    """MVTec-AD tree: <class>/train/good, test/good, test/<defect>, ground_truth/<defect>/<stem><suffix>.png."""
    defects = {"scratch": 2} if defects is None else defects
    for cls in classes:
        for i in range(n_train):
            write_image(root / cls / "train" / "good" / f"{i:03d}{image_suffix}", i)
        for i in range(n_good):
            write_image(root / cls / "test" / "good" / f"{i:03d}{image_suffix}", 50 + i)
        for d, n in defects.items():
            for i in range(n):
                write_image(root / cls / "test" / d / f"{i:03d}{image_suffix}", 200 + i)
                write_mask(root / cls / "ground_truth" / d / f"{i:03d}{mask_suffix}.png")
    return root


def make_visa(root: Path, classes: tuple[str, ...] = ("pcb1",)) -> Path:
    """VisA converted tree: 1cls/<class>/train/good, test/{good,bad}, ground_truth/bad/<stem>.png (.JPG images)."""
    make_mvtec(root / "1cls", classes, defects={"bad": 2}, mask_suffix="", image_suffix=".JPG")
    return root


def make_visa_raw(root: Path, classes: tuple[str, ...] = ("candle",), mask_value: int = 1) -> Path:
    """VisA raw tree with split_csv/1cls.csv; masks hold ``mask_value`` (not 255)."""
    rows = []
    for cls in classes:
        for i in range(4):
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, i)
            rows.append([cls, "train" if i < 3 else "test", "normal", rel, ""])
        for i in range(2):
            rel, mrel = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG", f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_image(root / rel, 200 + i)
            write_mask(root / mrel, mask_value)
            rows.append([cls, "test", "anomaly", rel, mrel])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def make_realiad(root: Path, cls: str = "audiojack") -> Path:
    """Real-IAD tree: realiad_jsons/realiad_jsons/<class>.json + realiad_256/<class>/{OK,NG}/S..../*.jpg."""
    base = root / "realiad_256" / cls
    train, test = [], []
    for i, sample in enumerate(["S0001", "S0002", "S0003"]):
        rel = f"OK/{sample}/{cls}_{i + 1:04d}_OK_C1_20231021130425.jpg"
        write_image(base / rel, 10 * i, fmt="JPEG")
        entry = {"category": cls, "anomaly_class": "OK", "image_path": rel, "mask_path": None}
        (train if i < 2 else test).append(entry)
    for i, code in enumerate(["AK", "HS"]):
        stem = f"NG/{code}/S01{i:02d}/{cls}_01{i:02d}_NG_C2_20231021131000"
        write_image(base / f"{stem}.jpg", 200, fmt="JPEG")
        write_mask(base / f"{stem}_mask.png")
        test.append({"category": cls, "anomaly_class": code, "image_path": f"{stem}.jpg",
                     "mask_path": f"{stem}_mask.png"})
    jdir = root / "realiad_jsons" / "realiad_jsons"
    jdir.mkdir(parents=True, exist_ok=True)
    meta = {"prefix": "", "normal_class": "OK", "pre_transform": {"type": "SquarePad"}}
    (jdir / f"{cls}.json").write_text(json.dumps({"meta": meta, "train": train, "test": test}, indent=1))
    return root


def make_folder(root: Path, explicit_split: bool = False, masks: bool = True, n_normal: int = 5) -> Path:
    """Generic folder class at ``root``: normal/, anomaly/, masks/ (or train/normal + test/{normal,anomaly})."""
    if explicit_split:
        for i in range(3):
            write_image(root / "train" / "normal" / f"n{i}.png", i)
        for i in range(2):
            write_image(root / "test" / "normal" / f"t{i}.png", 50 + i)
        anomaly = root / "test" / "anomaly"
    else:
        for i in range(n_normal):
            write_image(root / "normal" / f"n{i}.png", i)
        anomaly = root / "anomaly"
    write_image(anomaly / "a0.png", 200)
    write_image(anomaly / "dent" / "a1.png", 201)
    if masks:
        write_mask(root / "masks" / "a0_mask.png")
        write_mask(root / "masks" / "a1.png")
    return root
