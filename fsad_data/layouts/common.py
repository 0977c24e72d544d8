"""What every layout reader shares: the result list with its skips, the on_error policy, file helpers.

Bad input policy: a reader reports each problem (missing mask, empty image, class without images, ...)
to an ``Issues`` collector. With ``on_error="raise"`` the first problem raises a DataError naming the path
and the fix; with ``on_error="skip"`` the sample (or class) is left out, the problem is recorded as a
``Skip`` in ``SampleList.skipped`` and logged on the ``fsad_data`` logger. Problems with the arguments
themselves (missing root, unknown layout, unknown class name) always raise.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fsad_data.errors import SKIP_HINT, DataError
from fsad_data.images import is_image_file
from fsad_data.samples import Sample, make_id

log = logging.getLogger("fsad_data")
ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class Skip:
    """One input left out under on_error="skip": the path and the full message (what is wrong, what to do)."""

    path: Path
    message: str


class SampleList(list):
    """A plain ``list[Sample]`` (sorted by id) that also carries the skips and the layout that was read."""

    def __init__(self, samples: Iterable[Sample] = (), skipped: Iterable[Skip] = (), layout: str = "") -> None:
        super().__init__(samples)
        self.skipped: list[Skip] = list(skipped)
        self.layout = layout


class Issues:
    """Collects problems under the chosen policy (see module docstring)."""

    def __init__(self, on_error: str = "raise") -> None:
        if on_error not in ON_ERROR:
            raise DataError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}.")
        self.on_error = on_error
        self.skipped: list[Skip] = []

    def problem(self, path: Path, message: str) -> None:
        """Raise (policy "raise") or record a skip (policy "skip")."""
        if self.on_error == "raise":
            raise DataError(message)
        log.warning("skipped %s: %s", path, message)
        self.skipped.append(Skip(Path(path), message))


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name; hidden files and other suffixes ignored)."""
    if not folder.is_dir():
        return []
    files = (p for p in folder.iterdir() if (p.is_file() or p.is_symlink()) and is_image_file(p))
    return sorted(files, key=lambda p: p.name)


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def find_mask(folder: Path, stem: str, patterns: tuple[str, ...] = ("{stem}_mask", "{stem}")) -> Path | None:
    """The first existing mask ``folder/<pattern><suffix>`` for the stem (PNG first, then other image types)."""
    for pattern in patterns:
        base = pattern.format(stem=stem)
        for suffix in (".png", ".PNG", ".bmp", ".tif", ".tiff", ".jpg", ".JPG", ".jpeg"):
            cand = folder / f"{base}{suffix}"
            if cand.is_file():
                return cand
    return None


def relative_name(path: Path, class_root: Path) -> str:
    """POSIX path of ``path`` relative to the class root: the machine-independent ``file_name``."""
    try:
        return path.relative_to(class_root).as_posix()
    except ValueError:
        return path.name


def _file_problem(image_path: Path, label: int, mask_path: Path | None, mask_required: bool, mask_hint: str
                  ) -> tuple[Path, str] | None:
    """(the file, what is wrong with it and what to do) for an image or mask a sample cannot use: unreadable,
    empty, or a required mask missing; None for usable files. Cheap checks only (no file is decoded)."""
    try:
        size = image_path.stat().st_size
    except OSError as exc:
        why = (f"cannot read image {image_path}: {exc.strerror or exc}. Check that the file (or the link) exists "
               f"and is readable, or skip it with {SKIP_HINT}.")
        return image_path, why
    if size == 0:
        why = (f"image is empty (0 bytes): {image_path}. Re-download or re-export it, or delete it (or skip it "
               f"with {SKIP_HINT}).")
        return image_path, why
    if label == 1 and mask_path is None and mask_required:
        where = f" (looked for {mask_hint})" if mask_hint else ""
        why = (f"no mask for anomalous image {image_path}{where}. Add the ground-truth mask, or remove the image "
               f"(or skip it with {SKIP_HINT}).")
        return image_path, why
    if mask_path is not None and mask_path.stat().st_size == 0:
        why = (f"mask is empty (0 bytes): {mask_path} (for {image_path}). Re-export the mask, or skip it with "
               f"{SKIP_HINT}.")
        return mask_path, why
    return None


class Builder:
    """Builds Samples for one read, checking what is cheap to check eagerly (empty files, duplicates)."""

    def __init__(self, issues: Issues) -> None:
        self.issues = issues
        self.samples: dict[str, Sample] = {}

    def add(
        self,
        *,
        class_name: str,
        class_root: Path,
        split: str,
        label: int,
        defect_type: str,
        image_path: Path,
        mask_path: Path | None,
        mask_required: bool = True,
        mask_hint: str = "",
    ) -> Sample | None:
        """Add one sample, or report why it cannot be used (then return None)."""
        problem = _file_problem(image_path, label, mask_path, mask_required, mask_hint)
        if problem is not None:
            self.issues.problem(*problem)
            return None
        file_name = relative_name(image_path, class_root)
        sid = make_id(class_name, split, defect_type, Path(file_name).stem)
        if sid in self.samples:
            other = self.samples[sid].image_path
            self.issues.problem(
                image_path,
                f"two images give the same sample id {sid!r}: {other} and {image_path}. Rename one so that "
                "file stems are unique within a folder.",
            )
            return None
        sample = Sample(
            id=sid, class_name=class_name, split=split, label=int(label), defect_type=defect_type,
            image_path=image_path, mask_path=mask_path if label == 1 else None, file_name=file_name,
        )
        self.samples[sid] = sample
        return sample

    def class_done(self, class_name: str, class_root: Path, looked_in: str) -> None:
        """Report a class that gave no usable image (the class is then left out)."""
        if not any(s.class_name == class_name for s in self.samples.values()):
            self.issues.problem(
                class_root,
                f"class folder {class_root} has no images (looked in {looked_in}). Put the images there, "
                "remove the folder, or choose other classes.",
            )

    def result(self, layout: str) -> SampleList:
        """Samples sorted by id, with the skips."""
        return SampleList(sorted(self.samples.values(), key=lambda s: s.id), self.issues.skipped, layout)


def check_classes(requested: Iterable[str] | None, available: list[str], root: Path, layout: str) -> list[str]:
    """The classes to read: all available ones, or the requested ones (each must exist)."""
    if requested is None:
        return available
    wanted = [requested] if isinstance(requested, str) else list(requested)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"class {', '.join(missing)} not found in {root} ({layout} layout). Available: "
            f"{', '.join(available) or 'none'}. Check the spelling or the data set root."
        )
    return [c for c in available if c in wanted]
