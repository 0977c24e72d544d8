"""`detector train` killed at any instant resumes with one command: the same command, rerun, finishes with the
checkpoint of an uninterrupted run, byte for byte, and leaves nothing behind (issue 22).

The kill is a real one: ``tests/train_kill_probe.py`` runs the command in a subprocess and ``os._exit``s at a
chosen instant of one atomic write (no ``finally`` runs, the process id is dead afterwards), then the rerun
happens here. Before the fix, the leftovers of the state's own swap (``.state.old-PID-*``, ``.state.tmp-PID-*``
inside ``OUT.partial``) made the rerun refuse "holds files that are not a training state of `detector train`".
The fast tests kill at the named instants of the state's swap; the slow ones at every distinct state on disk
of each atomic write of the run (the state, the features, the checkpoint, the removal of the state).
"""
from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "assets" / "fgad-tiny-test.json")
PROBE = str(ROOT / "tests" / "train_kill_probe.py")
KILLED = 137


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    """Two pixel epochs and one image epoch: the second pixel epoch replaces a saved state."""
    return ["train", "--data", str(data), "--class", "pill_box", "--shots", "1", "--seed", "0", "--out", str(out),
            "--backbone", TINY, "--pretrained", "none", "--epochs", "2", "--image-epochs", "1", "--baseline",
            "promptad", *extra]


