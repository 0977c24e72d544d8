"""Recipes as data: paper = the defaults, ours = our choices; precedence recipe < file < flags; variants."""
import json
from dataclasses import asdict

import pytest

from detector import recipes as R
from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.method.options import METHOD_FIELDS


def test_paper_recipe_is_exactly_the_defaults_and_ours_differs_in_every_listed_choice():
    assert R.recipe_names() == ["ours", "paper"]
    paper, ours = R.load_recipe("paper"), R.load_recipe("ours")
    defaults = asdict(TrainConfig())
    assert all(defaults[k] == v for k, v in paper.items()), {k: (defaults[k], v) for k, v in paper.items()}
    assert set(paper) == set(ours)
    assert set(paper) - {"recipe"} <= set(METHOD_FIELDS)  # every recipe key is a recorded method option
    differ = {k for k in paper if paper[k] != ours[k]}
    assert differ == set(paper)  # ours changes every choice the paper recipe fixes
    cfg = R.build_train_config("ours", None)
    assert (cfg.recipe, cfg.tau, cfg.vv_blocks, cfg.gate_mode) == ("ours", "exp", "half", "features")


def test_precedence_recipe_then_file_then_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"recipe": "ours", "tau": 50.0, "epochs": 7}))
    cfg = R.build_train_config(None, f)  # the file names its own base recipe
    assert (cfg.recipe, cfg.tau, cfg.epochs, cfg.composition) == ("ours", 50.0, 7, "cosine")
    cfg = R.build_train_config("paper", f, epochs=3, tau="stored")  # --recipe wins over the file's base
    assert (cfg.recipe, cfg.tau, cfg.epochs, cfg.composition) == ("paper", "stored", 3, "public")
    own = tmp_path / "mine.yaml"
    own.write_text("gate_mode: features\nvv_blocks: 2\n")
    cfg = R.build_train_config(own, None)
    assert (cfg.recipe, cfg.gate_mode, cfg.vv_blocks, cfg.tau) == ("mine", "features", 2, "stored")


def test_settings_and_variants_parse_and_refuse_clearly():
    assert R.parse_settings(["tau=exp", "vv_blocks=6", "extra_texts=true", "taps=[3,8]"]) == {
        "tau": "exp", "vv_blocks": 6, "extra_texts": True, "taps": [3, 8]}
    v = R.parse_variants("paper=; ours=recipe=ours;ours_stored=recipe=ours tau=stored")
    assert [n for n, _ in v] == ["paper", "ours", "ours_stored"]
    assert v[0][1] == {} and v[1][1]["recipe"] == "ours" and v[2][1]["tau"] == "stored"
    for bad, words in [("a b=x", "variant name"), ("p=tau", "KEY=VALUE"), ("p=colour=red", "unknown option"),
                       ("p=;p=", "twice"), ("p=recipe=nothing", "recipe 'nothing'")]:
        with pytest.raises(DetectorError, match=words):
            R.parse_variants(bad)
    with pytest.raises(DetectorError, match="gate_mode"):
        TrainConfig(gate_mode="sum")
    with pytest.raises(DetectorError, match="vv_blocks"):
        TrainConfig(vv_blocks="most")


def test_benchmark_variants_run_side_by_side(demo_root, tmp_path):
    from test_benchmark import CountingTrainer

    from detector.run import benchmark as B

    seen = []

    class Recording(CountingTrainer):
        def __call__(self, tc):
            seen.append((tc.out.split("/cells/")[1].split("/")[0], tc.recipe, tc.tau, tc.epochs))
            return super().__call__(tc)

    cfg = B.BenchmarkConfig(data=demo_root, out=tmp_path, captions="x", shots=[1], seeds=[0, 1],
                            classes=["pill_box"], resolution=32, dataset_name="MVTec-AD-mini", progress=False,
                            train={"epochs": 2}, variants=R.parse_variants("paper=;ours=recipe=ours tau=20"))
    res = B.run_benchmark(cfg, trainer=Recording(), log=lambda s: None)
    assert sorted(set(seen)) == [("ours", "ours", 20, 2), ("paper", "paper", "stored", 2)]
    md = (tmp_path / "summary.md").read_text()
    assert "Side by side, 1-shot" in md and "| paper: image AUROC |" in md and "| ours: pixel AUROC |" in md
    assert (tmp_path / "tables" / "MVTec-AD-mini_side_by_side_k1.md").exists()
    assert {r[0] for r in res["summary"]} == {"ours", "paper"}
    assert all("91.04 (paper)" in r for r in res["summary"])  # each variant beside the paper's 1-shot number
    with pytest.raises(DetectorError, match="baseline"):
        B.BenchmarkConfig(data=demo_root, out=tmp_path, captions="x", variants=[("promptad", {})])


def test_train_cli_records_recipe_and_options_in_checkpoint_and_metrics(demo_root, tmp_path, tiny_clip_name):
    from typer.testing import CliRunner

    from detector.cli import app

    runner = CliRunner()
    ckpt, ev = tmp_path / "ckpt", tmp_path / "ev"
    res = runner.invoke(app, ["train", "--data", str(demo_root), "--class", "pill_box", "--shots", "1",
                              "--out", str(ckpt), "--backbone", tiny_clip_name, "--pretrained", "none",
                              "--epochs", "1", "--image-epochs", "1", "--baseline", "promptad",
                              "--recipe", "ours", "--set", "tau=30", "--set", "vv_blocks=3"])
    assert res.exit_code == 0, res.output + res.stderr
    meta = json.loads((ckpt / "config.json").read_text())["meta"]
    assert meta["config"]["recipe"] == "ours" and meta["tau"] == 30.0
    assert meta["method"]["gate_mode"] == "features" and meta["backbone"]["vv_blocks"] == 3
    res = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(demo_root), "--out", str(ev),
                              "--resolution", "32"])
    assert res.exit_code == 0, res.output + res.stderr
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["recipe"] == "ours" and metrics["method_options"]["image_score_group"] == "image"
    res = runner.invoke(app, ["train", "--class", "pill_box", "--out", str(tmp_path / "c"), "--set", "tau"])
    assert res.exit_code != 0 and "KEY=VALUE" in res.stderr
