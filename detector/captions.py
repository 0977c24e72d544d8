"""MFSC caption records for the detector: one class's row of the ``classes`` configuration.

The detector reads captions only through the caption dataset (schema_version 1, docs/CONTRACTS.md), never
through ``mfsc_builder``.  Three sources give the same row:

- a local ``mfsc build`` output folder ``DIR`` (``DIR/classes`` saved with ``save_to_disk``; ``DIR/classes``
  itself is accepted too);
- a ``mfsc publish --dry-run`` folder (parquet + card, ``load_dataset(DIR, "classes")``);
- a Hugging Face Hub dataset id (``load_dataset(ID, "classes")``; needs the network or the HF cache).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import DetectorError

if TYPE_CHECKING:  # datasets (heavy) is imported where a caption dataset is opened
    from datasets import Dataset, DatasetDict

SCHEMA_VERSION = 1
REQUIRED_FIELDS = (
    "schema_version", "class_name", "object_name", "image_view", "foreground_view", "components", "caption",
    "defect_states", "texts",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _single_split(ds: Dataset | DatasetDict, where: str) -> Dataset:
    """A Dataset from a Dataset or a one-split DatasetDict (the ``classes`` config has one ``train`` split)."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if "train" in ds:
            return ds["train"]
        if len(ds) == 1:
            return next(iter(ds.values()))
        raise DetectorError(f"{where}: the classes data has splits {list(ds)}, expected one; rebuild with `mfsc build`")
    return ds


def _open_classes(captions: str | Path) -> tuple[Dataset, str]:
    """(classes Dataset, a description of where it came from) for a folder or a Hub id."""
    import datasets

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
            try:
                return _single_split(datasets.load_dataset(str(p), "classes"), str(p)), str(p)
            except Exception as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DetectorError(
                    f"cannot load the 'classes' configuration from {p} ({first}); pass a `mfsc build` output folder "
                    "or a `mfsc publish --dry-run` folder"
                ) from e
        raise DetectorError(
            f"{p} is neither a `mfsc build` output folder (with classes/) nor a `mfsc publish --dry-run` folder; "
            "run `mfsc build` first"
        )
    text = str(captions)
    if p.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or not _HUB_ID.match(text):
        raise DetectorError(f"caption dataset {text} not found; pass a `mfsc build` output folder or a Hub dataset id")
    try:
        return _single_split(datasets.load_dataset(text, "classes"), text), f"hub:{text}"
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DetectorError(
            f"cannot load caption dataset '{text}' from the Hugging Face Hub ({type(e).__name__}: {first}); check the "
            "id and the network (HF_HUB_OFFLINE), or pass a local `mfsc build` folder"
        ) from e


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
    from detector.validate import check_record_texts

    check_record_texts(row["texts"], where, class_name)
    return row


def _open_images(captions: str | Path) -> tuple[Any, str]:
    """(images DatasetDict, where) for a `mfsc build` folder (DIR/images), a publish folder or a Hub id."""
    import datasets

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
    part = part.select_columns(["id", "class_name", "regions", "width", "height"])
    return {r["id"]: {"regions": list(r["regions"]), "width": int(r["width"]), "height": int(r["height"])}
            for r in part if r["class_name"] == class_name}
