"""The detector writes only what it owns, never mixes results, and survives kill -9 (issue 11, sections 1-3).

Each test is one case a hostile user tried: a foreign folder given as ``--out``, a predict output inside its
input, clashing image names, an evaluation killed half-way, a benchmark rerun with other settings, two trainings
into one folder, a shot edited between a kill and the rerun, a half-deleted resumable state, orphan temporary
folders, and the byte-identity of two runs with the same seed. Tiny CLIP, synthetic data, one epoch.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detector.cli import app

runner = CliRunner()


def _train_args(demo_root: Path, out: Path, tiny: str, *extra: str) -> list[str]:
    return ["train", "--data", str(demo_root), "--class", "pill_box", "--shots", "1", "--seed", "0", "--out",
            str(out), "--backbone", tiny, "--pretrained", "none", "--epochs", "1", "--image-epochs", "1",
            "--baseline", "promptad", *extra]


def _invoke(args: list[str]):
    res = runner.invoke(app, [str(a) for a in args])
    return res, " ".join((res.output + (res.stderr or "")).split())


def _one_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = res.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in res.output, res.output
    return " ".join(err.split())


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory, tiny_clip_name) -> Path:
    """One tiny checkpoint trained through the CLI (module-wide, read-only for the tests)."""
    out = tmp_path_factory.mktemp("rel-out") / "ckpt"
    res, text = _invoke(_train_args(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, text
    return out


# ============================================================================ 1. outputs: write only what is ours
def test_train_refuses_a_foreign_folder_before_any_work(demo_root, tmp_path, tiny_clip_name):
    """A Hugging Face model folder (its own config.json) given as --out: refused at once, naming the folder;
    nothing in it changes, no training state is started, and --restart does not change that."""
    hf = tmp_path / "my-model"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (hf / "README.md").write_text("my thesis model\n")
    before = _tree(hf)
    for extra in ([], ["--restart"]):
        res, _ = _invoke(_train_args(demo_root, hf, tiny_clip_name, *extra))
        line = _one_error(res)
        assert str(hf) in line and "not a checkpoint" in line, line
        assert _tree(hf) == before
        assert not (tmp_path / "my-model.partial").exists()  # refused before the first epoch
        assert "epochs" not in res.output  # no training line was printed


def test_train_replaces_its_own_checkpoint(demo_root, tmp_path, tiny_clip_name, trained):
    out = tmp_path / "ckpt"
    shutil.copytree(trained, out)
    res, text = _invoke(_train_args(demo_root, out, tiny_clip_name, "--seed", "1"))
    assert res.exit_code == 0, text
    meta = json.loads((out / "config.json").read_text())["meta"]
    assert meta["config"]["seed"] == 1


def test_train_and_eval_into_a_symlinked_out_write_where_the_link_points(demo_root, tmp_path, tiny_clip_name,
                                                                          trained):
    """--out LINK naming an earlier checkpoint / evaluation elsewhere: the results land in the folder it names, the
    link stays a link (before: the link was replaced by a new folder and the named folder kept the old run)."""
    real = tmp_path / "disk" / "ckpt"
    shutil.copytree(trained, real)
    link = tmp_path / "ckpt"
    link.symlink_to(real, target_is_directory=True)
    res, text = _invoke(_train_args(demo_root, link, tiny_clip_name, "--seed", "1"))
    assert res.exit_code == 0, text
    assert link.is_symlink() and json.loads((real / "config.json").read_text())["meta"]["config"]["seed"] == 1
    ev_real = tmp_path / "disk" / "eval"
    res, text = _invoke(_eval_args(real, demo_root, ev_real))
    assert res.exit_code == 0, text
    (ev_real / "metrics.json").write_text((ev_real / "metrics.json").read_text())  # an earlier evaluation
    before = (ev_real / "metrics.json").stat().st_mtime_ns
    ev_link = tmp_path / "eval"
    ev_link.symlink_to(ev_real, target_is_directory=True)
    res, text = _invoke(_eval_args(link, demo_root, ev_link))
    assert res.exit_code == 0, text
    assert ev_link.is_symlink() and (ev_real / "metrics.json").stat().st_mtime_ns != before


def test_push_dry_run_never_replaces_a_folder_it_did_not_write(trained, tmp_path):
    """`detector push --dry-run DIR`: a folder with a README.md (a thesis, a project) is not a dry run; before, it
    was replaced whole. Its own earlier dry run (the marker) is replaced."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "README.md").write_text("# my thesis\n")
    (thesis / "main.py").write_text("print('years of work')\n")
    before = _tree(thesis)
    res, _ = _invoke(["push", trained, "--repo-id", "me/model", "--dry-run", thesis])
    line = _one_error(res)
    assert str(thesis) in line and "not an earlier dry run" in line, line
    assert _tree(thesis) == before
    dry = tmp_path / "dry"
    for _ in range(2):
        res, text = _invoke(["push", trained, "--repo-id", "me/model", "--dry-run", dry])
        assert res.exit_code == 0, text
    assert (dry / "README.md").is_file() and (dry / ".detector-dry-run").is_file()


