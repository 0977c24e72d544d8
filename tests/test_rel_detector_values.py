"""Every bad value the detector reads is one line naming the key, the file and what is expected; memory stays
bounded (issue 11, sections 4-5, detector side): train configs and flags, checkpoint config.json,
threshold.json, caption records, benchmark cell folders."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _one_error(res) -> str:
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = res.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in res.output, res.output
    assert len(err) < 400, err  # one line (a terminal may wrap it), not a dump
    return " ".join(err.split())


def _train(demo_root: Path, out: Path, tiny: str, *extra) -> list[str]:
    return [str(a) for a in ["train", "--data", demo_root, "--class", "pill_box", "--shots", "1", "--out", out,
                             "--backbone", tiny, "--pretrained", "none", "--epochs", "1", "--image-epochs", "1",
                             "--baseline", "promptad", *extra]]


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory, tiny_clip_name) -> Path:
    out = tmp_path_factory.mktemp("rel-values") / "ckpt"
    res = runner.invoke(app, _train(demo_root, out, tiny_clip_name))
    assert res.exit_code == 0, res.output
    return out


# ======================================================================================= train config values
@pytest.mark.parametrize("text, key, expected", [
    ('epochs: "abc"', "epochs", "integer"),
    ("epochs: 1.0e400", "epochs", "integer"),
    ("epochs: true", "epochs", "integer"),
    ('shots: "two"', "shots", "integer"),
    ('lr: "fast"', "lr", "number"),
    ("lr: .inf", "lr", "finite"),
    (f"seed: {2**128}", "seed", "at most"),
    ("seed: -1", "seed", "at least 0"),
    ("drop_levels: 5", "drop_levels", "list"),
    ("class_name: 5", "class_name", "text"),
    ("tau: 0", "tau", "more than 0"),
    ("tau: .nan", "tau", "finite"),
    ('tau: "nan"', "tau", "finite"),
    ("tau: 1.0e308", "tau", "at most"),
    ("region_knn: 0", "region_knn", "at least 1"),
    ("momentum: -1", "momentum", "at least 0"),
    ("n_ctx: 0", "n_ctx", "at least 1"),
])
def test_bad_train_config_values_are_one_line_naming_file_key_and_expectation(
        demo_root, tmp_path, tiny_clip_name, text, key, expected):
    cfg = tmp_path / "train.yaml"
    base = {"backbone": tiny_clip_name, "pretrained": "none", "epochs": 1, "image_epochs": 1, "shots": 1,
            "baseline": "promptad", "class_name": "pill_box"}
    cfg.write_text("".join(f"{k}: {v}\n" for k, v in base.items() if k != key) + text + "\n")
    out = tmp_path / "ckpt"
    res = runner.invoke(app, ["train", "--data", str(demo_root), "--out", str(out), "--config", str(cfg)])
    line = _one_error(res)
    assert str(cfg) in line and f"'{key}'" in line and expected in line, line
    assert not out.exists() and not (tmp_path / "ckpt.partial").exists()


@pytest.mark.parametrize("text, key", [('epochs: "abc"', "epochs"), ("epochs: true", "epochs"),
                                       ('shots: "two"', "shots"), ("class_name: 5", "class_name")])
@pytest.mark.parametrize("command", ["train", "benchmark"])
def test_a_bad_value_in_the_file_is_refused_even_where_a_flag_replaces_it(
        demo_root, tmp_path, tiny_clip_name, text, key, command):
    """`--config f.yaml --epochs 1` with `epochs: "abc"` in f.yaml: the file is still broken (before, the flag
    hid it and the run went ahead)."""
    cfg = tmp_path / "train.yaml"
    cfg.write_text(text + "\n")
    args = _train(demo_root, tmp_path / "c", tiny_clip_name, "--config", cfg)  # --class, --shots, --epochs given
    if command == "benchmark":
        args = ["benchmark", "--data", str(demo_root), "--out", str(tmp_path / "b"), "--classes", "pill_box",
                "--shots", "1", "--seeds", "0", "--no-main", "--baseline", "promptad", "--backbone", tiny_clip_name,
                "--pretrained", "none", "--epochs", "1", "--image-epochs", "1", "--config", str(cfg)]
    line = _one_error(runner.invoke(app, args))
    assert str(cfg) in line and f"'{key}'" in line, line
    assert not (tmp_path / "c").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", [str(2**128), "-3"])
def test_seed_flag_out_of_range_is_one_line(demo_root, tmp_path, tiny_clip_name, value):
    res = runner.invoke(app, _train(demo_root, tmp_path / "c", tiny_clip_name, "--seed", value))
    line = _one_error(res)
    assert "seed" in line and "flags" in line, line


def test_non_utf8_train_config_is_one_line(demo_root, tmp_path, tiny_clip_name):
    cfg = tmp_path / "train.yaml"
    cfg.write_bytes(b"epochs: 2\nclass_name: caf\xe9\n")
    line = _one_error(runner.invoke(app, _train(demo_root, tmp_path / "c", tiny_clip_name, "--config", cfg)))
    assert str(cfg) in line and "UTF-8" in line


def test_train_config_billion_laughs_is_refused_before_memory_grows(demo_root, tmp_path, tiny_clip_name):
    lines = ['a0: &a0 ["component"]']
    for i in range(1, 30):
        lines.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]")
    lines.append("drop_levels: *a29")
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    line = _one_error(runner.invoke(app, _train(demo_root, tmp_path / "c", tiny_clip_name, "--config", cfg)))
    assert str(cfg) in line and "alias" in line


def test_benchmark_config_values_are_checked_before_any_cell(demo_root, tmp_path, tiny_clip_name):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("tau: 0\n")
    res = runner.invoke(app, ["benchmark", "--data", str(demo_root), "--out", str(tmp_path / "b"), "--classes",
                              "pill_box", "--shots", "1", "--seeds", "0", "--no-main", "--baseline", "promptad",
                              "--backbone", tiny_clip_name, "--pretrained", "none", "--config", str(cfg)])
    line = _one_error(res)
    assert str(cfg) in line and "'tau'" in line
    assert not (tmp_path / "b" / "cells").exists()


# ================================================================================== checkpoint config.json
def _edited(trained: Path, tmp_path: Path, edit) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    path = ckpt / "config.json"
    data = json.loads(path.read_text())
    result = edit(data)
    if isinstance(result, bytes):
        path.write_bytes(result)
    else:
        path.write_text(json.dumps(data))
    return ckpt


def _set_init_seed(value):
    def edit(data):
        data["meta"]["backbone"]["init_seed"] = value
    return edit


def _non_utf8(data):
    return json.dumps(data).replace('"widget"', '"w\\u00e9"').encode().replace(b"pill_box", b"pill\xe9box", 1)


def _deep(data):
    return b'{"format": "finegrained-ad-checkpoint", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("edit, words", [
    (_set_init_seed("zero"), ["init_seed", "integer"]),
    (_set_init_seed(10**30), ["init_seed", "at most"]),
    (_non_utf8, ["UTF-8"]),
    (_deep, ["nest"]),
])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_bad_checkpoint_config_is_one_line_naming_it(trained, demo_root, tmp_path, edit, words, command):
    ckpt = _edited(trained, tmp_path, edit)
    if command == "eval":
        args = ["eval", "--checkpoint", ckpt, "--data", demo_root, "--out", tmp_path / "ev", "--resolution", "32"]
    else:
        args = ["predict", demo_root / "pill_box" / "test" / "good", "--checkpoint", ckpt, "--out", tmp_path / "pr"]
    line = _one_error(runner.invoke(app, [str(a) for a in args]))
    assert str(ckpt / "config.json") in line and all(w in line for w in words), line


def test_a_huge_n_memory_fails_before_allocating(trained, tmp_path):
    """n_memory 10**12 in config.json: refused against the tensors' real count, in a process capped at 3 GB."""
    def edit(data):
        data["meta"]["n_memory"] = 10**12
    ckpt = _edited(trained, tmp_path, edit)
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (3 << 30, 3 << 30))
        from detector.errors import DetectorError
        from detector.store.saved_detector import load_detector
        try:
            load_detector({str(ckpt)!r})
        except DetectorError as e:
            print("REFUSED", e)
    """)
    res = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert "REFUSED" in res.stdout, res.stdout + res.stderr[-2000:]
    assert "n_memory" in res.stdout and "memory." in res.stdout


# ============================================================================================ threshold.json
@pytest.mark.parametrize("content, words", [
    ("[0.5]", ["mapping"]),
    ("{not json", ["not valid JSON"]),
    ('{"fused": {"pixel_threshold": "high", "resolution": 32}}', ["pixel_threshold", "number"]),
    ('{"fused": {"pixel_threshold": "0.5", "resolution": 32}}', ["pixel_threshold", "number"]),  # text: damage
    ('{"fused": {"pixel_threshold": true, "resolution": 32}}', ["pixel_threshold", "number"]),
    ('{"fused": {"pixel_threshold": 0.5, "resolution": "32px"}}', ["resolution", "integer"]),
    ('{"fused": {"pixel_threshold": NaN, "resolution": 32}}', ["NaN"]),
])
def test_bad_threshold_file_is_one_line_naming_it(trained, demo_root, tmp_path, content, words):
    thr = tmp_path / "threshold.json"
    thr.write_text(content)
    args = ["predict", demo_root / "pill_box" / "test" / "good", "--checkpoint", trained, "--out", tmp_path / "pr",
            "--threshold", thr]
    line = _one_error(runner.invoke(app, [str(a) for a in args]))
    assert str(thr) in line and all(w in line for w in words), line
    assert not (tmp_path / "pr").exists()


def test_the_python_api_reads_threshold_files_through_the_same_check(trained, tmp_path):
    from detector.deploy.api import read_thresholds
    from detector.errors import DetectorError

    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained, ckpt)
    (ckpt / "threshold.json").write_text('{"fused": {"pixel_threshold": "high"}}')
    with pytest.raises(DetectorError, match="pixel_threshold"):
        read_thresholds(ckpt)


# ============================================================================================ caption records
def _classes(path: Path, **override) -> Path:
    import datasets

    row = {"schema_version": 1, "class_name": "pill_box", "object_name": "pill box",
           "image_view": {"foreground": "x"}, "foreground_view": {"count": 1}, "components": [], "caption": "a box",
           "defect_states": ["crack"],
           "texts": [{"level": "image", "group": "image", "normal": ["a box"], "abnormal": ["a broken box"]}]}
    row.update(override)
    datasets.Dataset.from_list([row]).save_to_disk(str(path / "classes"))
    return path


@pytest.mark.parametrize("override, words", [
    ({"texts": ["a box", "a broken box"]}, ["texts[0]", "mapping"]),
    ({"texts": [{"level": "image", "group": "image", "normal": "a box", "abnormal": ["x"]}]},
     ["texts[0].normal", "list"]),
    ({"schema_version": "1"}, ["schema_version", "'1'"]),
])
def test_bad_caption_records_are_one_line(demo_root, tmp_path, tiny_clip_name, override, words):
    caps = _classes(tmp_path / "caps", **override)
    args = _train(demo_root, tmp_path / "c", tiny_clip_name)
    args = [a for a in args if a not in ("--baseline", "promptad")] + ["--captions", str(caps)]
    line = _one_error(runner.invoke(app, args))
    assert str(caps) in line and all(w in line for w in words), line
    assert "has version 1, reads version 1" not in line and "schema_version 1," not in line


# ======================================================================================= benchmark --merge
@pytest.fixture(scope="module")
def bench(demo_root, tmp_path_factory, tiny_clip_name) -> Path:
    out = tmp_path_factory.mktemp("rel-bench") / "bench"
    res = runner.invoke(app, ["benchmark", "--data", str(demo_root), "--out", str(out), "--classes", "pill_box",
                              "--shots", "1", "--seeds", "0", "--no-main", "--baseline", "promptad", "--backbone",
                              tiny_clip_name, "--pretrained", "none", "--epochs", "1", "--image-epochs", "1",
                              "--resolution", "32", "--dataset-name", "synthetic"])
    assert res.exit_code == 0, res.output
    return out


def _merge(out: Path):
    return runner.invoke(app, ["benchmark", "--data", str(out), "--out", str(out), "--merge",
                               "--dataset-name", "synthetic"])


def test_merge_refuses_a_copied_cell_folder_naming_it(bench, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    cell = out / "cells" / "promptad" / "pill_box"
    shutil.copytree(cell / "k1_s0", cell / "k1_s0 copy")
    line = _one_error(_merge(out))
    assert "k1_s0 copy" in line and "k<shots>_s<seed>" in line


def test_merge_refuses_a_damaged_cell_metrics_file_naming_it(bench, tmp_path):
    out = tmp_path / "bench"
    shutil.copytree(bench, out)
    m = out / "cells" / "promptad" / "pill_box" / "k1_s0" / "metrics.json"
    m.write_text(m.read_text()[:40])
    line = _one_error(_merge(out))
    assert str(m) in line
    m.write_text(json.dumps({"metrics": {"image_auroc": "great"}}))
    line = _one_error(_merge(out))
    assert str(m) in line and "image_auroc" in line
