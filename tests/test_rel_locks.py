"""Every command that writes an output folder holds its lock: a second run into the same folder is refused at
once with one line, before any work (here: the folder's lock is held by the test, as a running command would)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector.cli import app as detector_app
from fsad_data.folder_lock import lock_beside
from mfsc_builder.errors import BuildError
from mfsc_builder.ownership import holding


def _refused(app, args: list[str], out: Path, command: str) -> None:
    with lock_beside(out):
        res = CliRunner().invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "in use by another run" in text and f"`{command}`" in text and str(out) in text, text
    assert not out.exists()


def test_mfsc_merge_into_a_held_folder_is_refused(tmp_path):
    from mfsc_builder.cli import app

    out = tmp_path / "merged"
    _refused(app, ["merge", str(tmp_path / "part0"), str(tmp_path / "part1"), "--out", str(out)], out, "mfsc merge")


def test_mfsc_publish_dry_run_into_a_held_folder_is_refused(tmp_path):
    from mfsc_builder.cli import app

    out = tmp_path / "upload"
    _refused(app, ["publish", str(tmp_path / "build"), "--dry-run", str(out)], out, "mfsc publish --dry-run")


def test_detector_push_dry_run_into_a_held_folder_is_refused(widget_checkpoint, tmp_path):
    from detector.cli import app

    out = tmp_path / "upload"
    _refused(app, ["push", str(widget_checkpoint), "--repo-id", "org/name", "--dry-run", str(out)], out,
             "detector push --dry-run")
    res = CliRunner().invoke(app, ["push", str(widget_checkpoint), "--repo-id", "org/name", "--dry-run", str(out)])
    assert res.exit_code == 0, res.output  # released: the next run writes


def test_demo_data_never_writes_beside_a_users_files_and_rewrites_its_own(tmp_path):
    from mfsc_builder.cli import app

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["demo-data", str(mine)])
    assert res.exit_code == 1 and "never written into" in " ".join(res.output.split()), res.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    ours = tmp_path / "demo"
    for _ in range(2):  # its own earlier output is rewritten (the same bytes)
        res = CliRunner().invoke(app, ["demo-data", str(ours)])
        assert res.exit_code == 0, res.output
    held = tmp_path / "held"
    with lock_beside(held):
        res = CliRunner().invoke(app, ["demo-data", str(held)])
    assert res.exit_code == 1 and "in use by another run" in " ".join(res.output.split()), res.output
    assert not held.exists()


def test_a_lock_leaves_no_folder_that_only_it_needed(tmp_path):
    """A run refused after taking its lock (a bad checkpoint, a bad image) must not leave the empty parents of a
    new --out behind; a folder the run wrote into stays, and so does everything that existed before."""
    out = tmp_path / "a" / "b" / "out"
    with lock_beside(out):
        assert (tmp_path / "a" / "b").is_dir()
    assert list(tmp_path.iterdir()) == []
    with lock_beside(out):
        out.mkdir()
    assert out.is_dir() and list((tmp_path / "a" / "b").iterdir()) == [out]


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_refused_detector_command_leaves_no_parent_folders(tmp_path, command):
    (tmp_path / "images").mkdir()
    out = tmp_path / "new" / "deep" / command
    args = {"eval": ["--data", str(tmp_path / "images")], "predict": [str(tmp_path / "images")], "export": []}
    result = CliRunner().invoke(detector_app, [command, "--checkpoint", str(tmp_path / "no_such_checkpoint"),
                                               *args[command], "--out", str(out)])
    assert result.exit_code == 1 and "no_such_checkpoint not found" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]


def test_the_lock_refuses_a_live_holder_and_is_free_after_a_kill(tmp_path):
    """A holder in another process is refused; a lock file left by a killed run blocks nothing, even when it
    names a pid that now belongs to another live process (a pid-file lock refused that one)."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from fsad_data.folder_lock import lock_beside; held = lock_beside(sys.argv[1]); "
        "held.acquire(); print('held', flush=True); time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BuildError, match="in use by another run.*`mfsc build`"), holding(out, "mfsc build"):
            pass
    finally:
        holder.kill()
        holder.wait()
    lock_beside(out).lock_file.write_text(str(os.getppid()))  # what a killed run left, its pid reused
    with holding(out, "mfsc build"), pytest.raises(BuildError, match="in use by another run.*`mfsc merge`"), \
            holding(out, "mfsc merge"):
        pass  # a second run in this very process, of another command, is refused too
    assert not lock_beside(out).lock_file.exists()


def test_every_mfsc_command_that_writes_a_folder_takes_the_same_lock(tmp_path, demo_root):
    """`mfsc build` and `mfsc import-official` into a folder another mfsc command holds are refused at once,
    writing nothing: one lock per output folder for every command (merge, publish --dry-run and demo-data
    are above)."""
    from mfsc_builder.cli import app

    out = tmp_path / "held"
    for args in (["build", str(demo_root), "--out", str(out), "--classes", "pill_box"],
                 ["import-official", str(tmp_path / "fine_grained_prompts.py"), "--out", str(out)]):
        with lock_beside(out):
            res = CliRunner().invoke(app, args)
        text = " ".join(res.output.split())
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert "in use by another" in text and str(out) in text, text
        assert not out.exists()


def test_the_lock_of_a_folder_is_the_same_however_it_is_written(tmp_path, monkeypatch):
    """`--out .`, `--out ./x/..` and the absolute path name one folder and take one lock, beside it (a `.` has no
    name: its lock used to land inside the folder, which then was no longer empty)."""
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    files = {lock_beside(p).lock_file for p in (Path("."), Path("x") / "..", here)}
    assert files == {tmp_path / ".here.lock"}


def test_a_lock_whose_folder_vanishes_while_it_is_taken_is_taken_again(tmp_path, monkeypatch):
    """Another run that lets go of its lock removes the folders it created; one taking a lock in the same new
    folder at that moment makes them again instead of failing."""
    import filelock

    real = filelock.FileLock.acquire
    calls = []

    def vanishing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(self.lock_file))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(filelock.FileLock, "acquire", vanishing)
    with lock_beside(tmp_path / "new" / "out") as held:
        assert held.lock_file.exists() and len(calls) == 2
    assert list(tmp_path.iterdir()) == []
