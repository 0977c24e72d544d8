"""Kill and resume: `mfsc build` and `detector benchmark` run as subprocesses, are killed with SIGKILL at
chosen points (early, mid-run, while writing) or stopped with SIGINT, restarted, and must end with exactly
the outputs of an uninterrupted run: no lost record, no duplicate, no half-written file read back.

The fast tests kill once mid-run; the other kill points are marked slow (`make test-all`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "assets" / "fgad-tiny-test.json")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONUNBUFFERED="1")
    return env


def _start(module: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _run(module: str, args: list[str]) -> tuple[int, str, str]:
    return _finish(_start(module, args))


def _signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int, what: str,
                 timeout: float = 120) -> None:
    """Send ``sig`` to ``proc`` (by its pid) as soon as ``ready()``; fail if the run ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            proc.send_signal(sig)
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the run ended (rc {proc.returncode}) before the kill point '{what}' was seen:\n{err[-2000:]}")
        time.sleep(0.002)
    proc.kill()
    proc.communicate()
    pytest.fail(f"kill point '{what}' not reached in {timeout} s")


# ============================================================================================ mfsc build
BUILD_CONFIG = {"classes": ["pill_box"], "part_size": 2, "captioner": {"batch_size": 2}}


def _build_args(src: Path, out: Path, cfg_file: Path) -> list[str]:
    return ["build", str(src), "--out", str(out), "--config", str(cfg_file), "--quiet"]


def _tables(out: Path) -> dict[str, list[dict]]:
    """Every row of both datasets as plain Python (image/mask PNG bytes included)."""
    import datasets

    images = datasets.load_from_disk(str(out / "images"))
    classes = datasets.load_from_disk(str(out / "classes"))
    res = {f"images/{s}": images[s].data.to_pylist() for s in images}
    res["classes"] = classes.data.to_pylist()
    return res


def _info(out: Path) -> dict:
    info = json.loads((out / "build_info.json").read_text())
    return {k: info[k] for k in ("images", "classes", "skipped", "fingerprint")}


@pytest.fixture(scope="module")
def build_setup(demo_root, tmp_path_factory):
    """The config file and an uninterrupted reference build (same config, run in-process)."""
    from mfsc_builder.build import BuildConfig, run_build

    d = tmp_path_factory.mktemp("kill-build")
    cfg_file = d / "build.yaml"
    cfg_file.write_text(json.dumps(BUILD_CONFIG))
    ref = d / "reference"
    run_build(BuildConfig(source=str(demo_root), out=str(ref), **BUILD_CONFIG))
    return cfg_file, ref, _tables(ref), _info(ref)


def _parts(out: Path, stage: str) -> int:
    d = out / "work" / stage
    return len(list(d.glob("part-*.jsonl"))) if d.is_dir() else 0


def _writing(out: Path) -> bool:
    return out.is_dir() and any(p.name.startswith(".write-") for p in out.iterdir())


BUILD_KILL_POINTS = {
    "early": lambda out: (out / "work" / "manifest.json").exists(),
    "mid-caption": lambda out: _parts(out, "caption") >= 3,
    "while-writing": _writing,
}


def _kill_and_resume_build(demo_root, build_setup, tmp_path, point: str) -> None:
    cfg_file, _ref, ref_tables, ref_info = build_setup
    out = tmp_path / "out"
    proc = _start("mfsc_builder.cli", _build_args(demo_root, out, cfg_file))
    _signal_when(proc, lambda: BUILD_KILL_POINTS[point](out), signal.SIGKILL, point)
    rc, _, _ = _finish(proc)
    assert rc == -signal.SIGKILL
    if point != "while-writing":
        assert not (out / "images").exists()  # nothing final was written before the kill
    rc, _, err = _run("mfsc_builder.cli", _build_args(demo_root, out, cfg_file))
    assert rc == 0, err[-3000:]
    assert _tables(out) == ref_tables  # no lost record, no duplicate, identical bytes
    assert _info(out) == ref_info
    leftovers = [p.name for p in (out / "work").rglob("*") if p.name.endswith((".tmp", ".corrupt"))]
    leftovers += [p.name for p in out.iterdir() if p.name.startswith(".")]  # temp folders of the killed run
    assert not leftovers, leftovers


def test_build_killed_mid_caption_resumes_to_the_same_dataset(demo_root, build_setup, tmp_path):
    _kill_and_resume_build(demo_root, build_setup, tmp_path, "mid-caption")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["early", "while-writing"])
def test_build_killed_at_other_points_resumes_to_the_same_dataset(demo_root, build_setup, tmp_path, point):
    _kill_and_resume_build(demo_root, build_setup, tmp_path, point)


def test_build_ctrl_c_stops_with_a_one_line_resume_hint_then_resumes(demo_root, build_setup, tmp_path):
    cfg_file, _ref, ref_tables, ref_info = build_setup
    out = tmp_path / "out"
    proc = _start("mfsc_builder.cli", _build_args(demo_root, out, cfg_file))
    _signal_when(proc, lambda: _parts(out, "caption") >= 2, signal.SIGINT, "caption parts")
    rc, _, err = _finish(proc)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 130, err[-3000:]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err
    assert "Traceback" not in err and not (out / "images").exists()
    assert not (out.parent / f".{out.name}.lock").exists()  # the lock is released: the rerun is not refused
    rc, _, err = _run("mfsc_builder.cli", _build_args(demo_root, out, cfg_file))
    assert rc == 0, err[-3000:]
    assert _tables(out) == ref_tables and _info(out) == ref_info