def _invoke(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    return res.exit_code, " ".join((res.output + (res.stderr or "")).split())


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (hidden ones included) but the run's timings; the folder's own path (config.json
    records ``--out``) reads OUT."""
    return {str(p.relative_to(folder)): p.read_bytes().replace(str(folder).encode(), b"OUT")
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "timings.json"}


def _probe(data: Path, out: Path, name: str, k: int, when: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, PROBE, name, str(k), when, "--", *_args(data, out, *extra)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def _kill(data: Path, out: Path, name: str, k: int, when: str) -> None:
    proc = _probe(data, out, name, k, when)
    assert proc.returncode == KILLED, f"kill point {name}#{k} {when} not reached:\n{proc.stderr[-3000:]}"


def _kill_points(data: Path, tmp_path: Path, name: str, k: int) -> list[str]:
    """``line:N`` for the first line of each distinct state on disk during that write (a dry run lists them)."""
    proc = _probe(data, tmp_path / "listing" / "ckpt", name, k, "list")
    assert proc.returncode == 3, proc.stderr[-3000:]
    states = next(ln for ln in proc.stderr.splitlines() if ln.startswith("STATES")).split()[1:]
    assert len(states) >= 3, proc.stderr[-3000:]
    shutil.rmtree(tmp_path / "listing", ignore_errors=True)
    return [f"line:{n}" for n in states]


@pytest.fixture(scope="module")
def reference(demo_root, tmp_path_factory) -> dict[str, bytes]:
    """The checkpoint of an uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted") / "ckpt"
    rc, text = _invoke(_args(demo_root, out))
    assert rc == 0, text
    return _tree(out)


def _resumes(data: Path, out: Path, reference: dict[str, bytes]) -> None:
    """One rerun of the same command finishes with the reference checkpoint and leaves nothing beside it."""
    rc, text = _invoke(_args(data, out))
    assert rc == 0, text
    assert _tree(out) == reference
    assert sorted(p.name for p in out.parent.iterdir() if not p.name.endswith(".lock")) == [out.name], \
        sorted(p.name for p in out.parent.iterdir())


@pytest.mark.parametrize(("name", "k", "when"), [
    ("state", 2, "old-left"),  # the new state in place, the old one not yet removed (issue 22)
    ("state", 2, "old-aside"),  # the old state moved aside, the new one not yet in place
    ("features", 1, "staged"),  # the shot features complete under their temporary name
])
def test_killed_while_swapping_its_state_the_rerun_resumes(demo_root, reference, tmp_path, name, k, when):
    out = tmp_path / "ckpt"
    _kill(demo_root, out, name, k, when)
    assert not out.exists() and (tmp_path / "ckpt.partial").is_dir()
    _resumes(demo_root, out, reference)


def test_the_old_state_moved_aside_is_put_back_not_lost(demo_root, tmp_path):
    """Killed between moving the old state aside and moving the new one in: the rerun continues after the
    first epoch (the state put back) instead of training from the first epoch again."""
    out = tmp_path / "ckpt"
    _kill(demo_root, out, "state", 2, "old-aside")
    assert not (tmp_path / "ckpt.partial" / "state").exists()
    import detector.store.train_state as ts
    from detector.config import TrainConfig
    from detector.run.train import load_shots

    cfg = TrainConfig(data=str(demo_root), class_name="pill_box", shots=1, out=str(out), backbone=TINY,
                      pretrained="none", epochs=2, image_epochs=1, baseline="promptad")
    images, names = load_shots(cfg)
    state = ts.ResumableState(cfg, names, None, ts.image_digests(images))
    assert state.phase == "pixel" and len(state.history["pixel_loss"]) == 1
    assert sorted(p.name for p in (tmp_path / "ckpt.partial").iterdir()) == ["features", "state"]


def test_killed_while_swapping_then_a_shot_edited_says_so_and_restart_trains(demo_root, tmp_path):
    """The leftovers of the swap are ours: after a shot edit the rerun says the shot changed (not 'files that are
    not a training state'), and --restart trains on the new image."""
    data = tmp_path / "data"
    shutil.copytree(demo_root / "pill_box", data / "pill_box")
    out = tmp_path / "ckpt"
    _kill(data, out, "state", 2, "old-left")
    for shot in (data / "pill_box" / "train" / "good").iterdir():
        img = np.asarray(Image.open(shot).convert("RGB")).copy()
        img[:20, :20] = (255, 0, 0)
        Image.fromarray(img).save(shot)
    rc, text = _invoke(_args(data, out))
    assert rc == 1 and "changed" in text and "--restart" in text and "not a training state" not in text, text
    rc, text = _invoke(_args(data, out, "--restart"))
    assert rc == 0, text
    assert not (tmp_path / "ckpt.partial").exists()


def test_killed_after_the_checkpoint_before_its_card_the_rerun_completes_it(demo_root, reference, tmp_path):
    """The checkpoint in place, its README.md and the state removal not yet done: the rerun writes the card."""
    out = tmp_path / "ckpt"
    _kill(demo_root, out, "ckpt", 1, "after")
    assert (out / "model.safetensors").is_file() and not (out / "README.md").exists()
    _resumes(demo_root, out, reference)


def test_a_folder_with_user_files_beside_the_state_is_still_refused(demo_root, tmp_path):
    """Only the names of our own swap are accepted: a user's file (even a hidden one) in OUT.partial is not."""
    partial = tmp_path / "ckpt.partial"
    (partial / "state").mkdir(parents=True)
    (partial / ".state.notes").write_text("mine")
    rc, text = _invoke(_args(demo_root, tmp_path / "ckpt"))
    assert rc == 1 and "not a training state" in text, text
    assert (partial / ".state.notes").read_text() == "mine"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "k"), [("state", 2), ("features", 1), ("ckpt", 1), ("card", 1), ("discard", 1)])
def test_killed_at_every_instant_of_each_write_the_rerun_resumes(demo_root, reference, tmp_path, name, k):
    for when in _kill_points(demo_root, tmp_path, name, k):
        run = tmp_path / when.replace(":", "-")
        out = run / "ckpt"
        _kill(demo_root, out, name, k, when)
        _resumes(demo_root, out, reference)


def test_only_a_dead_runs_set_aside_folder_is_put_back_and_only_where_the_target_is_missing(tmp_path):
    from fsad_data.atomic import leftovers, restore_set_aside

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    target = tmp_path / "state"
    alive = tmp_path / f".state.old-{os.getpid()}-abcd" / "previous"  # this process: maybe still swapping
    alive.mkdir(parents=True)
    assert not restore_set_aside(target) and not target.exists()
    old = tmp_path / f".state.old-{int(dead.stdout)}-beef" / "previous"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    target.mkdir()
    assert not restore_set_aside(target)  # the new one is in place: nothing to put back
    target.rmdir()
    assert restore_set_aside(target) and (target / "config.json").read_text() == "{}"
    assert [p.name for p in leftovers(target)] == sorted([alive.parent.name, old.parent.name])
