"""fsad_data.atomic: the one atomic file write (durable, umask-following mode) and the one folder swap."""
import os
import stat
import subprocess
import sys

import pytest

from fsad_data.atomic import (
    clean_orphans,
    staged_folder,
    swap_folder,
    temp_folder_beside,
    write_bytes_atomic,
    write_json_atomic,
)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_written_file_gets_the_mode_of_a_plain_open(tmp_path, umask_022):
    """mkstemp's 0600 made results unreadable to other users (a shared dataset, a web server): a new file
    is 0644 under umask 022, exactly like open(path, "w"); a replaced file keeps its mode."""
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    with open(tmp_path / "plain.bin", "wb") as fh:
        fh.write(b"x")
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "plain.bin") == 0o644
    os.chmod(tmp_path / "a.bin", 0o640)
    write_bytes_atomic(tmp_path / "a.bin", b"y")
    assert _mode(tmp_path / "a.bin") == 0o640 and (tmp_path / "a.bin").read_bytes() == b"y"


def test_file_write_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    write_json_atomic(tmp_path / "x.json", {"b": 1, "a": 2}, sort_keys=True)
    assert events[:2] == ["fsync", "replace"]
    assert (tmp_path / "x.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'


def test_staged_folder_replaces_whole_or_not_at_all(tmp_path, umask_022):
    target = tmp_path / "out"
    with staged_folder(target) as tmp:
        (tmp / "f.txt").write_text("one")
    assert (target / "f.txt").read_text() == "one" and _mode(target) == 0o755  # not mkdtemp's 0700
    with pytest.raises(RuntimeError), staged_folder(target) as tmp:
        (tmp / "g.txt").write_text("half")
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in target.iterdir()) == ["f.txt"]  # the old folder is untouched
    with staged_folder(target) as tmp:
        (tmp / "g.txt").write_text("two")
    assert sorted(p.name for p in target.iterdir()) == ["g.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp, no set-aside folder left


def test_swap_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep").write_text("old")
    new = temp_folder_beside(target)
    real = os.replace

    def fail_second(a, b):
        if str(a) == str(new):
            raise OSError(28, "No space left on device")
        return real(a, b)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError):
        swap_folder(new, target)
    monkeypatch.undo()
    assert (target / "keep").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", new.name])


def test_orphans_of_a_killed_run_are_recognised_and_removed(tmp_path):
    """A run killed mid-write leaves .NAME.tmp-PID-* / .NAME.old-PID-*; the next run removes them, but never the
    folders of a process that is still alive (another writer, or this one)."""
    target = tmp_path / "ck"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    for kind in ("tmp", "old"):
        (tmp_path / f".ck.{kind}-{pid}-abcd").mkdir()
        (tmp_path / f".ck.{kind}-{pid}-abcd" / "half").write_text("x")
    mine = temp_folder_beside(target)
    (tmp_path / ".other.tmp-1-abcd").mkdir()  # another target's: not ours to touch
    removed = clean_orphans(target)
    assert sorted(p.name for p in removed) == [f".ck.old-{pid}-abcd", f".ck.tmp-{pid}-abcd"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, ".other.tmp-1-abcd"])


def test_a_symlinked_target_stays_a_link_and_its_folder_is_replaced(tmp_path):
    """`--out LINK` where LINK names an earlier output elsewhere: the folder it names gets the new content and the
    link stays (before: the link itself was swapped for a new folder, the results landed beside the user's link
    and the folder it named kept the old ones)."""
    real = tmp_path / "disk" / "results"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("old")
    link = tmp_path / "results"
    link.symlink_to(real, target_is_directory=True)
    with staged_folder(link) as tmp:
        assert tmp.parent == real.parent  # built beside the real folder: one file system, an atomic rename
        (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert sorted(p.name for p in real.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "results"]