# ======================================================================================= detector benchmark
def _bench_args(data: Path, out: Path) -> list[str]:
    return ["benchmark", "--data", str(data), "--out", str(out), "--classes", "pill_box", "--shots", "1,2",
            "--seeds", "0,1", "--no-main", "--baseline", "promptad", "--backbone", TINY, "--pretrained", "none",
            "--epochs", "1", "--image-epochs", "1", "--resolution", "32", "--dataset-name", "synthetic"]


CELLS = [f"k{k}_s{s}" for k in (1, 2) for s in (0, 1)]


def _cell(out: Path, name: str) -> Path:
    return out / "cells" / "promptad" / "pill_box" / name


def _bench_results(out: Path) -> dict:
    """What a finished benchmark reports: each cell's metrics and shots, and the tables."""
    res = {}
    for name in CELLS:
        data = json.loads((_cell(out, name) / "metrics.json").read_text())
        res[name] = {k: data[k] for k in ("metrics", "shot_files", "shots", "seed", "n_images")}
        res[name + "/scores.csv"] = (_cell(out, name) / "scores.csv").read_text()
    for p in sorted((out / "tables").glob("*.csv")):
        res["tables/" + p.name] = p.read_text()
    return res


@pytest.fixture(scope="module")
def bench_reference(demo_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kill-bench") / "reference"
    rc, _, err = _run("detector.cli", _bench_args(demo_root, out))
    assert rc == 0, err[-3000:]
    return _bench_results(out)


BENCH_KILL_POINTS = {
    "after-first-cell": lambda out: (_cell(out, "k1_s0") / "metrics.json").exists(),
    "mid-evaluation": lambda out: ((_cell(out, "k1_s1") / "checkpoint" / "config.json").exists()
                                   and not (_cell(out, "k1_s1") / "metrics.json").exists()),
    "while-writing-tables": lambda out: (out / "tables").exists(),
}


def _kill_and_resume_bench(demo_root, reference, tmp_path, point: str) -> None:
    out = tmp_path / "bench"
    proc = _start("detector.cli", _bench_args(demo_root, out))
    _signal_when(proc, lambda: BENCH_KILL_POINTS[point](out), signal.SIGKILL, point)
    rc, _, _ = _finish(proc)
    assert rc == -signal.SIGKILL
    rc, _, err = _run("detector.cli", _bench_args(demo_root, out))
    assert rc == 0, err[-3000:]
    assert _bench_results(out) == reference


def test_benchmark_killed_after_a_cell_resumes_to_the_same_results(demo_root, bench_reference, tmp_path):
    _kill_and_resume_bench(demo_root, bench_reference, tmp_path, "after-first-cell")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["mid-evaluation", "while-writing-tables"])
def test_benchmark_killed_at_other_points_resumes_to_the_same_results(demo_root, bench_reference, tmp_path, point):
    _kill_and_resume_bench(demo_root, bench_reference, tmp_path, point)


def test_benchmark_ctrl_c_stops_with_a_one_line_resume_hint(demo_root, bench_reference, tmp_path):
    """SIGINT after the first cell: exit 130, one line saying reruns resume, the finished cell kept intact
    (the SIGKILL tests show that the rerun completes to the reference results)."""
    out = tmp_path / "bench"
    proc = _start("detector.cli", _bench_args(demo_root, out))
    _signal_when(proc, lambda: (_cell(out, "k1_s0") / "metrics.json").exists(), signal.SIGINT, "first cell")
    rc, _, err = _finish(proc)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 130, err[-3000:]
    assert len(lines) == 1 and "rerun" in lines[0] and "Traceback" not in err, err
    data = json.loads((_cell(out, "k1_s0") / "metrics.json").read_text())
    assert data["metrics"] == bench_reference["k1_s0"]["metrics"]
    assert (_cell(out, "k1_s0") / "scores.csv").read_text() == bench_reference["k1_s0/scores.csv"]
    assert not (_cell(out, "k2_s1") / "metrics.json").exists() and not (out / "tables").exists()


def test_a_second_build_into_the_same_folder_is_refused_while_the_first_runs(demo_root, build_setup, tmp_path):
    """Two builds never write into one folder: the second is refused (naming the lock), the first is
    unharmed and finishes with the reference dataset."""
    from mfsc_builder.build import BuildConfig, run_build
    from mfsc_builder.errors import BuildError

    cfg_file, _, ref_tables, _ = build_setup
    out = tmp_path / "out"
    proc = _start("mfsc_builder.cli", _build_args(demo_root, out, cfg_file))
    _signal_when(proc, lambda: _parts(out, "crop") >= 1, 0, "first crop part")  # signal 0: only checks the pid
    with pytest.raises(BuildError, match="in use by another run.*`mfsc build`"):
        run_build(BuildConfig(source=str(demo_root), out=str(out), **BUILD_CONFIG))
    rc, _, err = _finish(proc)
    assert rc == 0, err[-3000:]
    assert _tables(out) == ref_tables
