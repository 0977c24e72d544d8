"""Benchmark protocol: cells, shards, resume, merge tables (fake trainer), and one real tiny cell."""
import csv
import hashlib
import json
import math
import re

import numpy as np
import pytest

from detector.errors import DetectorError
from detector.eval.metrics import METRIC_KEYS
from detector.method.model import Prediction
from detector.run import benchmark as B


class NoiseModel:
    """Deterministic random maps per (seed, image): plumbing without training."""

    def __init__(self, seed):
        self.seed = seed
        self.meta = {"class_name": "x", "config": {"pretrained": "none"}, "backbone": {"name": "fake",
                                                                                       "pretrained": "none"}}

    def predict(self, images, resolution=256, branch="fused", batch_size=8):
        maps = []
        for img in images:
            h = int(hashlib.sha1(img.tobytes()).hexdigest()[:8], 16)
            maps.append(np.random.default_rng([self.seed, h]).random((resolution, resolution), np.float32))
        maps = np.stack(maps)
        return Prediction(maps.reshape(len(images), -1).mean(1), maps)


class CountingTrainer:
    def __init__(self):
        self.calls = []

    def __call__(self, tc):
        self.calls.append((tc.baseline, tc.class_name, tc.shots, tc.seed, tc.epochs, tc.backbone))
        return NoiseModel(tc.seed + 10 * tc.shots)


def _config(demo_root, out, **kw):
    base = {"data": demo_root, "out": out, "captions": "unused-by-the-fake-trainer", "shots": [1, 2],
            "seeds": [0, 1], "classes": ["pill_box", "hex_nut"], "baseline": "promptad", "resolution": 32,
            "dataset_name": "MVTec-AD-mini", "progress": False,
            "train": {"epochs": 3, "backbone": "fgad-tiny-test", "pretrained": "none"}}
    base.update(kw)
    return B.BenchmarkConfig(**base)


def test_cells_and_shards_partition_deterministically(demo_root, tmp_path):
    cfg = _config(demo_root, tmp_path)
    cells = B.all_cells(cfg, ["pill_box", "hex_nut"])
    assert len(cells) == 2 * 2 * 2 * 2 and cells == sorted(cells)
    shards = [B.shard_cells(cells, 3, i) for i in range(3)]
    assert sorted(c for s in shards for c in s) == cells
    assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])
    assert shards == [B.shard_cells(list(reversed(cells)), 3, i) for i in range(3)]
    assert B.Cell("promptad", "hex_nut", 2, 1).folder(tmp_path) == tmp_path / "cells/promptad/hex_nut/k2_s1"
    with pytest.raises(DetectorError):
        _config(demo_root, tmp_path, num_shards=2, shard_index=2)
    with pytest.raises(DetectorError, match="--captions"):
        _config(demo_root, tmp_path, captions=None)
    assert {c.method for c in B.all_cells(_config(demo_root, tmp_path, main=False), ["a"])} == {"promptad"}
    assert B.parse_int_list("1, 2,4", "--shots") == [1, 2, 4]
    with pytest.raises(DetectorError):
        B.parse_int_list("1,x", "--shots")


def test_run_resume_and_tables(demo_root, tmp_path):
    trainer = CountingTrainer()
    res = B.run_benchmark(_config(demo_root, tmp_path), trainer=trainer, log=lambda s: None)
    assert len(trainer.calls) == 16 and res["ran"] == 16
    # the cell's own values win, flags pass through
    assert ("promptad", "hex_nut", 1, 0, 3, "fgad-tiny-test") in trainer.calls
    assert (None, "pill_box", 2, 1, 3, "fgad-tiny-test") in trainer.calls
    # resume: nothing is recomputed
    again = CountingTrainer()
    B.run_benchmark(_config(demo_root, tmp_path), trainer=again, log=lambda s: None)
    assert again.calls == []
    # tables: files per method and shots, means equal the cells' own metrics.json values
    for m in ("finegrainedad", "promptad"):
        for k in (1, 2):
            assert (tmp_path / "tables" / f"MVTec-AD-mini_{m}_k{k}.md").exists()
    rows = list(csv.DictReader((tmp_path / "tables" / "MVTec-AD-mini_finegrainedad_k1.csv").open()))
    per_cell = {s: json.loads((tmp_path / f"cells/finegrainedad/pill_box/k1_s{s}/metrics.json").read_text())
                for s in (0, 1)}
    vals = [per_cell[s]["metrics"]["pixel_auroc"] for s in (0, 1)]
    pill = next(r for r in rows if r["class_name"] == "pill_box")
    assert float(pill["pixel_auroc_mean"]) == pytest.approx(np.mean(vals))
    assert float(pill["pixel_auroc_std"]) == pytest.approx(np.std(vals, ddof=1))
    summary = (tmp_path / "summary.md").read_text()
    assert "91.04 (paper)" in summary and "94.17 (paper)" not in summary  # promptad paper: 4-shot only
    assert "not meaningful" in summary
    html = (tmp_path / "report.html").read_text()
    assert "Summary" in html and "± " in html
    # per-class bars with spread, one plot per method and summary metric, the paper's mean beside ours
    captions = re.findall(r'<figure class="plot"><img alt="([^"]+)" src="data:image/png;base64,', html)
    assert len(captions) == 4 and sum("the paper&#x27;s mean" in c for c in captions) == 2  # promptad: 4-shot only