def test_predict_never_reads_its_own_outputs(trained, demo_root, tmp_path):
    """`predict DIR --out DIR/sub`, twice: the second run scores the same images (not the first run's overlays
    and masks)."""
    folder = tmp_path / "imgs"
    shutil.copytree(demo_root / "pill_box" / "test" / "color_spot", folder)
    out = folder / "pred"
    for _ in range(2):
        res, text = _invoke(["predict", folder, "--checkpoint", trained, "--out", out, "--threshold", "0.5"])
        assert res.exit_code == 0, text
        rows = list(csv.DictReader((out / "scores.csv").open()))
        assert sorted(r["name"] for r in rows) == ["000.png", "001.png", "002.png"], rows


def test_predict_refuses_a_folder_it_did_not_write_before_any_work(trained, demo_root, tmp_path):
    """A user's folder (their own scores.csv) as --out: refused at once, naming it, nothing in it changes; a file
    as --out and an input inside an earlier predict output are refused too."""
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "scores.csv").write_text("my,own,scores\n")
    (thesis / "notes.txt").write_text("years of work\n")
    before = _tree(thesis)
    folder = demo_root / "pill_box" / "test" / "good"
    res, _ = _invoke(["predict", folder, "--checkpoint", trained, "--out", thesis])
    line = _one_error(res)
    assert str(thesis) in line and "not an earlier output of `detector predict`" in line, line
    assert _tree(thesis) == before and sorted(p.name for p in tmp_path.iterdir()) == ["thesis"]
    a_file = tmp_path / "out.txt"
    a_file.write_text("x")
    res, _ = _invoke(["predict", folder, "--checkpoint", trained, "--out", a_file])
    assert str(a_file) in _one_error(res) and a_file.read_text() == "x"
    out = tmp_path / "pred"
    res, text = _invoke(["predict", folder, "--checkpoint", trained, "--out", out])
    assert res.exit_code == 0, text
    earlier = _tree(out)
    res, _ = _invoke(["predict", out / "overlays" / "000.png", "--checkpoint", trained, "--out", out])
    line = _one_error(res)
    assert "inside --out" in line and str(out) in line, line
    assert _tree(out) == earlier


def test_predict_replaces_its_own_output_whole(trained, demo_root, tmp_path):
    """A rerun with fewer images leaves no map, overlay or mask of the earlier run beside its own."""
    folder = demo_root / "pill_box" / "test" / "good"
    out = tmp_path / "pred"
    res, text = _invoke(["predict", folder, "--checkpoint", trained, "--out", out, "--threshold", "0.5"])
    assert res.exit_code == 0, text
    assert len(list((out / "maps").iterdir())) > 1 and json.loads((out / "scores.json").read_text())["format"]
    res, text = _invoke(["predict", folder / "000.png", "--checkpoint", trained, "--out", out])
    assert res.exit_code == 0, text
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "maps/000.npy", "overlays/000.png", "scores.csv", "scores.json"]


