"""The write stage: ``out/images`` and ``out/classes`` from the stored records, replaced together or not at all.

Why from stored records: an interrupted-and-resumed build and an uninterrupted one then write identical
bytes. The datasets are saved in a scratch folder inside ``out`` (``.write-*`` / ``.merge-*``) and swapped
into place with ``fsad_data.atomic.swap_folder`` only when both are complete.
"""
from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from fsad_data import DataError, load_mask, load_rgb
from fsad_data.atomic import swap_folder
from mfsc_builder.errors import BuildError
from mfsc_builder.records import CLASSES_FEATURES, IMAGES_FEATURES, ClassRecord, ImageRecord

SPLIT_ORDER = ("train", "test")


def png(array: np.ndarray) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or gray (H, W) uint8 array (deterministic for the same pixels)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _image_rows(records: list[dict]) -> Iterator[dict]:
    """``images`` rows with the image and mask re-encoded as PNG bytes (RGB, 0/255 masks)."""
    for d in records:
        rec = ImageRecord.from_dict(d)
        image = load_rgb(rec.image_path)
        mask = None
        if rec.mask_path:
            m = load_mask(rec.mask_path, size=(image.shape[1], image.shape[0]), image_path=rec.image_path)
            mask = png(m.astype(np.uint8) * 255)
        yield rec.to_row(image=png(image), mask=mask)


def write_datasets(out: Path, image_records: Mapping[str, list[dict]], class_records: list[dict]) -> None:
    """Write ``out/images`` (DatasetDict of the splits present) and ``out/classes`` atomically."""
    import datasets

    out = Path(out)
    with staged_datasets(out, ".write-", "datasets") as tmp:
        splits = {}
        for split in sorted(image_records, key=split_key):
            recs = image_records[split]
            if not recs:
                continue
            try:
                splits[split] = datasets.Dataset.from_generator(
                    _image_rows, features=IMAGES_FEATURES, gen_kwargs={"records": recs},
                    cache_dir=str(tmp / "cache" / split), split=datasets.NamedSplit(split),
                )
            except Exception as exc:  # datasets wraps errors of the generator: show the user's one
                cause: BaseException | None = exc
                while cause is not None and not isinstance(cause, DataError | BuildError):
                    cause = cause.__cause__
                if cause is not None:
                    raise cause from None
                raise
        if not splits:
            raise BuildError(f"nothing to write to {out}: no image was captioned (see the warnings above)")
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "images"))
        rows = [ClassRecord.from_dict(c).to_row() for c in class_records]
        datasets.Dataset.from_list(rows, features=CLASSES_FEATURES).save_to_disk(str(tmp / "classes"))
        del splits


def split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def group_by_split(records: list[dict]) -> dict[str, list[dict]]:
    """Records per split (train, test, then others), each sorted by id: the datasets' row order."""
    out: dict[str, list[dict]] = {}
    for d in sorted(records, key=lambda r: r["id"]):
        out.setdefault(d["split"], []).append(d)
    return {k: out[k] for k in sorted(out, key=split_key)}


@contextlib.contextmanager
def staged_datasets(out: Path, prefix: str, what: str) -> Iterator[Path]:
    """A scratch folder inside ``out`` where ``images`` and ``classes`` are saved; on success both replace
    the published ones, on any failure nothing published changes. Library progress bars are off meanwhile."""
    import datasets

    out.mkdir(parents=True, exist_ok=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield tmp
        swap_folder(tmp / "images", out / "images")
        swap_folder(tmp / "classes", out / "classes")
    except OSError as exc:
        raise BuildError(f"could not write the {what} under {out}: {exc}; check free space, then rerun "
                         "(finished stages and earlier outputs are kept)") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()
