"""Generic folder layout, for a user's own images. One class per folder (``root`` itself, or each sub-folder)::

    <class>/normal/*.png            normal images
    <class>/anomaly/*.png           anomalous images (or anomaly/<defect_type>/*.png)
    <class>/masks/<stem>_mask.png   optional defect masks (or masks/<stem>.png, or masks/<defect_type>/...)

or, with an explicit split::

    <class>/train/normal/  <class>/test/normal/  <class>/test/anomaly/  [<class>/masks/]

Split rule for the first form (no train/test folders): the normal images sorted by file name alternate
train, test, train, test, ... (positions 0, 2, 4... are training images: the shot pool; the others are
normal test images), so a test set always holds normal and anomalous images and the rule is the same on
every machine. Use the second form to choose the split yourself. Anomalies flat in ``anomaly/`` get the
defect type ``anomaly``.

Masks: without a ``masks/`` folder the anomalies have no mask (image-level evaluation only); with one, every
anomalous image needs its mask (else a bad input, or a skip under on_error="skip").
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

NAME = "folder"


def _is_class(path: Path) -> bool:
    return (path / "normal").is_dir() or (path / "train" / "normal").is_dir()


def class_dirs(root: Path) -> list[Path]:
    """``[root]`` when root is itself a class folder, else its class sub-folders."""
    if _is_class(root):
        return [root]
    return [p for p in subdirs(root) if _is_class(p)]


def detect(root: Path) -> bool:
    """True when root (or a sub-folder) has ``normal/`` or ``train/normal/``."""
    return bool(class_dirs(root))


def _anomalies(folder: Path) -> list[tuple[str, Path]]:
    """(defect_type, image) for ``anomaly/*`` and ``anomaly/<defect>/*``."""
    out = [("anomaly", p) for p in list_images(folder)]
    for d in subdirs(folder):
        out += [(d.name, p) for p in list_images(d)]
    return out


def read(root: Path, classes: Iterable[str] | None, issues: Issues) -> SampleList:
    """Read a generic folder tree (see the module docstring for the convention)."""
    dirs = {p.name: p for p in class_dirs(root)}
    builder = Builder(issues)
    for cls in check_classes(classes, sorted(dirs), root, NAME):
        croot = dirs[cls]
        masks = croot / "masks"
        if (croot / "train" / "normal").is_dir():
            normals = [("train", p) for p in list_images(croot / "train" / "normal")]
            normals += [("test", p) for p in list_images(croot / "test" / "normal")]
            anomalies = _anomalies(croot / "test" / "anomaly")
            looked = "train/normal, test/normal and test/anomaly"
        else:
            pool = list_images(croot / "normal")
            normals = [("train" if i % 2 == 0 else "test", p) for i, p in enumerate(pool)]
            anomalies = _anomalies(croot / "anomaly")
            looked = "normal/ and anomaly/"
        for split, img in normals:
            builder.add(class_name=cls, class_root=croot, split=split, label=0, defect_type="good",
                        image_path=img, mask_path=None)
        for defect, img in anomalies:
            mask = None
            hint = ""
            if masks.is_dir():
                mask = find_mask(masks, img.stem) or find_mask(masks / defect, img.stem)
                hint = f"{masks / img.stem}_mask.png or {masks / img.stem}.png"
            builder.add(class_name=cls, class_root=croot, split="test", label=1, defect_type=defect,
                        image_path=img, mask_path=mask, mask_required=masks.is_dir(), mask_hint=hint)
        builder.class_done(cls, croot, looked)
    return builder.result(NAME)