def test_predict_interrupted_leaves_the_earlier_output_whole(trained, demo_root, tmp_path, monkeypatch):
    folder = demo_root / "pill_box" / "test" / "good"
    out = tmp_path / "pred"
    res, text = _invoke(["predict", folder, "--checkpoint", trained, "--out", out])
    assert res.exit_code == 0, text
    first = _tree(out)
    from detector.eval import report

    def stop(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C in the second pass: the maps of this run are written, the overlays not

    monkeypatch.setattr(report, "overlay", stop)
    res, text = _invoke(["predict", folder / "001.png", "--checkpoint", trained, "--out", out])
    assert res.exit_code == 130 and "left as it was" in text, text
    assert _tree(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred"]  # no temporary folder left


def test_predict_never_reads_what_a_killed_run_left_inside_its_input(trained, demo_root, tmp_path):
    """`predict DIR --out DIR/sub` after a run killed mid-write: its temporary folder inside DIR is not an input."""
    folder = tmp_path / "imgs"
    shutil.copytree(demo_root / "pill_box" / "test" / "color_spot", folder)
    orphan = folder / f".pred.tmp-{_dead_pid()}-0badf00d" / "overlays"
    orphan.mkdir(parents=True)
    shutil.copy(folder / "000.png", orphan / "000.png")
    out = folder / "pred"
    res, text = _invoke(["predict", folder, "--checkpoint", trained, "--out", out])
    assert res.exit_code == 0, text
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert sorted(r["name"] for r in rows) == ["000.png", "001.png", "002.png"], rows
    assert not orphan.parent.exists()


# ====================================================================== 2. results: never mixed, never silently wrong
def test_predict_output_names_are_unique_and_keep_the_file_name(trained, demo_root, tmp_path):
    src = demo_root / "pill_box" / "test" / "color_spot"
    inputs = []
    for i, name in enumerate(["x.jpg", "x.png", "x_1.png"]):
        img = np.asarray(Image.open(src / f"00{i}.png").convert("RGB"))
        Image.fromarray(img).save(tmp_path / name, quality=95)
        inputs.append(tmp_path / name)
    out = tmp_path / "pred"
    res, text = _invoke(["predict", *inputs, "--checkpoint", trained, "--out", out])
    assert res.exit_code == 0, text
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["name"] for r in rows] == ["x.jpg", "x.png", "x_1.png"]
    assert [Path(r["path"]).name for r in rows] == ["x.jpg", "x.png", "x_1.png"]
    maps = sorted(p.name for p in (out / "maps").iterdir())
    assert maps == ["x_1.npy", "x_jpg.npy", "x_png.npy"]  # one extension; x.jpg and x.png keep theirs apart
    assert [r["map"] for r in rows] == ["maps/x_jpg.npy", "maps/x_png.npy", "maps/x_1.npy"]
    assert [r["overlay"] for r in rows] == ["overlays/x_jpg.png", "overlays/x_png.png", "overlays/x_1.png"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["x_1.png", "x_jpg.png", "x_png.png"]
    # each map is its own image's: the three images differ, so do their maps
    a, b, c = (np.load(out / "maps" / m) for m in maps)
    assert not np.array_equal(a, b) and not np.array_equal(b, c)


def test_predict_names_in_folders_keep_the_relative_path(trained, tmp_path, demo_root):
    src = demo_root / "pill_box" / "test"
    folder = tmp_path / "in"
    for sub in ("a", "b"):
        (folder / sub).mkdir(parents=True)
        shutil.copy(src / "good" / "000.png", folder / sub / "000.png")
    out = tmp_path / "pred"
    res, text = _invoke(["predict", folder, "--checkpoint", trained, "--out", out])
    assert res.exit_code == 0, text
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["name"] for r in rows] == ["a/000.png", "b/000.png"]
    assert (out / "maps" / "a" / "000.npy").is_file() and (out / "overlays" / "b" / "000.png").is_file()
    assert [(r["map"], r["overlay"]) for r in rows] == [("maps/a/000.npy", "overlays/a/000.png"),
                                                     ("maps/b/000.npy", "overlays/b/000.png")]


def _eval_args(ckpt: Path, demo_root: Path, out: Path) -> list:
    return ["eval", "--checkpoint", ckpt, "--data", demo_root, "--out", out, "--resolution", "32"]


def test_eval_replaces_the_whole_evaluation_or_nothing(trained, demo_root, tmp_path, monkeypatch):
    """A second evaluation (another checkpoint) that dies before its end leaves the first one whole: its
    metrics.json beside its own CSVs, never one checkpoint's metrics beside another's scores."""
    out = tmp_path / "eval"
    res, text = _invoke(_eval_args(trained, demo_root, out))
    assert res.exit_code == 0, text
    first = _tree(out)
    other = tmp_path / "other"
    res, text = _invoke(_train_args(demo_root, other, "fgad-tiny-test", "--seed", "3"))
    assert res.exit_code == 0, text

    from detector.eval import report

    def boom(*a, **k):
        raise KeyboardInterrupt  # the run stops late: after the CSVs, before the end

    monkeypatch.setattr(report, "write_report", boom)
    res, _ = _invoke(_eval_args(other, demo_root, out))
    assert res.exit_code == 130
    assert _tree(out) == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".eval.")]  # no temporary left behind


