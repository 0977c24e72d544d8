"""The images rows written while a build still captions (``write.ImagesWriter``): the saved layout is the one
``datasets``' own ``save_to_disk`` writes, the bytes do not depend on when or in which order the records come,
a failing row stops the build at once, and leaving early publishes nothing and leaves no thread or scratch
folder behind."""
import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fsad_data import DataError
from mfsc_builder import write
from mfsc_builder.errors import BuildError
from mfsc_builder.records import IMAGES_FEATURES, ClassRecord, ImageRecord, ImageView, PromptText, Provenance
from mfsc_builder.write import ImagesWriter, group_by_split

PROV = Provenance("attributes", "", "", "attr-1", "ok")


def _records(src: Path, n_classes: int = 3, per_split: int = 5) -> list[dict]:
    """Records of small noisy PNGs, ids ordered as a real build's are: class, then split, so the splits'
    records come interleaved."""
    rng = np.random.default_rng(0)
    recs = []
    for c in range(n_classes):
        for split in ("test", "train"):
            for i in range(per_split):
                path = src / f"c{c}" / split / f"{i:03d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
                recs.append(ImageRecord(
                    id=f"c{c}/{split}/good/{i:03d}", class_name=f"c{c}", object_name=f"c{c}", split=split,
                    label=0, defect_type="good", file_name=path.name, image_path=str(path), mask_path=None,
                    width=32, height=24, is_reference=False, image_view=ImageView(f"c{c}", "black"),
                    caption=f"thing {c} {i}", provenance=PROV).to_dict())
    return recs


def _classes() -> list[dict]:
    return [ClassRecord("c0", "c0", "folder", ["000.png"], "k=1 seed=0", ImageView("c0", "black"),
                        caption="c0", defect_states=["crack"], defect_vocab="generic",
                        texts=[PromptText("image", "image", ["a c0"], ["a c0 with a crack"])],
                        provenance=PROV).to_dict()]


def _order(recs: list[dict]) -> dict[str, list[str]]:
    return {split: [r["id"] for r in rs] for split, rs in group_by_split(recs).items()}


