"""VisA converted layout (what VisA's own ``prepare_data.py --split-type 1cls`` writes):
``<root>/1cls/<class>/train/good``, ``<class>/test/{good,bad}``, ``<class>/ground_truth/bad/<stem>.png``.

``root`` may be the folder holding ``1cls/`` or the ``1cls/`` folder itself. Masks keep the image stem (no
``_mask`` suffix); a ``<stem>_mask.png`` is accepted too. Masks are binarised on load (> 0), so both the
converted 0/255 masks and raw label values work.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fsad_data.layouts import mvtec
from fsad_data.layouts.common import Issues, SampleList, find_mask, list_images, subdirs

NAME = "visa"
SPLIT_FOLDER = "1cls"


def tree_root(root: Path) -> Path:
    """The folder that holds the class folders."""
    return root / SPLIT_FOLDER if (root / SPLIT_FOLDER).is_dir() else root


def detect(root: Path) -> bool:
    """True for a ``1cls/`` tree, or an MVTec-like tree whose masks carry the image stem without ``_mask``."""
    if (root / SPLIT_FOLDER).is_dir() and mvtec.detect(root / SPLIT_FOLDER):
        return True
    for cdir in mvtec.class_dirs(root):
        for tdir in subdirs(cdir / "test"):
            if tdir.name == "good":
                continue
            gt = cdir / "ground_truth" / tdir.name
            for img in list_images(tdir):
                if find_mask(gt, img.stem, ("{stem}_mask",)) is not None:
                    return False
                if find_mask(gt, img.stem, ("{stem}",)) is not None:
                    return True
    return False


def read(root: Path, classes: Iterable[str] | None, issues: Issues) -> SampleList:
    """Read a converted VisA tree."""
    return mvtec.read_mvtec_like(tree_root(root), classes, issues, NAME, ("{stem}", "{stem}_mask"))
