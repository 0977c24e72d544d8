"""detector.outputs: strict JSON values and CSV rows as the commands write them."""
import csv
import json
import math

import numpy as np

from detector.outputs import json_safe, write_csv


def test_json_safe_turns_nan_and_numpy_into_strict_json():
    assert json_safe({"a": float("nan"), "b": np.float32(0.5)}) == {"a": None, "b": 0.5}
    nested = json_safe({"x": [np.int64(3), (float("inf"), 1.0)]})
    assert nested == {"x": [3, [None, 1.0]]} and json.loads(json.dumps(nested, allow_nan=False)) == nested


def test_write_csv_writes_none_and_nan_as_empty_cells(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"k": "a", "v": math.nan}, {"k": "b", "v": np.float32(0.25)}])
    rows = list(csv.DictReader(path.open()))
    assert rows == [{"k": "a", "v": ""}, {"k": "b", "v": "0.25"}]
