"""The write stage: ``out/images`` and ``out/classes`` from the stored records, replaced together or not at all.

Why from stored records: an interrupted-and-resumed build and an uninterrupted one then write identical
bytes. What a row keeps of its image and mask files is decided by ``image_files``; the files are read, hashed
and (when they must be) encoded by a few threads while ``datasets`` writes the rows in order. The datasets are
saved in a scratch folder inside ``out`` (``.write-*`` / ``.merge-*``) and swapped into place with
``fsad_data.atomic.swap_folder`` only when both are complete.
"""
from __future__ import annotations

import contextlib
import itertools
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from fsad_data import DataError
from fsad_data.atomic import swap_folder
from mfsc_builder.errors import BuildError
from mfsc_builder.image_files import stored_image, stored_mask
from mfsc_builder.records import CLASSES_FEATURES, IMAGES_FEATURES, ClassRecord, ImageRecord

SPLIT_ORDER = ("train", "test")
WRITER_BATCH_ROWS = 32  # rows datasets holds before writing: 32 inspection images stay well under 1 GB


def _row(d: dict, source: str, images: str) -> dict:
    """One ``images`` row: the record and what is kept of its image and mask (``image_files``)."""
    rec = ImageRecord.from_dict(d)
    image = stored_image(rec.image_path, source, images)
    mask = (stored_mask(rec.mask_path, rec.image_path, (rec.width, rec.height), source, images)
            if rec.mask_path else None)
    return rec.to_row(image=image, mask=mask)


def _image_rows(records: list[dict], source: str, images: str, workers: int) -> Iterator[dict]:
    """The rows in record order, read and (where needed) encoded by ``workers`` threads a few rows ahead:
    Pillow's encoder and hashlib release the GIL, and at most ``4 * workers`` rows wait in memory."""
    if workers <= 1:
        yield from (_row(d, source, images) for d in records)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mfsc-write") as pool:
        ahead: deque[Future[dict]] = deque()
        todo = iter(records)
        for d in itertools.islice(todo, 4 * workers):
            ahead.append(pool.submit(_row, d, source, images))
        while ahead:
            row = ahead.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                ahead.append(pool.submit(_row, nxt, source, images))
            yield row


def write_datasets(out: Path, image_records: Mapping[str, list[dict]], class_records: list[dict], *,
                   source: str | Path, images: str = "embed", workers: int = 1) -> None:
    """Write ``out/images`` (DatasetDict of the splits present) and ``out/classes`` atomically; ``images``
    (embed or reference) says what is kept of the files under ``source`` (``image_files``)."""
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
                    _image_rows, features=IMAGES_FEATURES, cache_dir=str(tmp / "cache" / split),
                    gen_kwargs={"records": recs, "source": str(source), "images": images, "workers": workers},
                    split=datasets.NamedSplit(split), writer_batch_size=WRITER_BATCH_ROWS,
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
