"""`make demo`'s script as a user runs it, every step in its own command, with the tiny backbone so it takes
seconds: data, captions (worker processes included), record, train, eval, and predict at the evaluation's
threshold. CI also runs the real `make demo` (the full-size backbone) on a fresh clone; this test makes a broken
step fail `make test` first."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_BACKBONE = ROOT / "tests" / "assets" / "fgad-tiny-test.json"


def test_the_demo_runs_every_step_and_predicts_at_the_evaluations_threshold(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, DEMO_BACKBONE=str(TINY_BACKBONE), DEMO_PRETRAINED="none", DEMO_EPOCHS="1",
               DEMO_IMAGE_EPOCHS="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh"), str(out)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=480)
    finally:  # a hung step: the whole demo goes, not only bash
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "demo finished in" in stdout and "Traceback" not in stderr
    picked = json.loads((out / "eval" / "threshold.json").read_text())["fused"]
    used = json.loads((out / "predict" / "scores.json").read_text())["threshold"]
    assert (used["pixel"], used["image"]) == (picked["pixel_threshold"], picked["image_threshold"])
    assert used["source"] == f"file ({out / 'eval' / 'threshold.json'})"
    with open(out / "predict" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["anomalous"] for r in rows} <= {"True", "False"}  # every test image, decided
    assert len(list((out / "predict" / "masks").rglob("*.png"))) == 12
