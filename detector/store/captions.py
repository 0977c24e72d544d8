"""MFSC caption records for the detector: one class's row of the ``classes`` configuration.

The detector reads captions only through the caption dataset (schema_version 1, docs/CONTRACTS.md), never
through ``mfsc_builder``.  Three sources give the same row:

- a local ``mfsc build`` output folder ``DIR`` (``DIR/classes`` saved with ``save_to_disk``; ``DIR/classes``
  itself is accepted too);
- a ``mfsc publish --dry-run`` folder (parquet + card, ``load_dataset(DIR, "classes")``);
- a Hugging Face Hub dataset id (``load_dataset(ID, "classes")``; needs the network or the HF cache).

The detector reads the images from ``--data``, never from the caption dataset (``--images reference`` keeps no
pixels; ``embed`` keeps them, unused here), so the files may have been edited since the captions were built.
Every ``images`` row records its source file's size and SHA-256 (``image_file_size``, ``image_sha256``,
``mask_*``); ``changed_files`` compares the files read with them: the size first (a stat), the SHA-256 only when
the sizes match (the dataset records no mtime), and only for the files actually used. What a change means:

- ``detector train`` (``check_shot_files``): a shot that differs from its row is an error naming it. The class
  record the prompts are built from describes the class as captioned; training on other pixels under it would
  be silent drift. Fix: rebuild the captions from these files (``mfsc build ... --force``) or restore them.
  Only a local caption folder is checked (for a Hub id the check would download its ``images`` configuration).
- ``detector eval`` (``drop_changed``): the test images' captions serve ``naming_accuracy`` only; a changed test
  image or mask is left out of it with one warning line, and every other metric is computed as before. Every
  test file with a row is checked once after scoring (its bytes are still cached): a 2.7 MB PNG hashes in about
  4 ms, a tenth of decoding it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import DetectorError
from detector.store.schemas import check_record_texts
from fsad_data.digest import file_sha256

if TYPE_CHECKING:  # datasets (heavy) is imported where a caption dataset is opened
    from datasets import Dataset, DatasetDict

    from fsad_data import Sample

SCHEMA_VERSION = 1
REQUIRED_FIELDS = (
    "schema_version", "class_name", "object_name", "image_view", "foreground_view", "components", "caption",
    "defect_states", "texts",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _single_split(ds: Dataset | DatasetDict, where: str) -> Dataset:
    """A Dataset from a Dataset or a one-split DatasetDict (the ``classes`` config has one ``train`` split)."""
    import datasets  # datasets (~1 s): only when captions are read

    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            return ds["train"]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise DetectorError(f"{where}: the classes data has splits {list(ds)}, expected one; rebuild with `mfsc build`")
    return ds


def _open_classes(captions: str | Path) -> tuple[Dataset, str]:
    """(classes Dataset, a description of where it came from) for a folder or a Hub id."""
    import datasets  # datasets (~1 s): only when captions are read

    p = Path(captions).expanduser()
    if p.is_dir():
        saved = None
        if (p / "classes").is_dir() and ((p / "classes" / "dataset_info.json").is_file() or
                                         (p / "classes" / "state.json").is_file()):
            saved = p / "classes"
        elif (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
            saved = p
        if saved is not None:
            try:
                return _single_split(datasets.load_from_disk(str(saved)), str(saved)), str(saved)
            except DetectorError:
                raise
            except Exception as e:
                raise DetectorError(
                    f"cannot read the caption dataset {saved} ({type(e).__name__}: {e}); rebuild it with `mfsc build`"
                ) from e
        if (p / "README.md").is_file() or (p / "data").is_dir():
            return _load_classes_config(str(p), f"the 'classes' configuration from {p}",
                                        "pass a `mfsc build` output folder or a `mfsc publish --dry-run` folder"), str(p)
        raise DetectorError(
            f"{p} is neither a `mfsc build` output folder (with classes/) nor a `mfsc publish --dry-run` folder; "
            "run `mfsc build` first"
        )
    text = str(captions)
    if p.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or not _HUB_ID.match(text):
        raise DetectorError(f"caption dataset {text} not found; pass a `mfsc build` output folder or a Hub dataset id")
    return _load_classes_config(text, f"caption dataset '{text}' from the Hugging Face Hub", "check the id and the "
                                "network (HF_HUB_OFFLINE), or pass a local `mfsc build` folder"), f"hub:{text}"


def _load_classes_config(source: str, what: str, fix: str) -> Dataset:
    """The ``classes`` configuration of a published dataset (a folder with its card, or a Hub id); a failure is
    one line naming ``what`` with the library's first line of error and ``fix``."""
    import datasets  # datasets (~1 s): only when captions are read

    try:
        return _single_split(datasets.load_dataset(source, "classes"), source)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DetectorError(f"cannot load {what} ({type(e).__name__}: {first}); {fix}") from e