def _files(out: Path) -> dict[str, bytes]:
    """Every data file of the images dataset (the Arrow shards and the split list), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "images").rglob("*"))
            if p.is_file() and (p.suffix == ".arrow" or p.name == "dataset_dict.json")}


def _no_writer_threads() -> bool:
    return not any(t.name.startswith("mfsc-write") and t.is_alive() for t in threading.enumerate())


def _write_all(out: Path, recs: list[dict], source: Path) -> None:
    with ImagesWriter(out, _order(recs), source=source) as w:
        w.add([r["id"] for r in recs], recs)
        w.finish(_classes())


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_saved_layout_is_the_one_datasets_save_to_disk_writes(tmp_path):
    """Our files beside the Arrow files (state.json, dataset_info.json, dataset_dict.json) equal what
    ``DatasetDict.save_to_disk`` writes for the same rows, fingerprint aside: a ``datasets`` release that
    changes its layout fails here."""
    import datasets

    recs = _records(tmp_path / "src")
    ours = tmp_path / "ours"
    _write_all(ours, recs, tmp_path)
    ref = tmp_path / "ref"
    datasets.DatasetDict({
        split: datasets.Dataset.from_list([write._row(r, str(tmp_path), "embed") for r in rs],
                                          features=IMAGES_FEATURES, split=datasets.NamedSplit(split))
        for split, rs in group_by_split(recs).items()}).save_to_disk(str(ref))
    assert _json(ours / "images" / "dataset_dict.json") == _json(ref / "dataset_dict.json")
    for split in ("train", "test"):
        mine, theirs = ours / "images" / split, ref / split
        assert sorted(p.name for p in mine.iterdir()) == sorted(p.name for p in theirs.iterdir())
        state, ref_state = _json(mine / "state.json"), _json(theirs / "state.json")
        assert state.keys() == ref_state.keys()
        assert {k: v for k, v in state.items() if k != "_fingerprint"} == \
            {k: v for k, v in ref_state.items() if k != "_fingerprint"}
        info, ref_info = _json(mine / "dataset_info.json"), _json(theirs / "dataset_info.json")
        assert info.keys() == ref_info.keys() and info["features"] == ref_info["features"]
    got, want = datasets.load_from_disk(str(ours / "images")), datasets.load_from_disk(str(ref))
    for split in ("train", "test"):
        assert got[split].features == want[split].features and got[split].split == want[split].split
        assert got[split].data.to_pylist() == want[split].data.to_pylist()


def test_a_large_split_is_written_in_several_arrow_files(tmp_path, monkeypatch):
    import datasets

    recs = _records(tmp_path / "src", n_classes=2)
    monkeypatch.setattr(write, "SHARD_BYTES", 3 * Path(recs[0]["image_path"]).stat().st_size)
    out = tmp_path / "out"
    _write_all(out, recs, tmp_path)
    files = sorted(p.name for p in (out / "images" / "train").glob("*.arrow"))
    assert files == [f"data-{i:05d}-of-00004.arrow" for i in range(4)]  # 10 rows, 3 a file
    images = datasets.load_from_disk(str(out / "images"))
    assert images["train"]["id"] == _order(recs)["train"]


def test_rows_do_not_depend_on_the_order_or_timing_of_the_records(tmp_path):
    import datasets

    recs = _records(tmp_path / "src")
    at_once = tmp_path / "at-once"
    _write_all(at_once, recs, tmp_path)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    late = tmp_path / "late"
    with ImagesWriter(late, _order(recs), source=tmp_path, workers=3) as w:
        for i in range(0, len(shuffled), 4):  # small parts, out of order, with the threads kept waiting
            part = shuffled[i:i + 4]
            w.add([r["id"] for r in part], part)
            time.sleep(0.01)
        w.finish(_classes())
    assert _files(late) == _files(at_once)
    images = datasets.load_from_disk(str(late / "images"))
    assert list(images) == ["train", "test"]
    for split, ids in _order(recs).items():
        assert images[split]["id"] == ids
        got = images[split].cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
        assert got == Path(recs[[r["id"] for r in recs].index(ids[0])]["image_path"]).read_bytes()
    assert not [p for p in late.iterdir() if p.name.startswith(".")] and _no_writer_threads()


def test_rows_are_written_before_finish(tmp_path):
    """The build's write is not one step after the last caption: rows reach the disk as records come."""
    recs = _records(tmp_path / "src")
    test_recs = [r for r in recs if r["split"] == "test"]
    image_bytes = sum(Path(r["image_path"]).stat().st_size for r in test_recs)
    out = tmp_path / "out"
    with ImagesWriter(out, _order(recs), source=tmp_path) as w:
        w.add([r["id"] for r in test_recs], test_recs)  # the train rows are still to come
        deadline, cached = time.monotonic() + 30, 0
        while time.monotonic() < deadline and cached < image_bytes:
            cached = sum(p.stat().st_size for p in out.glob(".write-*/images/test/*.arrow"))
            time.sleep(0.02)
        assert cached >= image_bytes, "the test split's rows were not written while the build went on"
        assert not (out / "images").exists()  # and nothing is published before finish
        w.add([r["id"] for r in recs], recs)
        w.finish(_classes())
    assert (out / "images" / "test").is_dir()


