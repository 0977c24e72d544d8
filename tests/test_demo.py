"""`make demo`'s script as a user runs it, every step in its own command, with the tiny backbone so it takes
seconds: data, captions (worker processes included), record, train, eval, and predict at the evaluation's
threshold. CI also runs the real `make demo` (the full-size backbone) on a fresh clone; this test makes a broken
step fail `make test` first."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = ROOT / "tests" / "assets" / "fgad-tiny-test.json"


def test_the_demo_runs_every_step_and_predicts_at_the_evaluations_threshold(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_BACKBONE=str(TINY_BACKBONE), DEMO_PRETRAINED="none", DEMO_EPOCHS="1",
               DEMO_IMAGE_EPOCHS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), str(out)], env=env, capture_output=True, check=False,
                         text=True, timeout=480)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "demo finished in" in res.stdout and "Traceback" not in res.stderr
    threshold = json.loads((out / "eval" / "threshold.json").read_text())["fused"]["pixel_threshold"]
    with open(out / "predict" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12  # every test image of the class
    assert {r["anomalous"] for r in rows} <= {"True", "False"}  # decided: a threshold was applied
    masks = sorted((out / "predict" / "masks").rglob("*.png"))
    assert len(masks) == 12 and threshold > 0
    assert json.loads((out / "predict" / "defects.json").read_text())  # named regions need the threshold