def load_class_record(captions: str | Path, class_name: str) -> dict[str, Any]:
    """The ``classes`` row of ``class_name`` as a plain dict, after checking schema_version == 1."""
    ds, where = _open_classes(captions)
    columns = set(ds.column_names)
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise DetectorError(
            f"{where} is not an MFSC classes dataset (missing columns {missing}); rebuild it with `mfsc build`"
        )
    names = list(ds["class_name"])
    if class_name not in names:
        present = ", ".join(sorted(set(names))) or "none"
        raise DetectorError(f"class '{class_name}' is not in the caption dataset {where} (classes: {present})")
    if names.count(class_name) > 1:
        raise DetectorError(f"class '{class_name}' has {names.count(class_name)} rows in {where}; rebuild the dataset")
    row = dict(ds[names.index(class_name)])
    version = row.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # repr: "1" (text) must not read as version 1
        kind = "" if isinstance(version, int) and not isinstance(version, bool) else f" ({type(version).__name__})"
        raise DetectorError(
            f"{where}: class '{class_name}' has schema_version {version!r}{kind}; this detector reads the integer "
            f"{SCHEMA_VERSION}; rebuild the captions with this version of `mfsc build`"
        )
    if not row.get("texts"):
        raise DetectorError(f"{where}: class '{class_name}' has no texts; rebuild the captions with `mfsc build`")

    check_record_texts(row["texts"], where, class_name)
    return row


def _open_images(captions: str | Path) -> tuple[Any, str]:
    """(images DatasetDict, where) for a `mfsc build` folder (DIR/images), a publish folder or a Hub id."""
    import datasets  # datasets (~1 s): only when captions are read

    p = Path(captions).expanduser()
    if p.is_dir():
        if (p / "images").is_dir():
            return datasets.load_from_disk(str(p / "images")), str(p / "images")
        return datasets.load_dataset(str(p), "images"), str(p)
    return datasets.load_dataset(str(captions), "images"), f"hub:{captions}"


def load_image_regions(captions: str | Path, class_name: str, split: str = "test") -> dict[str, dict[str, Any]]:
    """Per image id of a class's split: its caption regions (kind, name, box in original pixels, area) and
    size, from the ``images`` configuration (the image bytes are not decoded). Named-defect evaluation takes
    the true component of a defect from these."""
    try:
        ds, where = _open_images(captions)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DetectorError(f"cannot read the images of the caption dataset {captions} ({first}); pass the "
                            "`mfsc build` folder of these test images with --captions") from e
    if split not in ds:
        raise DetectorError(f"{where} has no {split!r} split (splits: {', '.join(ds)}); rebuild with `mfsc build`")
    part = ds[split]
    missing = [c for c in ("id", "class_name", "regions", "width", "height") if c not in part.column_names]
    if missing:
        raise DetectorError(f"{where} is not an MFSC images dataset (missing columns {missing}); rebuild it")
    files = [c for c in FILE_COLUMNS if c in part.column_names]
    files = files if len(files) == len(FILE_COLUMNS) else []  # a dataset made before these columns: no check
    part = part.select_columns(["id", "class_name", "regions", "width", "height", *files])
    return {r["id"]: {"regions": list(r["regions"]), "width": int(r["width"]), "height": int(r["height"]),
                      **({"files": {c: r[c] for c in files}} if files else {})}
            for r in part if r["class_name"] == class_name}


# ---- are the files read those the captions were built from? ----------------------------------------------

FILE_COLUMNS = ("image_file", "image_file_size", "image_sha256", "mask_file", "mask_file_size", "mask_sha256")
_NAMED = 3  # a changed-files line names this many, then counts the rest