def test_a_row_is_not_held_back_for_records_still_to_come(tmp_path):
    """With reading threads, the rows whose records have come are written without waiting for more records
    (a read-ahead that waited for the next record held the last 4 x workers rows of every stretch back)."""
    recs = _records(tmp_path / "src", n_classes=3)
    test_recs = [r for r in recs if r["split"] == "test"][:write.WRITER_BATCH_ROWS + 1]
    out = tmp_path / "out"
    with ImagesWriter(out, _order(recs), source=tmp_path, workers=2) as w:
        w.add([r["id"] for r in test_recs], test_recs)  # 9 of the 15 test records, the rest still to come
        deadline, written = time.monotonic() + 30, 0
        while time.monotonic() < deadline and written == 0:  # the first Arrow batch (8 rows) reaches the file
            written = sum(p.stat().st_size for p in out.glob(".write-*/images/test/*.arrow"))
            written = written if written > sum(Path(r["image_path"]).stat().st_size for r in test_recs[:8]) else 0
            time.sleep(0.02)
        assert written, "rows whose records had come were held back"
        w.add([r["id"] for r in recs], recs)
        w.finish(_classes())


def test_stopping_does_not_write_the_rows_still_in_hand(tmp_path, monkeypatch):
    """A build stopped early (Ctrl-C, an error) with many records in hand, as a resumed build has, stops its
    writer at once instead of reading and writing every one of them first."""
    recs = _records(tmp_path / "src", n_classes=4, per_split=20)
    made = []
    real_row = write._row

    def slow_row(*args):
        made.append(1)
        time.sleep(0.02)
        return real_row(*args)

    monkeypatch.setattr(write, "_row", slow_row)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="captioner broke"), ImagesWriter(out, _order(recs), source=tmp_path,
                                                                          workers=2) as w:
        w.add([r["id"] for r in recs], recs)  # 160 records in hand
        time.sleep(0.1)
        raise RuntimeError("captioner broke")
    assert len(made) < 40, f"{len(made)} of {len(recs)} rows were still made after the stop"
    assert list(out.iterdir()) == [] and _no_writer_threads()


def test_a_row_that_cannot_be_read_stops_the_build_at_the_next_add(tmp_path):
    recs = _records(tmp_path / "src", n_classes=1)
    gone = Path(recs[0]["image_path"])  # a file removed while the build runs
    gone.unlink()
    out = tmp_path / "out"
    with pytest.raises(DataError, match=gone.name), ImagesWriter(out, _order(recs), source=tmp_path) as w:
        w.add([recs[0]["id"]], recs[:1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the build adds part after part; one of them hears it
            w.add([], [])
            time.sleep(0.01)
        pytest.fail("the writer's error was not reported while the build went on")
    assert not (out / "images").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    assert _no_writer_threads()


def test_leaving_without_finish_publishes_nothing_and_stops_the_threads(tmp_path):
    recs = _records(tmp_path / "src")
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), ImagesWriter(out, _order(recs), source=tmp_path) as w:
        w.add([r["id"] for r in recs[:7]], recs[:7])  # some rows written, the threads wait for more
        raise KeyboardInterrupt
    assert list(out.iterdir()) == [] and _no_writer_threads()
    with ImagesWriter(out, _order(recs), source=tmp_path) as w:  # a plain exit without finish: same
        w.add([r["id"] for r in recs[:3]], recs[:3])
    assert list(out.iterdir()) == [] and _no_writer_threads()


def test_skipped_images_leave_no_row_and_a_split_without_rows_is_left_out(tmp_path):
    import datasets

    recs = _records(tmp_path / "src", n_classes=2)
    kept = [r for r in recs if r["split"] == "train" and not r["id"].endswith("/001")]
    out = tmp_path / "out"
    with ImagesWriter(out, _order(recs), source=tmp_path) as w:
        w.add([r["id"] for r in recs], kept)  # every test image and two train images settled, skipped
        w.finish(_classes())
    images = datasets.load_from_disk(str(out / "images"))
    assert list(images) == ["train"] and images["train"]["id"] == [r["id"] for r in kept]


def test_nothing_captioned_is_one_clear_error_and_nothing_written(tmp_path):
    recs = _records(tmp_path / "src", n_classes=1)
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="no image was captioned"), \
            ImagesWriter(out, _order(recs), source=tmp_path) as w:
        w.finish(_classes())  # ids never reported were not captioned
    assert list(out.iterdir()) == [] and _no_writer_threads()
