"""Cross-layout end to end: the synthetic set as VisA raw and as a generic folder tree, `mfsc build` with the
attribute captioner, then the detector (tiny backbone) trained and evaluated on one class from those captions.

Why: each half reads the raw data set on its own; this checks they agree on a layout that is not MVTec's
(the same class record found, the same shots by file name, and the names written are that layout's)."""
import json
from pathlib import Path

import pytest

from detector.config import TrainConfig
from detector.run.evaluate import EvalConfig, run_eval
from detector.run.train import train
from detector.store.captions import load_class_record
from fsad_data import read_dataset, select_shots, to_folder, to_visa_raw
from mfsc_builder.build import BuildConfig, run_build

TINY_BACKBONE = Path(__file__).parent / "assets" / "fgad-tiny-test.json"
CLASS = "pill_box"


@pytest.mark.parametrize(("layout", "convert", "shot_prefix"), [
    ("visa_raw", to_visa_raw, "Data/Images/Normal/"),
    ("folder", to_folder, "train/normal/"),
])
def test_build_train_eval_on_another_layout(demo_root, tmp_path, layout, convert, shot_prefix):
    root = convert(demo_root, tmp_path / layout)
    samples = read_dataset(root, classes=[CLASS])
    assert samples.layout == layout
    # the same images as the MVTec original: 8 train, 6 good + 6 anomalous test images, masks for all anomalies
    assert sum(s.split == "train" for s in samples) == 8 and sum(s.label for s in samples) == 6
    assert all(s.mask_path is not None for s in samples if s.label)

    captions = tmp_path / "captions"
    summary = run_build(BuildConfig(source=str(root), out=str(captions), classes=[CLASS]))
    assert summary.images == {"train": 8, "test": 12}

    record = load_class_record(captions, CLASS)
    shots = [s.file_name for s in select_shots(samples, CLASS, 1, 0)]
    assert record["source_layout"] == layout and record["reference_images"] == shots
    assert shots[0].startswith(shot_prefix)

    ckpt = train(TrainConfig(captions=str(captions), data=str(root), class_name=CLASS, shots=1, seed=0,
                             out=str(tmp_path / "ckpt"), backbone=str(TINY_BACKBONE), pretrained="none",
                             epochs=1, image_epochs=1), progress=False)
    meta = json.loads((ckpt / "config.json").read_text())
    meta = meta.get("meta", meta)
    assert meta["shots"] == shots and meta["record"]["reference_images"] == shots

    result = run_eval(EvalConfig(checkpoint=ckpt, data=root, out=tmp_path / "eval", progress=False))
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["class_name"] == CLASS and metrics["shot_files"] == shots
    assert (metrics["n_images"], metrics["n_anomalous"]) == (12, 6)
    assert 0.0 <= metrics["metrics"]["image_auroc"] <= 100.0 and "pixel_auroc" in metrics["metrics"]