def _differs(path: str | Path | None, size: Any, sha256: Any) -> bool:
    """Whether the file at ``path`` is not the recorded one: the size first, the SHA-256 only when the sizes match.
    A recorded file that is gone from the sample (a mask removed) differs; an unreadable file does not: the
    reader names it where it is read."""
    if path is None:
        return True
    try:
        if os.stat(path).st_size != int(size):
            return True
        return file_sha256(path) != sha256
    except (OSError, TypeError, ValueError):  # unreadable, or no size recorded
        return False


def changed_files(samples: Sequence[Sample], rows: dict[str, dict[str, Any]]) -> tuple[list[tuple[Sample, str]], int]:
    """The samples whose image or mask differs from its caption row (with the name of the changed file, relative to
    the data set root as the row records it), and how many samples had a row to compare with. ``rows``: per
    sample id, the ``FILE_COLUMNS`` of its row (a row without a recorded image file is not checked)."""
    changed: list[tuple[Sample, str]] = []
    checked = 0
    for s in samples:
        row = rows.get(s.id)
        if not row or not row.get("image_sha256"):
            continue
        checked += 1
        if _differs(s.image_path, row.get("image_file_size"), row["image_sha256"]):
            changed.append((s, str(row.get("image_file") or s.file_name)))
        elif (_differs(s.mask_path, row.get("mask_file_size"), row["mask_sha256"]) if row.get("mask_sha256")
              else s.mask_path is not None):  # a mask changed, removed, or added
            changed.append((s, str(row.get("mask_file") or s.mask_path)))
    return changed, checked


def changed_line(changed: Sequence[tuple[Sample, str]], checked: int, what: str, where: str) -> str:
    """``2 of 4 shot images changed since the captions in DIR were built (a.png, b.png)``: up to 3 names, then a
    count."""
    names = [name for _, name in changed]
    more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    return (f"{len(names)} of {checked} {what} changed since the captions in {where} were built "
            f"({', '.join(names[:_NAMED])}{more})")


def _local_file_rows(captions: str | Path, class_name: str, split: str, ids: set[str]) -> dict[str, dict[str, Any]]:
    """``FILE_COLUMNS`` per sample id (of ``ids``) of a local caption folder's split; empty for a Hub id, a folder
    without an ``images`` dataset or one made before these columns (nothing to compare with)."""
    p = Path(captions).expanduser()
    if not ((p / "images").is_dir() or ((p / "README.md").is_file() and (p / "data" / "images").is_dir())):
        return {}  # a Hub id, or a folder that is no build or publish folder (the classes reader says so)
    try:
        ds, _ = _open_images(p)
        part = ds[split]
    except Exception:  # noqa: BLE001 - no images dataset to compare with; the classes reader reports a bad folder
        return {}
    if any(c not in part.column_names for c in ("id", "class_name", *FILE_COLUMNS)):
        return {}
    table = part.select_columns(["id", "class_name", *FILE_COLUMNS]).to_dict()
    return {i: {c: table[c][n] for c in FILE_COLUMNS} for n, i in enumerate(table["id"])
            if i in ids and table["class_name"][n] == class_name}


def check_shot_files(captions: str | Path, class_name: str, shots: Sequence[Sample]) -> None:
    """``detector train``: refuse shots that differ from the files their caption rows were built from (the
    module's docstring says why), naming them in one line with what to do."""
    rows = _local_file_rows(captions, class_name, "train", {s.id for s in shots})
    changed, checked = changed_files(shots, rows)
    if changed:
        raise DetectorError(
            f"{changed_line(changed, checked, 'shot images', str(captions))}: the captions may not describe them; "
            "rebuild the captions from these files (`mfsc build DATA --out DIR --force`) or restore the files")


def drop_changed(by_id: dict[str, dict[str, Any]], samples: Sequence[Sample], where: str) -> str:
    """``detector eval``: remove from ``by_id`` (``load_image_regions``) the test images whose image or mask differs
    from the files captioned, so that naming_accuracy leaves them out; the warning line saying so, or ""."""
    rows = {i: r["files"] for i, r in by_id.items() if r.get("files")}
    changed, checked = changed_files([s for s in samples if s.id in rows], rows)
    for s, _ in changed:
        by_id.pop(s.id, None)
    if not changed:
        return ""
    return (f"{changed_line(changed, checked, 'test images', where)}: left out of naming_accuracy; rebuild the "
            "captions from these files (`mfsc build DATA --out DIR --force`) to count them")
