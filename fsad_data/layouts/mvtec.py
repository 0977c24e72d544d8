"""MVTec-AD layout: ``<root>/<class>/train/good``, ``<class>/test/<good|defect>``,
``<class>/ground_truth/<defect>/<stem>_mask.png``.

``root`` may also be one class folder (it then holds ``train/`` and ``test/`` itself). Only ``train/good`` is
read from ``train/``. A mask named ``<stem>.png`` is accepted too (the converted VisA layout uses that).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fsad_data.layouts.common import (
    Builder,
    Issues,
    SampleList,
    check_classes,
    find_mask,
    list_images,
    subdirs,
)

NAME = "mvtec"


def is_class_dir(path: Path) -> bool:
    """A folder with ``train/`` or ``test/`` inside: one class of an MVTec-like layout."""
    return (path / "train").is_dir() or (path / "test").is_dir()


def class_dirs(root: Path) -> list[Path]:
    """The class folders under ``root`` (or ``[root]`` when root is itself a class folder)."""
    if is_class_dir(root) and not any(is_class_dir(p) for p in subdirs(root)):
        return [root]
    return [p for p in subdirs(root) if is_class_dir(p)]


def detect(root: Path) -> bool:
    """True when ``root`` looks like an MVTec-AD-like tree."""
    return bool(class_dirs(root))


def read_mvtec_like(
    root: Path,
    classes: Iterable[str] | None,
    issues: Issues,
    layout: str,
    mask_patterns: tuple[str, ...],
) -> SampleList:
    """Read any ``train/good`` + ``test/<type>`` + ``ground_truth/<type>`` tree (MVTec-AD, converted VisA)."""
    dirs = {p.name: p for p in class_dirs(root)}
    builder = Builder(issues)
    for cls in check_classes(classes, sorted(dirs), root, layout):
        croot = dirs[cls]
        for img in list_images(croot / "train" / "good"):
            builder.add(class_name=cls, class_root=croot, split="train", label=0, defect_type="good",
                        image_path=img, mask_path=None)
        for tdir in subdirs(croot / "test"):
            normal = tdir.name == "good"
            gt = croot / "ground_truth" / tdir.name
            for img in list_images(tdir):
                mask = None if normal else find_mask(gt, img.stem, mask_patterns)
                hint = " or ".join(f"{gt / p.format(stem=img.stem)}.png" for p in mask_patterns)
                builder.add(class_name=cls, class_root=croot, split="test", label=0 if normal else 1,
                            defect_type=tdir.name, image_path=img, mask_path=mask, mask_hint=hint)
        builder.class_done(cls, croot, "train/good and test/*")
    return builder.result(layout)


def read(root: Path, classes: Iterable[str] | None, issues: Issues) -> SampleList:
    """Read an MVTec-AD tree."""
    return read_mvtec_like(root, classes, issues, NAME, ("{stem}_mask", "{stem}"))
