"""detector.run.outputs: strict JSON values and CSV rows as the commands write them."""
import csv
import json
import math

import numpy as np

from detector.run.outputs import write_csv
from detector.store.files import json_safe


def test_json_safe_turns_nan_and_numpy_into_strict_json():
    assert json_safe({"a": float("nan"), "b": np.float32(0.5)}) == {"a": None, "b": 0.5}
    nested = json_safe({"x": [np.int64(3), (float("inf"), 1.0)]})
    assert nested == {"x": [3, [None, 1.0]]} and json.loads(json.dumps(nested, allow_nan=False)) == nested


def test_write_csv_writes_none_and_nan_as_empty_cells(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"k": "a", "v": math.nan}, {"k": "b", "v": np.float32(0.25)}])
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"k": "a", "v": ""}, {"k": "b", "v": "0.25"}]


def test_epoch_lines_one_per_epoch_or_every_ten_seconds_with_an_estimate():
    from detector.run.outputs import EpochLines

    now = [0.0]
    lines: list[str] = []
    rep = EpochLines(lines.append, every=10.0, clock=lambda: now[0])
    rep("pixel prompts", 0, 100, float("nan"))
    for epoch in range(1, 101):  # 1 s per epoch: a line every 10 s and after the last epoch
        now[0] += 1.0
        rep("pixel prompts", epoch, 100, 1.0 / epoch)
    assert lines[0] == "train: pixel prompts 0/100 epochs" and len(lines) == 1 + 10
    assert lines[1] == "train: pixel prompts epoch 10/100, loss 0.1000, elapsed 0:00:10, left ~0:01:30"
    assert lines[-1].startswith("train: pixel prompts epoch 100/100, loss 0.0100, elapsed 0:01:40, left ~0:00:00")
    lines.clear()
    rep("image prompts", 20, 50, 0.5)  # resumed: the estimate counts this run's epochs only
    now[0] += 30.0  # slow epochs: one line per epoch
    rep("image prompts", 21, 50, 0.4)
    now[0] += 30.0
    rep("image prompts", 22, 50, 0.3)
    assert lines == ["train: image prompts 20/50 epochs (resumed after epoch 20)",
                     "train: image prompts epoch 21/50, loss 0.4000, elapsed 0:00:30, left ~0:14:30",
                     "train: image prompts epoch 22/50, loss 0.3000, elapsed 0:01:00, left ~0:14:00"]