def test_eval_refuses_a_folder_that_is_not_an_evaluation(trained, demo_root, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("\\chapter{Intro}\n")
    res, _ = _invoke(_eval_args(trained, demo_root, out))
    line = _one_error(res)
    assert str(out) in line
    assert (out / "chapter1.tex").read_text() == "\\chapter{Intro}\n" and len(list(out.iterdir())) == 1


def test_eval_of_a_read_only_checkpoint_completes(trained, demo_root, tmp_path, monkeypatch):
    """The model card of a checkpoint that cannot be written (read-only, shared) is skipped; the evaluation,
    its threshold.json included, is whole."""
    from detector.run import evaluate

    def read_only(*a, **k):
        raise PermissionError(13, "Permission denied", str(trained))

    monkeypatch.setattr(evaluate, "record_evaluation", read_only)  # the card's writer, as eval calls it
    ev = tmp_path / "eval"
    res, text = _invoke(_eval_args(trained, demo_root, ev))
    assert res.exit_code == 0, text
    assert (ev / "metrics.json").is_file() and (ev / "threshold.json").is_file()
    assert "model card" in text and "was not updated" in text and "Permission denied" in text  # said, not silent


def test_eval_of_a_hub_id_reads_its_snapshot_and_never_writes_into_the_cache(trained, demo_root, tmp_path,
                                                                            monkeypatch):
    """`detector eval --checkpoint ORG/NAME` evaluates the cached snapshot (HF_HUB_OFFLINE=1 here) and writes
    only its --out: the Hub cache is not ours to change, so no evaluation.json or card goes there."""
    from detector_fixtures import hub_snapshot

    repo = hub_snapshot(trained, tmp_path / "hub", "org/pill-box-detector", monkeypatch)
    before = _tree(repo)
    ev = tmp_path / "eval"
    res, text = _invoke(["eval", "--checkpoint", "org/pill-box-detector", "--data", demo_root, "--out", ev,
                         "--resolution", "32"])
    assert res.exit_code == 0, text
    assert json.loads((ev / "metrics.json").read_text())["checkpoint"] == "org/pill-box-detector"
    assert _tree(repo) == before
    res, _ = _invoke(["eval", "--checkpoint", "org/not-cached", "--data", demo_root, "--out", tmp_path / "e2"])
    assert "could not be fetched from the Hub" in _one_error(res)


def test_eval_leaves_the_checkpoint_untouched_and_predict_finds_the_threshold(trained, demo_root, tmp_path):
    """threshold.json goes with the evaluation (a read-only checkpoint folder works); predict takes it from the
    evaluation folder or file, and `auto` from the evaluation that eval recorded in evaluation.json."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    before = _tree(ckpt)
    ev = tmp_path / "eval"
    res, text = _invoke(_eval_args(ckpt, demo_root, ev))
    assert res.exit_code == 0, text
    after = _tree(ckpt)
    assert all(after[k] == before[k] for k in ("config.json", "model.safetensors"))
    assert not (ckpt / "threshold.json").exists() and not (ckpt / ".evaluation.lock").exists()
    assert "fused" in json.loads((ckpt / "evaluation.json").read_text())  # what the card shows, documented
    thr = json.loads((ev / "threshold.json").read_text())
    assert thr["fused"]["resolution"] == 32
    folder = demo_root / "pill_box" / "test" / "color_spot"
    for spec in (ev, ev / "threshold.json"):
        out = tmp_path / f"pred-{Path(spec).name}"
        res, text = _invoke(["predict", folder, "--checkpoint", ckpt, "--out", out, "--threshold", spec])
        assert res.exit_code == 0, text
        assert len(list((out / "masks").iterdir())) == 3
    res, text = _invoke(["predict", folder, "--checkpoint", ckpt, "--out", tmp_path / "p3", "--threshold", "auto"])
    assert res.exit_code == 0, text
    used = json.loads((tmp_path / "p3" / "scores.json").read_text())["threshold"]
    assert used["pixel"] == thr["fused"]["pixel_threshold"] and used["image"] == thr["fused"]["image_threshold"]
    (ckpt / "evaluation.json").unlink()  # no evaluation recorded: one line saying which eval to run
    res, _ = _invoke(["predict", folder, "--checkpoint", ckpt, "--out", tmp_path / "p4", "--threshold", "auto"])
    line = _one_error(res)
    assert "--threshold" in line and "detector eval --checkpoint" in line


def _bench_args(demo_root: Path, out: Path, tiny: str, *extra: str) -> list:
    return ["benchmark", "--data", demo_root, "--out", out, "--classes", "pill_box", "--shots", "1", "--seeds", "0",
            "--no-main", "--baseline", "promptad", "--backbone", tiny, "--pretrained", "none", "--epochs", "1",
            "--image-epochs", "1", "--resolution", "32", "--dataset-name", "synthetic", *extra]


def test_benchmark_rerun_with_other_settings_is_refused_naming_them(demo_root, tmp_path, tiny_clip_name):
    out = tmp_path / "bench"
    res, text = _invoke(_bench_args(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, text
    cell = out / "cells" / "promptad" / "pill_box" / "k1_s0"
    before = _tree(cell)
    for flag, value, key in (("--epochs", "2", "epochs"), ("--resolution", "48", "resolution")):
        args = _bench_args(demo_root, out, tiny_clip_name)
        args[args.index(flag) + 1] = value
        res, _ = _invoke(args)
        line = _one_error(res)
        assert key in line and str(out) in line, line
        assert _tree(cell) == before
    # more shots or seeds extend the same benchmark
    res, text = _invoke(_bench_args(demo_root, out, tiny_clip_name, "--seeds", "0,1"))
    assert res.exit_code == 0, text
    assert (out / "cells" / "promptad" / "pill_box" / "k1_s1" / "metrics.json").is_file()
    assert _tree(cell) == before


def test_two_trainings_into_one_folder_are_locked_out(demo_root, tmp_path, tiny_clip_name):
    """While one `detector train` holds --out, a second is refused naming the folder and the process."""
    from detector.store.files import output_lock

    out = tmp_path / "ckpt"
    with output_lock(out):
        res, _ = _invoke(_train_args(demo_root, out, tiny_clip_name))
        line = _one_error(res)
    assert str(out) in line and "in use" in line
    assert not out.exists()
    res, text = _invoke(_train_args(demo_root, out, tiny_clip_name))  # released: the next run trains
    assert res.exit_code == 0, text


def test_two_benchmarks_into_one_folder_are_locked_out(demo_root, tmp_path, tiny_clip_name):
    """While one `detector benchmark` holds --out, a second is refused at once naming the folder; it writes nothing
    (no manifest, no cell, no error.txt in a cell the other run is computing)."""
    from detector.store.files import output_lock

    out = tmp_path / "bench"
    with output_lock(out, "detector benchmark"):
        for extra in ([], ["--merge"]):
            res, _ = _invoke(_bench_args(demo_root, out, tiny_clip_name, *extra))
            line = _one_error(res)
            assert str(out) in line and "in use by another run" in line and "`detector benchmark`" in line, line
    assert not out.exists()


def test_a_benchmark_never_computes_a_cell_another_run_holds(demo_root, tmp_path, tiny_clip_name):
    """Shards share a folder (each its own lock); a cell held by another run (an overlapping shard split) stops
    this run at that cell, before training it, and leaves no error.txt in it."""
    from detector.store.files import output_lock

    out = tmp_path / "bench"
    cell = out / "cells" / "promptad" / "pill_box" / "k1_s0"
    with output_lock(cell, "detector benchmark"):
        res, _ = _invoke(_bench_args(demo_root, out, tiny_clip_name))
        line = _one_error(res)
    assert str(cell) in line and "in use" in line, line
    assert not cell.exists()
    with output_lock(out, "detector benchmark", name="bench.shard-0-of-2"):  # shard 0 of 2 runs elsewhere
        res, text = _invoke(_bench_args(demo_root, out, tiny_clip_name, "--seeds", "0,1", "--num-shards", "2",
                                        "--shard-index", "1"))
    assert res.exit_code == 0, text
    assert (out / "cells" / "promptad" / "pill_box" / "k1_s1" / "metrics.json").is_file()


def test_benchmark_refuses_a_folder_that_is_not_a_benchmark(demo_root, tmp_path, tiny_clip_name):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "summary.md").write_text("# my own summary\n")
    before = _tree(out)
    res, _ = _invoke(_bench_args(demo_root, out, tiny_clip_name))
    line = _one_error(res)
    assert str(out) in line and "not a benchmark" in line, line
    assert _tree(out) == before


def _copy_class(demo_root: Path, dst: Path) -> Path:
    shutil.copytree(demo_root / "pill_box", dst / "pill_box")
    return dst


def test_an_edited_shot_is_not_served_from_cached_features(demo_root, tmp_path, tiny_clip_name):
    """Kill after the shot features were cached, edit the shot image, rerun: the state of the old image is not
    used (the rerun says the shot changed), and --restart trains on the new image."""
    from detector.config import TrainConfig
    from detector.run.train import train_model

    data = _copy_class(demo_root, tmp_path / "data")
    out = tmp_path / "ckpt"
    cfg = TrainConfig(data=str(data), class_name="pill_box", shots=1, seed=0, out=str(out), backbone=tiny_clip_name,
                      pretrained="none", epochs=1, image_epochs=1, baseline="promptad")
    train_model(cfg, progress=False, resume=True)  # the state of a run killed before its save
    assert (tmp_path / "ckpt.partial").is_dir() and not out.exists()
    for shot in (data / "pill_box" / "train" / "good").iterdir():  # whichever the shot is, it changes
        img = np.asarray(Image.open(shot).convert("RGB")).copy()
        img[:20, :20] = (255, 0, 0)
        Image.fromarray(img).save(shot)
    res, _ = _invoke(_train_args(data, out, tiny_clip_name))
    line = _one_error(res)
    assert "changed" in line and "--restart" in line, line
    res, text = _invoke(_train_args(data, out, tiny_clip_name, "--restart"))
    assert res.exit_code == 0, text
    fresh = tmp_path / "fresh"
    res, text = _invoke(_train_args(data, fresh, tiny_clip_name))
    assert res.exit_code == 0, text
    assert (out / "model.safetensors").read_bytes() == (fresh / "model.safetensors").read_bytes()


# ====================================================================================== 3. kill -9 at any point
def test_a_finished_checkpoint_wins_over_a_half_deleted_state(demo_root, tmp_path, tiny_clip_name, trained):
    """Killed while <out>.partial was being removed (the checkpoint already in place): the rerun keeps the
    checkpoint, removes the leftover and says it is done; no 'unreadable' failure."""
    out = tmp_path / "ckpt"
    shutil.copytree(trained, out)
    before = _tree(out)
    half = tmp_path / "ckpt.partial" / "state"
    half.mkdir(parents=True)
    (half / "config.json").write_text('{"format": "finegrained-ad-checkpoint", "format_ver')  # torn file
    res, text = _invoke(_train_args(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, text
    assert "already" in text and "unreadable" not in text
    assert not (tmp_path / "ckpt.partial").exists() and _tree(out) == before


def test_a_benchmark_cell_with_a_half_deleted_state_finishes_without_a_stale_error(demo_root, tmp_path,
                                                                                  tiny_clip_name):
    out = tmp_path / "bench"
    cell = out / "cells" / "promptad" / "pill_box" / "k1_s0"
    res, text = _invoke(_bench_args(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, text
    (cell / "metrics.json").unlink()  # killed after the checkpoint, before the evaluation finished
    half = cell / "checkpoint.partial" / "features"
    half.mkdir(parents=True)
    (half / "config.json").write_bytes(b"\x00\x01")
    (cell / "error.txt").write_text("DetectorError: an earlier failure\n")
    res, text = _invoke(_bench_args(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, text
    assert (cell / "metrics.json").is_file() and not (cell / "error.txt").exists()
    assert not (cell / "checkpoint.partial").exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_orphan_temporary_folders_of_dead_runs_are_removed(demo_root, tmp_path, tiny_clip_name):
    out = tmp_path / "ckpt"
    dead = _dead_pid()
    orphans = [tmp_path / f".ckpt.tmp-{dead}-0badf00d", tmp_path / f".ckpt.old-{dead}-0badcafe",
               tmp_path / f".ckpt.partial.tmp-{dead}-0bad0bad"]
    for o in orphans:
        (o / "sub").mkdir(parents=True)
        (o / "sub" / "model.safetensors").write_bytes(b"x" * 100)
    alive = tmp_path / f".ckpt.tmp-{os.getpid()}-0000beef"  # a live process's folder is never touched
    alive.mkdir()
    mine = tmp_path / ".ckpt.tmp-notes"  # not a name we make
    mine.mkdir()
    res, text = _invoke(_train_args(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, text
    assert not any(o.exists() for o in orphans) and alive.is_dir() and mine.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == sorted(
        [".ckpt.tmp-notes", alive.name, "ckpt"])


def test_same_inputs_and_seed_give_a_byte_identical_checkpoint(demo_root, tmp_path, tiny_clip_name, trained):
    """Run in a fresh process (another hash seed): every file of the checkpoint is byte-identical; the timings
    live in a separate file."""
    out = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONHASHSEED="123", OMP_NUM_THREADS="1")
    args = [str(a) for a in _train_args(demo_root, out, tiny_clip_name)]
    args[args.index("--backbone") + 1] = str(Path(__file__).parent / "assets" / "fgad-tiny-test.json")
    proc = subprocess.run([sys.executable, "-m", "detector.cli", *args], env=env, check=False, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = {k: v for k, v in _tree(trained).items() if k != "timings.json"}
    got = {k: v for k, v in _tree(out).items() if k != "timings.json"}
    # the backbone is named by its JSON path in the subprocess: compare everything else byte for byte
    assert got["model.safetensors"] == ref["model.safetensors"]
    assert set(got) == {"config.json", "model.safetensors", "README.md"}  # ref: evaluations add their record
    assert "timing" not in (out / "config.json").read_text()
    assert json.loads((out / "timings.json").read_text())["timing_s"]
    # and a second run in the same way gives the very same bytes, config.json included
    shutil.rmtree(out)
    proc2 = subprocess.run([sys.executable, "-m", "detector.cli", *args], env=dict(env, PYTHONHASHSEED="7"),
                           check=False, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    again = {k: v for k, v in _tree(out).items() if k != "timings.json"}
    assert again == got