def test_shards_then_merge_equal_single_run(demo_root, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    B.run_benchmark(_config(demo_root, single, baseline=None), trainer=CountingTrainer(), log=lambda s: None)
    for i in range(3):
        B.run_benchmark(_config(demo_root, sharded, baseline=None, num_shards=3, shard_index=i),
                        trainer=CountingTrainer(), log=lambda s: None)
    assert not (sharded / "summary.md").exists()
    B.run_benchmark(_config(demo_root, sharded, baseline=None, merge=True), log=lambda s: None)
    for name in ("summary.md", "tables/MVTec-AD-mini_finegrainedad_k2.csv"):
        assert (single / name).read_text() == (sharded / name).read_text()


def test_aggregate_by_hand():
    rows = []
    for c, s, v in [("a", 0, 0.8), ("a", 1, 0.6), ("b", 0, 1.0), ("b", 1, float("nan"))]:
        rows.append({"method": "finegrainedad", "class_name": c, "shots": 1, "seed": s,
                     **{m: v for m in METRIC_KEYS}})
    agg = {a["class_name"]: a for a in B.aggregate(rows)}
    assert agg["a"]["image_auroc_mean"] == pytest.approx(0.7)
    assert agg["a"]["image_auroc_std"] == pytest.approx(math.sqrt(0.02))
    assert agg["b"]["image_auroc_mean"] == 1.0 and agg["b"]["image_auroc_std"] == 0.0
    # mean row: per seed class mean (seed 0: 0.9, seed 1: 0.6 as b is undefined), then mean ± std
    assert agg["mean"]["image_auroc_mean"] == pytest.approx(0.75)
    assert agg["mean"]["image_auroc_std"] == pytest.approx(math.sqrt(0.045))


def test_failed_cell_is_reported_and_others_finish(demo_root, tmp_path):
    def trainer(tc):
        if tc.seed == 1:
            raise DetectorError("boom")
        return NoiseModel(0)

    with pytest.raises(DetectorError, match="4 cell"):
        B.run_benchmark(_config(demo_root, tmp_path, baseline=None), trainer=trainer, log=lambda s: None)
    assert (tmp_path / "cells/finegrainedad/pill_box/k1_s1/error.txt").read_text().startswith("DetectorError")
    assert (tmp_path / "cells/finegrainedad/pill_box/k1_s0/metrics.json").exists()


def test_one_real_tiny_cell(demo_root, tmp_path, tiny_clip_name):
    cfg = _config(demo_root, tmp_path, shots=[1], seeds=[0], classes=["pill_box"], baseline="promptad",
                  dataset_name=None, main=False, captions=None,
                  train={"backbone": tiny_clip_name, "pretrained": "none", "epochs": 1, "image_epochs": 1})
    B.run_benchmark(cfg, log=lambda s: None)
    cell = tmp_path / "cells/promptad/pill_box/k1_s0"
    data = json.loads((cell / "metrics.json").read_text())
    assert data["method"] == "promptad" and data["shots"] == 1 and data["meaningful"] is False
    assert (cell / "checkpoint" / "config.json").exists() and (cell / "threshold.json").exists()
    assert not (cell / "checkpoint" / "threshold.json").exists()  # the evaluation never writes into the checkpoint
    assert 0.0 <= data["metrics"]["image_auroc"] <= 1.0


def test_cells_record_the_pixel_metric_method(demo_root, tmp_path):
    for exact, method in ((False, "histogram"), (True, "exact")):
        out = tmp_path / method
        B.run_benchmark(_config(demo_root, out, shots=[1], seeds=[0], classes=["pill_box"], baseline=None,
                                exact_metrics=exact), trainer=CountingTrainer(), log=lambda s: None)
        data = json.loads((out / "cells/finegrainedad/pill_box/k1_s0/metrics.json").read_text())
        assert data["pixel_metrics"]["method"] == method


def test_summary_states_what_was_run(demo_root, tmp_path):
    """Beside the paper's numbers: recipe, caption source, defect vocabulary, resolution and weights used."""

    class OfficialModel(NoiseModel):
        def __init__(self, seed):
            super().__init__(seed)
            self.meta = {"class_name": "x", "config": {"pretrained": "laion400m_e32", "recipe": "paper"},
                         "backbone": {"name": "ViT-B-16-plus-240", "pretrained": "laion400m_e32",
                                      "weights_sha256": "699c4b84" + "0" * 56},
                         "record": {"defect_vocab": "file:fine_grained_prompts.py",
                                    "provenance": {"backend": "official", "model": "fine_grained_prompts.py"}}}

    def trainer(tc):
        if tc.baseline is None:
            return OfficialModel(0)
        model = NoiseModel(0)
        model.meta["baseline"] = "promptad"
        return model

    B.run_benchmark(_config(demo_root, tmp_path, shots=[1], seeds=[0], classes=["pill_box"]), trainer=trainer,
                    log=lambda s: None)
    summary = (tmp_path / "summary.md").read_text()
    run = summary.split("## What was run")[1].split("##")[0]
    row = next(line for line in run.splitlines() if line.startswith("| finegrainedad"))
    for words in ("paper", "official (fine_grained_prompts.py)", "file:fine_grained_prompts.py", "| 32 |",
                  "ViT-B-16-plus-240 / laion400m_e32 (sha256 699c4b840000…)"):
        assert words in row, (words, row)
    base = next(line for line in run.splitlines() if line.startswith("| promptad"))
    assert "class name (PromptAD templates)" in base and "random (not meaningful)" in base
    assert "What was run" in (tmp_path / "report.html").read_text()
