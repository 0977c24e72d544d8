"""The write stage: ``out/images`` and ``out/classes`` from the stored records, replaced together or not at all.

Why from stored records: an interrupted-and-resumed build and an uninterrupted one then write identical
bytes. What a row keeps of its image and mask files is decided by ``image_files``; the files are read, hashed
and (when they must be) encoded by a few threads while ``datasets`` writes the rows in order. A build writes
its ``images`` rows while it still captions (``ImagesWriter``), straight into the Arrow files of the saved
dataset: each row is written as soon as its record is made and every row before it in the dataset's order is,
so with a model backend only the last few rows are left when the last caption comes back. The datasets are
saved in a scratch folder inside ``out`` (``.write-*`` / ``.merge-*``) and swapped into place with
``fsad_data.atomic.swap_folder`` only when both are complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Self

from fsad_data.atomic import swap_folder
from mfsc_builder.errors import BuildError
from mfsc_builder.image_files import stored_image, stored_mask
from mfsc_builder.records import CLASSES_FEATURES, IMAGES_FEATURES, ClassRecord, ImageRecord
from mfsc_builder.store import canonical_json

SPLIT_ORDER = ("train", "test")
WRITER_BATCH_ROWS = 8  # rows datasets holds before writing: few are left to write when the last record comes
SHARD_BYTES = 500 * 2**20  # one Arrow file per this many bytes of a split's images (datasets' own default)
DATASET_STATE_FILE, DATASET_DICT_FILE = "state.json", "dataset_dict.json"  # names load_from_disk reads


def _row(d: dict, source: str, images: str) -> dict:
    """One ``images`` row: the record and what is kept of its image and mask (``image_files``)."""
    rec = ImageRecord.from_dict(d)
    image = stored_image(rec.image_path, source, images)
    mask = (stored_mask(rec.mask_path, rec.image_path, (rec.width, rec.height), source, images)
            if rec.mask_path else None)
    return rec.to_row(image=image, mask=mask)


def write_datasets(out: Path, image_records: Mapping[str, list[dict]], class_records: list[dict], *,
                   source: str | Path, images: str = "embed", workers: int = 1) -> None:
    """Write ``out/images`` (DatasetDict of the splits present) and ``out/classes`` atomically from records
    already in memory; ``images`` (embed or reference) says what is kept of the files under ``source``."""
    expected = {split: [r["id"] for r in recs] for split, recs in image_records.items()}
    with ImagesWriter(out, expected, source=source, images=images, workers=workers) as writer:
        writer.add([r["id"] for recs in image_records.values() for r in recs],
                   [r for recs in image_records.values() for r in recs])
        writer.finish(class_records)


class _Aborted(Exception):
    """The build stopped before every row was known: the writer threads give up, nothing is published."""


class ImagesWriter:
    """Writes the ``images`` splits in background threads (one per split) while the build still runs; on
    ``finish``, completes them and saves ``classes``. ``expected`` lists, per split, the ids of the rows in the
    dataset's order (sorted by id); the build reports each captioned batch with ``add`` (the ids it settled and
    the records made; an id without a record was skipped). Rows are produced strictly in order, so the bytes do
    not depend on when the records came; each record is dropped once its row is written. Leaving the ``with``
    block without ``finish`` (an error, Ctrl-C) stops the threads and publishes nothing."""

    def __init__(self, out: Path, expected: Mapping[str, Sequence[str]], *, source: str | Path,
                 images: str = "embed", workers: int = 1) -> None:
        self.out, self._source, self._images, self._workers = Path(out), str(source), images, max(1, workers)
        self._expected = {s: list(expected[s]) for s in sorted(expected, key=split_key) if expected[s]}
        self._wanted = {rid for ids in self._expected.values() for rid in ids}
        self._records: dict[str, dict | None] = {}  # settled, not yet written: id -> record, None = skipped
        self._changed = threading.Condition()
        self._aborted = self._finishing = False  # the build stopped / every record has come
        self._error: BaseException | None = None
        self._splits: dict[str, tuple[list[Path], str]] = {}  # split -> (its Arrow files, its fingerprint)
        self._finished = False
        self._staging = staged_datasets(self.out, ".write-", "datasets")
        self._threads = [threading.Thread(target=self._write_split, args=(split, ids), daemon=True,
                                          name=f"mfsc-write-{split}") for split, ids in self._expected.items()]

    def __enter__(self) -> Self:
        self._tmp = self._staging.__enter__()
        (self._tmp / "images").mkdir()  # the threads make only their split's folder in it: none once it is gone
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._finished:
            return
        try:
            self._stop_threads()  # left without finish (an error, Ctrl-C): nothing is published
        finally:  # even when a second Ctrl-C lands while the threads stop: the scratch folder goes
            self._staging.__exit__(_Aborted, _Aborted(), None)  # the caller's own exception goes on as it is

    def add(self, settled: Iterable[str], records: Iterable[dict]) -> None:
        """Rows that can be written now (ids not expected here, such as another shard's references, are
        ignored); raises at once when a writer thread failed (a file it could not read, a full disk), so a
        long build does not caption on for nothing."""
        with self._changed:
            for rid in settled:
                if rid in self._wanted:
                    self._records.setdefault(rid, None)
            for r in records:
                if r["id"] in self._wanted:
                    self._records[r["id"]] = r
            self._changed.notify_all()
        if self._error is not None:
            self._raise_error()

    def finish(self, class_records: list[dict]) -> None:
        """Wait for the last rows, complete the ``images`` splits, save ``classes``, and put both in place."""
        import datasets

        with self._changed:
            self._finishing = True  # ids never reported were not captioned: they have no row
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        if self._error is not None:
            self._raise_error()
        if not self._splits:
            raise BuildError(f"nothing to write to {self.out}: no image was captioned (see the warnings above)")
        splits = [s for s in self._expected if s in self._splits]
        try:
            for split in splits:
                _saved_dataset_files(self._tmp / "images" / split, split, *self._splits[split])
            (self._tmp / "images" / DATASET_DICT_FILE).write_text(json.dumps({"splits": splits}), encoding="utf-8")
            rows = [ClassRecord.from_dict(c).to_row() for c in class_records]
            datasets.Dataset.from_list(rows, features=CLASSES_FEATURES).save_to_disk(str(self._tmp / "classes"))
        except OSError as exc:
            raise _write_failed(self.out, exc) from exc
        self._splits = {}
        self._finished = True
        self._staging.__exit__(None, None, None)  # the swap; an error there has cleaned up already

    # ---------------------------------------------------------------- the threads
    def _stop_threads(self) -> None:
        with self._changed:
            self._aborted = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    def _raise_error(self) -> None:
        exc = self._error
        if isinstance(exc, OSError):
            raise _write_failed(self.out, exc) from exc
        raise exc  # type: ignore[misc]

    def _take(self, rid: str, wait: bool) -> tuple[bool, dict | None]:
        """(settled?, its record) of ``rid``, dropped from memory once taken; with ``wait``, waits until it is
        settled (every id is, once ``finish`` runs). Raises ``_Aborted`` once the build stopped."""
        with self._changed:
            while True:
                if self._aborted:
                    raise _Aborted
                if rid in self._records:
                    return True, self._records.pop(rid)
                if self._finishing:
                    return True, None
                if not wait:
                    return False, None
                self._changed.wait()

    def _rows(self, ids: list[str]) -> Iterator[dict]:
        """The split's rows in order. With several workers, up to ``2 * workers`` rows whose records are already
        settled are read and (where needed) encoded ahead by threads (Pillow's encoder and hashlib release the
        GIL); a row is never held back waiting for a record that has not come yet."""
        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="mfsc-read") if self._workers > 1 else None
        ahead: deque[Future[dict]] = deque()
        depth, i = (2 * self._workers if pool else 1), 0
        try:
            while i < len(ids) or ahead:
                while i < len(ids) and len(ahead) < depth:  # settled records go ahead; wait only with none in hand
                    ready, rec = self._take(ids[i], wait=not ahead)
                    if not ready:
                        break
                    i += 1
                    if rec is not None:
                        ahead.append(pool.submit(_row, rec, self._source, self._images) if pool else
                                     _done(_row(rec, self._source, self._images)))
                if ahead:
                    yield ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()
            if pool is not None:
                pool.shutdown(wait=True)

    def _write_split(self, split: str, ids: list[str]) -> None:
        """One split's rows, in its own thread (the splits' records come interleaved), straight into the Arrow
        files of the saved dataset (``datasets``' writer, one file per ``SHARD_BYTES`` of images): written once,
        no cache copy to save again."""
        from datasets.arrow_writer import ArrowWriter

        folder = self._tmp / "images" / split
        files: list[Path] = []
        digest = hashlib.sha256(self._images.encode())  # of the rows without their pixels: the fingerprint
        writer, size = None, 0
        try:
            for row in self._rows(ids):
                if writer is None or size >= SHARD_BYTES:
                    if writer is not None:
                        writer.finalize()
                        writer.close()
                    if self._aborted:
                        raise _Aborted
                    files.append(folder / f"shard-{len(files):05d}.arrow")
                    folder.mkdir(exist_ok=True)
                    writer, size = ArrowWriter(features=IMAGES_FEATURES, path=str(files[-1]),
                                               writer_batch_size=WRITER_BATCH_ROWS), 0
                writer.write(IMAGES_FEATURES.encode_example(row))
                size += sum(len(row[k]["bytes"] or b"") for k in ("image", "mask") if row.get(k))
                digest.update(canonical_json({k: v for k, v in row.items() if k not in ("image", "mask")}).encode())
            if writer is not None:
                writer.finalize()
                self._splits[split] = (files, digest.hexdigest())
        except BaseException as exc:  # noqa: BLE001 - handed to the build's thread by add / finish
            if not isinstance(exc, _Aborted) and self._error is None:
                self._error = exc
        finally:
            try:
                if writer is not None:
                    writer.close()  # after a failed write (a full disk) the close fails too: said once, above
            except OSError as exc:
                if self._error is None and not self._aborted:
                    self._error = exc


def _done(row: dict) -> Future[dict]:
    future: Future[dict] = Future()
    future.set_result(row)
    return future


def _write_failed(out: Path, exc: OSError) -> BuildError:
    return BuildError(f"could not write the datasets under {out}: {exc}; check free space, then rerun (finished "
                      "stages and earlier outputs are kept)")


def _saved_dataset_files(folder: Path, split: str, files: list[Path], fingerprint: str) -> None:
    """What ``Dataset.save_to_disk`` writes beside its Arrow files, for files written by ``ImagesWriter``:
    the files named as it names them, ``state.json`` and ``dataset_info.json`` (by ``datasets.DatasetInfo``).
    ``tests/test_images_writer.py`` checks both against ``save_to_disk``'s own, so a change in ``datasets``
    shows there first."""
    import datasets

    names = [f"data-{i:05d}-of-{len(files):05d}.arrow" for i in range(len(files))]
    for path, name in zip(files, names):
        path.rename(folder / name)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": fingerprint,
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
             "_split": split}
    (folder / DATASET_STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
    datasets.DatasetInfo(features=IMAGES_FEATURES).write_to_directory(str(folder), pretty_print=True)


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
