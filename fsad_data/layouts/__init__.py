"""One reader per data set layout, and ``detect_layout`` for ``layout="auto"``.

Each reader module has ``NAME``, ``detect(root) -> bool`` and ``read(root, classes, issues) -> SampleList``.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from fsad_data.errors import DataError
from fsad_data.layouts import folder, mvtec, realiad, visa, visa_raw

READERS: dict[str, ModuleType] = {m.NAME: m for m in (mvtec, visa, visa_raw, realiad, folder)}
DESCRIPTIONS = {
    "mvtec": "<class>/train/good, <class>/test/<type>, <class>/ground_truth/<type>/<stem>_mask.png",
    "visa": "1cls/<class>/train/good, test/{good,bad}, ground_truth/bad/<stem>.png",
    "visa_raw": "<class>/Data/Images/{Normal,Anomaly}, <class>/Data/Masks/Anomaly, split_csv/1cls.csv",
    "realiad": "realiad_jsons/realiad_jsons/<class>.json + realiad_256/<class>/{OK,NG}/...",
    "folder": "<class>/normal, <class>/anomaly, optional <class>/masks (or train/normal + test/{normal,anomaly})",
}
# Most specific first: a folder tree with train/normal would also pass the looser MVTec test.
DETECT_ORDER = ("realiad", "visa_raw", "folder", "visa", "mvtec")
LAYOUTS = ("auto", *READERS)


def accepted() -> str:
    """One line per accepted layout, for error messages and --help."""
    return "; ".join(f"{name}: {DESCRIPTIONS[name]}" for name in READERS)


def detect_layout(root: Path) -> str:
    """The layout name of the tree at ``root``; DataError listing the accepted layouts when none fits."""
    for name in DETECT_ORDER:
        if READERS[name].detect(root):
            return name
    raise DataError(
        f"cannot tell the data set layout of {root}. Accepted layouts: {accepted()}. Rearrange the folder or "
        "pass the layout explicitly."
    )
