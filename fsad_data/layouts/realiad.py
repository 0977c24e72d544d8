"""Real-IAD layout: per-class JSON split files plus an image tree, as the Real-IAD download ships them::

    <root>/realiad_jsons/realiad_jsons/<class>.json     (or <root>/realiad_jsons/<class>.json)
    <root>/realiad_256/<class>/OK/S0001/<class>_0001_OK_C1_<time>.jpg
    <root>/realiad_256/<class>/NG/<code>/S0002/<..>_NG_C1_<time>.jpg  and  <..>_mask.png

Each JSON holds ``{"meta": {"prefix": "", "normal_class": "OK", ...}, "train": [entry...], "test": [entry...]}``
with entries ``{"category", "anomaly_class", "image_path", "mask_path"}``; paths are relative to the class image
folder (``realiad_<res>/<class>/``, after the optional ``meta.prefix``). The image tree used is the first of
``realiad_256``, ``realiad_512``, ``realiad_1024``, ``realiad_raw`` that exists (FineGrainedAD works at 240 px,
so the smallest is enough), else ``root`` itself. ``anomaly_class`` equal to ``meta.normal_class`` (default "OK")
is normal; defect codes become words (``AK`` -> ``pit``, ... see ``DEFECT_CODES``; unknown codes lower-cased).
An anomalous entry with ``mask_path: null`` is kept without a mask (image-level only); a mask path that does
not exist is a bad input. ``file_name`` is the entry's ``image_path``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fsad_data.errors import DataError
from fsad_data.layouts.common import Builder, Issues, SampleList, check_classes

NAME = "realiad"
JSON_DIRS = (Path("realiad_jsons") / "realiad_jsons", Path("realiad_jsons"))
IMAGE_DIRS = ("realiad_256", "realiad_512", "realiad_1024", "realiad_raw")
DEFECT_CODES = {
    "AK": "pit", "BX": "deformation", "CH": "abrasion", "HS": "scratch", "PS": "damage",
    "QS": "missing_parts", "YW": "foreign_objects", "ZW": "contamination",
}


def json_dir(root: Path) -> Path | None:
    """The folder holding the per-class JSON files, or None."""
    for rel in JSON_DIRS:
        cand = root / rel
        if cand.is_dir() and any(cand.glob("*.json")):
            return cand
    return None


def image_dir(root: Path) -> Path:
    """The image tree to read (smallest resolution present)."""
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return root


def detect(root: Path) -> bool:
    """True when a Real-IAD JSON folder exists under ``root``."""
    return json_dir(root) is not None


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the Real-IAD split file {path}: {exc}. Re-download it.") from exc
    if not isinstance(data, dict) or not any(isinstance(data.get(k), list) for k in ("train", "test")):
        raise DataError(
            f"{path} is not a Real-IAD split file: expected an object with 'train' and/or 'test' lists of "
            "{category, anomaly_class, image_path, mask_path} entries."
        )
    return data


def read(root: Path, classes: Iterable[str] | None, issues: Issues) -> SampleList:
    """Read Real-IAD through its JSON split files."""
    jdir = json_dir(root)
    if jdir is None:
        raise DataError(
            f"no Real-IAD JSON folder in {root}: expected {' or '.join(str(root / p) for p in JSON_DIRS)} "
            "holding <class>.json. Point root at the Real-IAD folder."
        )
    files = {p.stem: p for p in sorted(jdir.glob("*.json"))}
    images = image_dir(root)
    builder = Builder(issues)
    for cls in check_classes(classes, sorted(files), root, NAME):
        data = _load(files[cls])
        meta = data.get("meta") or {}
        prefix = str(meta.get("prefix") or "")
        normal_class = str(meta.get("normal_class") or "OK")
        bases = list(dict.fromkeys([images / cls / prefix, images / prefix]))
        for split in ("train", "test"):
            for n, entry in enumerate(data.get(split) or []):
                rel = str(entry.get("image_path") or "")
                where = f"{files[cls]} ({split}[{n}])"
                if not rel:
                    issues.problem(files[cls], f"{where} has no image_path. Fix or remove the entry.")
                    continue
                found = next((b for b in bases if (b / rel).is_file()), None)
                if found is None:
                    issues.problem(
                        bases[0] / rel,
                        f"{where} names {rel!r}, found under none of {', '.join(str(b) for b in bases)}. "
                        f"Check that the images are unpacked under {images}.",
                    )
                    continue
                code = str(entry.get("anomaly_class") or normal_class)
                is_anomaly = code != normal_class
                mask_rel = entry.get("mask_path")
                mask = None
                if is_anomaly and mask_rel:
                    mask = found / str(mask_rel)
                    if not mask.is_file():
                        issues.problem(
                            mask,
                            f"{where} names the mask {mask}, which does not exist. Restore it or set its "
                            "mask_path to null.",
                        )
                        continue
                builder.add(
                    class_name=cls, class_root=images / cls, split=split, label=int(is_anomaly),
                    defect_type=DEFECT_CODES.get(code, code.lower()) if is_anomaly else "good",
                    image_path=found / rel, mask_path=mask, mask_required=False,
                )
        builder.class_done(cls, images / cls, f"the entries of {files[cls]}")
    return builder.result(NAME)
