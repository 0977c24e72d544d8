"""`detector` CLI: instant help, one-line errors, train -> eval -> predict on the synthetic set (tiny CLIP)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from detector.cli import app
from detector.errors import DetectorError
from detector.eval.overlay_caption import MIN_WIDTH
from detector.method.model import Prediction
from detector.run import predict as P
from detector.store.saved_detector import save_detector
from fsad_data import load_rgb

runner = CliRunner()


def test_help_is_instant_and_imports_no_torch():
    code = ("import sys; sys.argv = ['detector', '--help']\n"
            "from detector.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', [m for m in ('torch', 'open_clip', 'transformers', 'datasets', 'cv2') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    for cmd in ("train", "eval", "predict", "benchmark"):
        assert cmd in out.stdout


@pytest.mark.parametrize("args", [
    ["eval", "--checkpoint", "{tmp}/nope", "--data", "{tmp}", "--out", "{tmp}/o"],
    ["predict", "{tmp}/missing.png", "--checkpoint", "{tmp}/nope", "--out", "{tmp}/o"],
    ["train", "--data", "{tmp}/no-data", "--class", "x", "--baseline", "promptad", "--out", "{tmp}/c"],
    ["benchmark", "--data", "{tmp}", "--out", "{tmp}/b"],
])
def test_user_errors_are_one_red_line(tmp_path, args):
    res = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 1, res.output
    err = res.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in res.output + res.stderr
    assert len(err.splitlines()) == 1 or len(err) > 100  # one logical line (the terminal may wrap it)


class RecordingModel:
    def __init__(self):
        self.seen = []

    def predict(self, images, resolution=256, branch="fused", batch_size=8):
        self.seen += images
        maps = np.stack([np.linspace(0, 1, resolution * resolution, dtype=np.float32).reshape(resolution, -1)
                         for _ in images])
        return Prediction(np.arange(len(images), dtype=np.float32), maps)


def test_predict_loader_feeds_rgb_and_writes_outputs(demo_root, tmp_path):
    folder = demo_root / "pill_box" / "test"
    items = P.list_inputs([folder, demo_root / "hex_nut" / "test" / "good" / "000.png"])
    assert items[0][0] == "pill_box/test/color_spot/000.png" and items[-1][0] == "hex_nut/test/good/000.png"
    model = RecordingModel()
    thr = P.Thresholds(0.5, 1.0, None, "value")
    rows = P.predict_paths(model, items[:3] + items[-1:], tmp_path, P.PredictSettings(thresholds=thr, resolution=32, batch_size=3))
    for (_, path), seen in zip(items[:3] + items[-1:], model.seen):
        np.testing.assert_array_equal(seen, load_rgb(path))  # the exact RGB decode of fsad_data
    assert model.seen[0][64, 64, 0] > 150 and model.seen[0][64, 64, 2] < 100  # red part stays red
    amap = np.load(tmp_path / "maps" / "pill_box/test/color_spot/000.npy")
    assert amap.shape == (256, 256) and amap.dtype == np.float32
    mask = load_rgb(tmp_path / "masks" / "pill_box/test/color_spot/000.png")[..., 0] > 0
    np.testing.assert_array_equal(mask, amap >= 0.5)
    overlay = load_rgb(tmp_path / "overlays" / "hex_nut/test/good/000.png")  # the picture, a caption band below
    assert overlay.shape[0] > 256 and overlay.shape[1] == max(256, MIN_WIDTH) and overlay.shape[2] == 3
    table = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert table[0]["map"] == "maps/pill_box/test/color_spot/000.npy"
    assert table[0]["mask"] == "masks/pill_box/test/color_spot/000.png"
    assert table[-1]["overlay"] == "overlays/hex_nut/test/good/000.png"
    assert [r["name"] for r in table] == [r["name"] for r in rows] and table[1]["anomalous"] == "True"
    data = json.loads((tmp_path / "scores.json").read_text())
    assert data["threshold"]["pixel"] == 0.5 and len(data["images"]) == 4


def test_threshold_parsing(tmp_path):
    assert P.resolve_threshold("none", tmp_path).pixel is None
    assert P.resolve_threshold("0.25", tmp_path).pixel == 0.25
    with pytest.raises(DetectorError, match="detector eval"):
        P.resolve_threshold("auto", tmp_path)
    with pytest.raises(DetectorError):
        P.resolve_threshold("high", tmp_path)
    (tmp_path / "threshold.json").write_text(json.dumps(
        {"fused": {"pixel_threshold": 0.3, "image_threshold": 0.6, "resolution": 64}}))
    t = P.resolve_threshold("auto", tmp_path)
    assert (t.pixel, t.image, t.resolution) == (0.3, 0.6, 64)
    with pytest.raises(DetectorError, match="branch"):
        P.resolve_threshold("auto", tmp_path, branch="visual")


def test_train_eval_predict_end_to_end(demo_root, tmp_path, tiny_clip_name):
    ckpt, ev, pr = tmp_path / "ckpt", tmp_path / "eval", tmp_path / "pred"
    res = runner.invoke(app, ["train", "--data", str(demo_root), "--class", "pill_box", "--shots", "1",
                              "--seed", "0", "--out", str(ckpt), "--backbone", tiny_clip_name, "--pretrained",
                              "none", "--epochs", "1", "--image-epochs", "1", "--baseline", "promptad"])
    assert res.exit_code == 0, res.output + res.stderr
    assert (ckpt / "config.json").exists()
    # stdout is not a terminal here: plain progress lines instead of a bar
    assert "train: pixel prompts 0/1 epochs" in res.output and "train: image prompts epoch 1/1, loss " in res.output
    res = runner.invoke(app, ["eval", "--checkpoint", str(ckpt), "--data", str(demo_root), "--out", str(ev),
                              "--resolution", "64", "--batch-size", "5"])
    assert res.exit_code == 0, res.output + res.stderr
    assert "not meaningful" in res.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["class_name"] == "pill_box" and metrics["resolution"] == 64 and metrics["shots"] == 1
    naming = metrics.get("naming") or {}
    said = " ".join(res.output.split())
    assert ("defect naming:" in said) == bool(naming.get("n_defect_regions"))  # the figure is said where it exists
    if naming.get("n_defect_regions"):
        assert f"of {naming['n_defect_regions']} ground-truth regions" in said
    assert (ev / "report.html").exists() and (ev / "threshold.json").exists()
    assert not (ckpt / "threshold.json").exists()  # the evaluation never writes into the checkpoint
    card = (ckpt / "README.md").read_text()  # the model card states this evaluation
    assert "| fused | 64 | " in card and "Not meaningful: random weights" in card
    folder = demo_root / "pill_box" / "test" / "color_spot"
    res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(pr),
                              "--threshold", str(ev), "--batch-size", "2"])
    assert res.exit_code == 0, res.output + res.stderr
    # predict and eval score the same images identically (same loader, same model, same resolution)
    ev_scores = {r["id"]: float(r["score"]) for r in csv.DictReader((ev / "scores.csv").open())}
    pr_rows = list(csv.DictReader((pr / "scores.csv").open()))
    assert len(pr_rows) == 3 and all("anomalous" in r for r in pr_rows)
    for r in pr_rows:
        assert float(r["score"]) == pytest.approx(ev_scores[f"pill_box/test/color_spot/{r['name'][:-4]}"], abs=1e-5)
    assert np.load(pr / "maps" / "000.npy").shape == (256, 256)
    assert (pr / "masks" / "000.png").exists()
    # named defects: a region label map per image, its defects in scores.json and defects.json
    named = json.loads((pr / "defects.json").read_text())["images"]
    scores = json.loads((pr / "scores.json").read_text())["images"]
    assert [n["name"] for n in named] == [r["name"] for r in pr_rows] == [r["name"] for r in scores]
    from PIL import Image

    for n, s, r in zip(named, scores, pr_rows):
        labels = np.asarray(Image.open(pr / n["regions"]))
        assert labels.shape == (256, 256) and labels.max() == len(n["defects"]) == int(r["n_defects"])
        assert s["defects"] == n["defects"]
        for k, d in enumerate(n["defects"], start=1):
            ys, xs = np.nonzero(labels == k)
            assert d["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # the mask's box, image pixels
            assert d["component"] == "object" and d["sentence"] in r["defects"]  # promptad: one image group
    assert json.loads((ev / "metrics.json").read_text())["naming"]["threshold"] == pytest.approx(
        metrics["metrics"]["pixel_f1_threshold"])
    assert (ev / "defects.json").exists() and "Threshold explorer" in (ev / "report.html").read_text()
    res = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(pr),
                              "--threshold", str(ev), "--resolution", "128"])
    assert res.exit_code == 1 and "resolution" in res.stderr


def test_benchmark_command_runs_resumes_and_merges(demo_root, tmp_path, tiny_clip_name):
    args = ["benchmark", "--data", str(demo_root), "--out", str(tmp_path), "--shots", "1", "--seeds", "0",
            "--classes", "pill_box", "--baseline", "promptad", "--no-main", "--backbone", tiny_clip_name,
            "--pretrained", "none", "--epochs", "1", "--image-epochs", "1", "--resolution", "32",
            "--dataset-name", "visa-mini"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output + res.stderr
    assert "86.02 (paper)" not in res.output and "not meaningful" in res.output  # promptad paper: 4-shot
    assert (tmp_path / "tables" / "visa-mini_promptad_k1.md").exists()
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "1 already finished, 0 to run" in res.output
    res = runner.invoke(app, [*args, "--merge"])
    assert res.exit_code == 0 and "tables written" in res.output


# ---- bad input through the CLI: one red line, exit 1, nothing written ------------------------------------------

def _error_line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error:"), res.output + res.stderr
    assert "Traceback" not in res.output + res.stderr
    return lines[0]


def _caption_dataset(folder, class_names):
    """A minimal `mfsc build`-style classes dataset holding only ``class_names``."""
    import datasets

    rows = [{"schema_version": 1, "class_name": c, "object_name": c, "caption": c, "defect_states": ["crack"],
             "image_view": {"foreground": c, "background": "white"}, "foreground_view": {"count": 1, "relation": ""},
             "components": [], "texts": []} for c in class_names]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder / "classes"))
    return folder


@pytest.mark.parametrize("args, flag", [
    (["train", "--class", "pill_box", "--out", "{file}"], "--out"),
    (["eval", "--checkpoint", "{dir}", "--data", "{dir}", "--out", "{file}"], "--out"),
    (["eval", "--checkpoint", "{file}", "--data", "{dir}", "--out", "{dir}/o"], "--checkpoint"),
    (["predict", "{dir}", "--checkpoint", "{dir}", "--out", "{file}"], "--out"),
    (["predict", "{dir}", "--checkpoint", "{file}", "--out", "{dir}/o"], "--checkpoint"),
    (["benchmark", "--data", "{dir}", "--out", "{file}", "--baseline", "promptad", "--no-main"], "--out"),
])
def test_a_file_where_a_folder_goes_is_refused_before_any_work(tmp_path, args, flag):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    res = runner.invoke(app, [a.format(file=f, dir=tmp_path) for a in args])
    assert f"{flag} {f} is a file; give " in _error_line(res)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and f.read_text() == "x"


@pytest.mark.parametrize("cmd, extra, words", [
    ("eval", ["--branch", "both"], "'both' is not one of 'fused', 'text', 'visual'"),
    ("predict", ["--branch", "both"], "'both' is not one of 'fused', 'text', 'visual'"),
    ("eval", ["--resolution", "0"], "--resolution"),
    ("predict", ["--resolution", "4"], "--resolution"),
    ("benchmark", ["--resolution", "0"], "--resolution"),
])
def test_bad_choices_and_ranges_are_usage_errors_before_any_output(tmp_path, cmd, extra, words):
    where = {"eval": ["--checkpoint", str(tmp_path), "--data", str(tmp_path)],
             "predict": ["--checkpoint", str(tmp_path), str(tmp_path)],
             "benchmark": ["--data", str(tmp_path), "--baseline", "promptad", "--no-main"]}[cmd]
    res = runner.invoke(app, [cmd, *where, "--out", str(tmp_path / "o"), *extra], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and words in res.stderr, res.stderr
    assert not (tmp_path / "o").exists()


def _no_gpu():
    import torch

    return not torch.cuda.is_available()


@pytest.mark.parametrize("extra, words", [
    (["--shots", "0"], "key 'shots': expected a value at least 1, got 0"),
    (["--shots", "1,50"], "has 8 normal training images, fewer than k=50"),
    (["--num-shards", "2", "--shard-index", "5"], "--shard-index 5 must be in 0..1"),
    (["--main", "--captions", "{caps}"], "class 'pill_box' is not in the caption dataset"),
    pytest.param(["--device", "cuda"], "--device cuda: CUDA is not available",
                 marks=pytest.mark.skipif(not _no_gpu(), reason="this machine has CUDA")),
])
def test_benchmark_refuses_what_would_fail_every_cell_before_the_first(demo_root, tmp_path, extra, words):
    caps = _caption_dataset(tmp_path / "caps", ["bottle"])  # captions of another data set
    out = tmp_path / "bench"
    res = runner.invoke(app, ["benchmark", "--data", str(demo_root), "--out", str(out), "--classes", "pill_box",
                              "--shots", "1", "--seeds", "0", "--baseline", "promptad", "--no-main",
                              *[a.format(caps=caps) for a in extra]])
    assert words in _error_line(res)
    assert not out.exists()


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno
    import os

    target = tmp_path / "o" / "scores.csv"

    def full(_config):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(P, "run_predict", full)
    res = runner.invoke(app, ["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    line = _error_line(res)
    assert os.strerror(errno.ENOSPC) in line and str(target) in line and "free disk space" in line


def test_ctrl_c_exits_130_with_one_hint_or_trains_own_line(tmp_path, monkeypatch):
    import detector.run.train as T

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "run_predict", stop)
    res = runner.invoke(app, ["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 130 and len(lines) == 1 and "rerun" in lines[0]
    monkeypatch.setattr(T, "train", stop)  # train prints its own line (epochs saved, how to resume)
    res = runner.invoke(app, ["train", "--class", "pill_box", "--out", str(tmp_path / "c")])
    assert res.exit_code == 130 and not res.stderr.strip()


def test_restart_reaches_train_config(demo_root, tmp_path, monkeypatch):
    import detector.run.benchmark as B
    import detector.run.train as T

    seen = []
    monkeypatch.setattr(T, "train", lambda cfg, progress=True: seen.append(cfg.restart) or tmp_path)
    for flag in ([], ["--restart"]):
        res = runner.invoke(app, ["train", "--class", "pill_box", "--out", str(tmp_path / "c"), *flag])
        assert res.exit_code == 0, res.output + res.stderr
    monkeypatch.setattr(B, "run_benchmark", lambda cfg, log: seen.append(
        B.train_config_for(B.Cell("promptad", "pill_box", 1, 0), cfg).restart) or {})
    res = runner.invoke(app, ["benchmark", "--data", str(demo_root), "--out", str(tmp_path / "b"), "--classes",
                              "pill_box", "--shots", "1", "--seeds", "0", "--baseline", "promptad", "--no-main",
                              "--restart"])
    assert res.exit_code == 0, res.output + res.stderr
    assert seen == [False, True, True]


# options that are simply off (or required in practice) when not given
UNSET_MEANS_NOT_USED = {"captions", "data", "class_name", "shots_file", "baseline", "config"}


def test_every_option_has_a_one_line_help_with_its_default():
    from dataclasses import asdict

    import typer

    from detector.config import TrainConfig

    defaults = asdict(TrainConfig())
    for name, cmd in typer.main.get_command(app).commands.items():
        for p in cmd.params:
            if p.param_type_name != "option":
                continue
            where = f"detector {name} {p.opts[0]}"
            assert p.help and "\n" not in p.help and "[" not in p.help, where  # rich would eat "[x]"
            assert (p.default is not None or isinstance(p.show_default, str) or p.required
                    or p.name in UNSET_MEANS_NOT_USED), f"{where}: no default shown"
            if isinstance(p.show_default, str) and p.name in defaults and name in ("train", "benchmark"):
                assert p.show_default == str(defaults[p.name]), f"{where}: help says {p.show_default}"


def test_training_flags_are_written_once_for_train_and_benchmark():
    """TRAIN_FLAGS: train and benchmark get the same options (names, help, shown defaults), every one of them."""
    import typer

    from detector.cli import TRAIN_FLAGS

    commands = typer.main.get_command(app).commands

    def flags(name):
        return {p.name: (p.opts, p.help, p.show_default, p.default) for p in commands[name].params
                if p.name in TRAIN_FLAGS}

    assert set(flags("train")) == set(TRAIN_FLAGS) and flags("train") == flags("benchmark")


@pytest.fixture(scope="module")
def widget_ckpt(tmp_path_factory, tiny_clip_name):
    """A 1-epoch class-name checkpoint of a class named 'widget' (in no data set here)."""
    from detector.config import TrainConfig
    from detector.run.train import train_model

    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=1, image_epochs=1,
                      shots=1, baseline="promptad")
    model = train_model(cfg, progress=False, shot_images=[np.full((64, 64, 3), 200, np.uint8)],
                        shot_names=["good/000.png"], record=None)
    return save_detector(model, tmp_path_factory.mktemp("ckpt") / "widget")


@pytest.mark.parametrize("case, words", [
    ("empty folder", "no images found in"),
    ("text file", "is not an image"),
    ("data without the class", "class widget not found in"),
])
def test_predict_and_eval_on_inputs_without_images_of_the_class(widget_ckpt, demo_root, tmp_path, case, words):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "o"
    args = {"empty folder": ["predict", tmp_path / "empty"], "text file": ["predict", tmp_path / "notes.txt"],
            "data without the class": ["eval", "--data", demo_root]}[case]
    res = runner.invoke(app, [str(a) for a in [*args, "--checkpoint", widget_ckpt, "--out", out]])
    assert words in _error_line(res)
    assert not out.exists()


def test_progress_in_a_pipe_is_plain_lines_and_a_short_run_prints_none(tmp_path, monkeypatch):
    """The command asks for progress; outside a terminal detector.run.outputs.progress draws no bar but writes a
    plain line at most every 15 s, so a short run's output is its summary line alone."""
    from detector.run import outputs

    seen = []

    def fake(config):
        seen.append(config.progress)
        step = outputs.progress(config.progress, 3, "predicting")
        step(3)
        step(0, done=True)
        return []

    monkeypatch.setattr(P, "run_predict", fake)
    res = runner.invoke(app, ["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0 and seen == [True] and res.stdout.startswith("0 image(s) scored")
