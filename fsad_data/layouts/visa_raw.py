"""VisA raw layout (the download as published): ``<root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG``,
``<root>/<class>/Data/Masks/Anomaly/*.png`` and ``<root>/split_csv/1cls.csv``.

The split comes only from ``split_csv/1cls.csv`` (columns ``object,split,label,image,mask``; paths relative to
the root; ``label`` is ``normal`` or ``anomaly``). Normal images get defect type ``good`` and anomalies ``bad``,
the names VisA's own conversion uses, so ids match the converted layout. When the class folder holds VisA's
``image_anno.csv`` (columns ``image,label,mask``; label ``normal`` or defect words such as ``"melt, scratch"``),
an anomaly's defect type is taken from it instead: words lower-cased, spaces -> ``_``, several defects joined
by ``_and_`` (``melt_and_scratch``). Masks hold small label values, not 0/255: ``load_mask`` binarises them
(> 0).
"""
from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

from fsad_data.errors import DataError
from fsad_data.layouts.common import Builder, Issues, SampleList, check_classes

NAME = "visa_raw"
SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")


def detect(root: Path) -> bool:
    """True when ``split_csv/1cls.csv`` exists, or some class folder has ``Data/Images``."""
    if (root / SPLIT_CSV).is_file():
        return True
    return any((p / "Data" / "Images").is_dir() for p in root.iterdir() if p.is_dir()) if root.is_dir() else False


def _rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.is_file():
        raise DataError(
            f"VisA split file not found: {csv_path}. The raw VisA layout needs split_csv/1cls.csv from the "
            "VisA download; put it there, or convert the data set to the 1cls layout."
        )
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise DataError(
                f"{csv_path} lacks the column(s) {', '.join(missing)} (found {', '.join(header) or 'none'}). "
                f"Expected the header {','.join(COLUMNS)}."
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def defect_slug(label: str) -> str:
    """``"melt, scratch"`` -> ``"melt_and_scratch"``; empty -> ``"bad"``."""
    parts = [re.sub(r"[^0-9a-z]+", "_", p.strip().lower()).strip("_") for p in label.split(",")]
    parts = [p for p in parts if p]
    return "_and_".join(parts) or "bad"


def _annotations(class_root: Path) -> dict[tuple[str, ...], str]:
    """Defect type by the last two path parts of the image (``("Anomaly", "000.JPG")``), from image_anno.csv."""
    path = class_root / "image_anno.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not {"image", "label"} <= {h.strip() for h in (reader.fieldnames or [])}:
            return {}
        out = {}
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if row["label"].lower() != "normal" and row["image"]:
                out[Path(row["image"]).parts[-2:]] = defect_slug(row["label"])
        return out


def read(root: Path, classes: Iterable[str] | None, issues: Issues) -> SampleList:
    """Read the raw VisA download through its split CSV."""
    csv_path = root / SPLIT_CSV
    rows = _rows(csv_path)
    available = sorted({r["object"] for r in rows if r["object"]})
    wanted = set(check_classes(classes, available, root, NAME))
    builder = Builder(issues)
    annotations = {cls: _annotations(root / cls) for cls in wanted}
    for line, row in enumerate(rows, start=2):
        cls = row["object"]
        if cls not in wanted:
            continue
        split, label = row["split"].lower(), row["label"].lower()
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            issues.problem(
                csv_path,
                f"{csv_path} line {line}: split must be train/test and label normal/anomaly, got "
                f"{row['split']!r}/{row['label']!r}. Fix the row.",
            )
            continue
        image = root / row["image"]
        if not image.is_file():
            issues.problem(
                image,
                f"{csv_path} line {line} names the image {image}, which does not exist. Restore the file or "
                "remove the row.",
            )
            continue
        is_anomaly = label == "anomaly"
        mask = None
        if is_anomaly and row["mask"]:
            mask = root / row["mask"]
            if not mask.is_file():
                mask = None
        builder.add(
            class_name=cls, class_root=root / cls, split=split, label=int(is_anomaly),
            defect_type=annotations[cls].get(image.parts[-2:], "bad") if is_anomaly else "good",
            image_path=image, mask_path=mask,
            mask_hint=f"{root / row['mask']}" if row["mask"] else f"the mask column of {csv_path} line {line}",
        )
    for cls in sorted(wanted):
        builder.class_done(cls, root / cls, f"the rows of {csv_path}")
    return builder.result(NAME)
