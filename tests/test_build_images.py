"""`mfsc build --images embed|reference` and `--workers`: what the images dataset keeps, that worker processes
change nothing but the speed, that switching the mode rewrites only the datasets, and that a killed build
leaves no process behind."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from worker_probes import session_processes

from fsad_data import load_mask, read_dataset
from mfsc_builder.build import BuildConfig, merge_builds, run_build
from mfsc_builder.errors import BuildError

CLASS = "pill_box"
TINY_BACKBONE = Path(__file__).parent / "assets" / "fgad-tiny-test.json"


def _cfg(demo_root: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(source=str(demo_root), out=str(out), classes=[CLASS], **kw)


def _rows(out: Path) -> dict[str, list[dict]]:
    import datasets

    images = datasets.load_from_disk(str(out / "images"))
    rows = {s: images[s].data.to_pylist() for s in images}
    rows["classes"] = datasets.load_from_disk(str(out / "classes")).data.to_pylist()
    return rows


@pytest.fixture(scope="module")
def embedded(demo_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("embed") / "build"
    run_build(_cfg(demo_root, out, workers=2))
    return out


def test_embedded_rows_hold_the_source_files_byte_for_byte(embedded, demo_root):
    files = {s.id: s for s in read_dataset(demo_root, classes=[CLASS])}
    rows = _rows(embedded)
    assert len(rows["train"]) + len(rows["test"]) == len(files)
    for row in rows["train"] + rows["test"]:
        sample = files[row["id"]]
        raw = Path(sample.image_path).read_bytes()
        assert row["image"]["bytes"] == raw  # the demo's RGB PNGs need no re-encoding
        assert row["image_file"] == Path(sample.image_path).relative_to(demo_root).as_posix()
        assert (row["image_file_size"], row["image_sha256"]) == (len(raw), hashlib.sha256(raw).hexdigest())
        if sample.mask_path is None:
            assert row["mask"] is None and (row["mask_file"], row["mask_file_size"], row["mask_sha256"]) == ("", 0, "")
            continue
        mask = np.asarray(Image.open(io.BytesIO(row["mask"]["bytes"])))
        assert np.array_equal(mask > 0, load_mask(sample.mask_path)) and set(np.unique(mask)) <= {0, 255}
        assert row["mask_file"] == Path(sample.mask_path).relative_to(demo_root).as_posix()
    assert json.loads((embedded / "build_info.json").read_text())["image_storage"] == "embed"


def test_worker_processes_build_exactly_what_one_thread_builds(embedded, demo_root, tmp_path):
    one = tmp_path / "one"
    run_build(_cfg(demo_root, one, workers=1))
    assert _rows(one) == _rows(embedded)


def test_reference_rewrites_only_the_datasets_and_keeps_no_pixels(embedded, demo_root, tmp_path):
    import shutil

    out = tmp_path / "build"
    shutil.copytree(embedded, out)
    summary = run_build(_cfg(demo_root, out, images="reference", workers=1))
    assert summary.resumed and summary.computed == {"crop": 0, "caption": 0, "fill": 0}  # no stage redone
    before, after = _rows(embedded), _rows(out)
    for split in ("train", "test"):
        for old, new in zip(before[split], after[split], strict=True):
            assert new["image"] is None and new["mask"] is None
            assert {k: v for k, v in new.items() if k not in ("image", "mask")} == \
                   {k: v for k, v in old.items() if k not in ("image", "mask")}
    assert json.loads((out / "build_info.json").read_text())["image_storage"] == "reference"
    # and back: embedding again gives the first build's bytes
    run_build(_cfg(demo_root, out, images="embed", workers=1))
    assert _rows(out) == before


def test_the_card_and_parquet_of_a_reference_build_carry_no_pixels(embedded, demo_root, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from mfsc_builder.publish import dry_run

    out = tmp_path / "build"
    shutil.copytree(embedded, out)
    run_build(_cfg(demo_root, out, images="reference", workers=1))
    pub = tmp_path / "pub"
    dry_run(out, pub, repo_id="me/pill")
    card = (pub / "README.md").read_text()
    assert "No image or mask pixels are included" in card and "mfsc build --images reference" in card
    for part in (pub / "data" / "images").glob("*.parquet"):
        table = pq.read_table(part, columns=["image", "mask", "image_file"]).to_pylist()
        assert all(r["image"] is None and r["mask"] is None and r["image_file"] for r in table)
    embed_pub = tmp_path / "pub-embed"
    dry_run(embedded, embed_pub, repo_id="me/pill")
    assert "holds each source file itself" in (embed_pub / "README.md").read_text()


def test_the_detector_trains_from_a_reference_build_reading_images_from_data(embedded, demo_root, tmp_path):
    import shutil

    from detector.config import TrainConfig
    from detector.run.train import train

    out = tmp_path / "build"
    shutil.copytree(embedded, out)
    run_build(_cfg(demo_root, out, images="reference", workers=1))
    ckpt = train(TrainConfig(captions=str(out), data=str(demo_root), class_name=CLASS, shots=1, seed=0,
                             out=str(tmp_path / "ckpt"), backbone=str(TINY_BACKBONE), pretrained="none",
                             epochs=1, image_epochs=1), progress=False)
    assert (ckpt / "config.json").is_file()


def test_merge_refuses_parts_that_keep_their_images_differently(demo_root, tmp_path):
    parts = []
    for i, mode in enumerate(("embed", "reference")):
        parts.append(tmp_path / f"part{i}")
        run_build(_cfg(demo_root, parts[-1], num_shards=2, shard_index=i, images=mode, workers=1))
    with pytest.raises(BuildError, match="keep their images differently.*same --images"):
        merge_builds(parts, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    run_build(_cfg(demo_root, parts[0], num_shards=2, shard_index=0, images="reference", workers=1))
    merged = merge_builds(parts, tmp_path / "merged")
    rows = _rows(merged.out)
    assert all(r["image"] is None and r["image_sha256"] for r in rows["train"] + rows["test"])
    assert json.loads((merged.out / "build_info.json").read_text())["image_storage"] == "reference"


@pytest.mark.parametrize(("key", "value", "hint"), [("images", "copy", "use embed"), ("workers", 0, "use 1")])
def test_bad_images_or_workers_is_one_line(demo_root, tmp_path, key, value, hint):
    with pytest.raises(BuildError, match=hint):
        run_build(_cfg(demo_root, tmp_path / "o", **{key: value}))


def test_kill_9_of_a_build_leaves_no_worker_behind_and_the_rerun_resumes(demo_root, tmp_path):
    out = tmp_path / "build"
    script = ("import sys\nfrom mfsc_builder.build import BuildConfig, run_build\n"
              "if __name__ == '__main__':\n"
              f"    run_build(BuildConfig(source={str(demo_root)!r}, out={str(out)!r}, workers=2, part_size=4))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "work" / "crop").glob("part-*.jsonl")):
        time.sleep(0.05)
    assert len(session_processes(proc.pid)) >= 3  # the build, its workers and the resource tracker
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while session_processes(proc.pid) and time.time() < deadline:
        time.sleep(0.1)
    assert session_processes(proc.pid) == []
    summary = run_build(BuildConfig(source=str(demo_root), out=str(out), workers=2, part_size=4))
    assert summary.resumed and summary.images == {"train": 24, "test": 36}
