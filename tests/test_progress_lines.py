"""Progress and tables in a log or a pipe (fsad_data.progress, fsad_data.plain_tables): never silent for longer
than the interval while work runs, never a table squeezed to 80 columns."""
import io
import time

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from fsad_data.plain_tables import plain_text, print_table
from fsad_data.progress import ProgressLines, heartbeat


def test_lines_only_when_due_and_at_the_end_with_an_estimate():
    now = [0.0]
    lines: list[str] = []
    prog = ProgressLines("predicting", lines.append, every=15.0, clock=lambda: now[0])
    prog("images", 0, 100)
    for done in range(1, 101):  # 1 s per image: a line every 15 s, and the last one
        now[0] += 1.0
        prog("images", done, 100)
    assert lines[0] == "predicting: images 15/100, elapsed 0:00:15, left ~0:01:25"
    assert len(lines) == 100 // 15 + 1 and lines[-1] == "predicting: images 100/100, elapsed 0:01:40, left ~0:00:00"


def test_a_short_run_prints_nothing():
    now = [0.0]
    lines: list[str] = []
    prog = ProgressLines("evaluating", lines.append, every=15.0, clock=lambda: now[0])
    prog("images", 0, 12)
    now[0] += 3.0
    prog("images", 12, 12)
    assert lines == []


def test_pending_names_the_step_in_progress_with_the_time_left():
    now = [0.0]
    lines: list[str] = []
    prog = ProgressLines("train", lines.append, every=15.0, clock=lambda: now[0], unit="epoch", announce=True)
    prog("image prompts", 0, 3, ", loss nan")
    now[0] += 100.0  # one slow epoch
    prog("image prompts", 1, 3, ", loss 2.0000")
    now[0] += 40.0  # the second epoch is still running: the heartbeat's line says so
    assert prog.pending() == "train: image prompts epoch 2/3 running, elapsed 0:02:20, left ~0:02:40"
    prog.beat()
    assert lines == ["train: image prompts 0/3 epochs",
                     "train: image prompts epoch 1/3, loss 2.0000, elapsed 0:01:40, left ~0:03:20",
                     "train: image prompts epoch 2/3 running, elapsed 0:02:20, left ~0:02:40"]
    now[0] += 5.0
    prog.beat()  # written 5 s ago: not yet
    assert len(lines) == 3


def test_heartbeat_writes_while_a_step_runs_and_before_the_first_task():
    lines: list[str] = []
    prog = ProgressLines("train", lines.append, every=0.02, unit="epoch", announce=True)

    def wait_for(prefix: str) -> None:
        deadline = time.monotonic() + 20.0  # generous: a loaded machine may delay the thread
        while not any(line.startswith(prefix) for line in lines) and time.monotonic() < deadline:
            time.sleep(0.01)

    with heartbeat(prog, before_first="encoding the shots", poll=0.01):
        wait_for("train: encoding the shots, elapsed ")  # nothing reported yet: the encoding line
        prog("pixel prompts", 0, 2, "")
        wait_for("train: pixel prompts epoch 1/2 running")  # the first epoch runs for long
    assert lines[0].startswith("train: encoding the shots, elapsed ")
    assert "train: pixel prompts 0/2 epochs" in lines
    assert lines[-1].startswith("train: pixel prompts epoch 1/2 running")


def test_heartbeat_stops_quietly_when_the_output_is_closed(monkeypatch):
    import threading

    escaped, calls = [], []
    monkeypatch.setattr(threading, "excepthook", escaped.append)

    def closed(line: str) -> None:
        calls.append(line)
        raise BrokenPipeError("stdout closed")

    prog = ProgressLines("train", closed, every=0.0, unit="epoch")
    with heartbeat(prog, before_first="encoding", poll=0.01):
        deadline = time.monotonic() + 20.0
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
    assert len(calls) == 1 and escaped == []  # tried once, then stopped without a traceback


def test_tables_in_a_pipe_are_plain_lines_that_keep_every_cell_whole():
    table = Table("component", "sentence", title="components")
    long = "a smooth blue rectangular pill box body at the center of a very long caption " * 3
    table.add_row("body", long.strip())
    table.add_row("lid | cap", "line one\nline two")
    text = plain_text(table)
    assert text.splitlines() == ["components", "| component | sentence |", "|---|---|",
                                 f"| body | {long.strip()} |", "| lid \\| cap | line one / line two |"]
    grid = Table.grid()
    grid.add_row("object", "pill box")
    grid.add_row("caption", "")
    assert plain_text(Panel(grid, title="class pill_box")) == "class pill_box\n  object: pill box\n  caption"
    buf = io.StringIO()
    print_table(Console(file=buf, width=80), table)  # not a terminal
    assert "│" not in buf.getvalue() and long.strip() in buf.getvalue()


def test_mfsc_show_in_a_pipe_prints_no_boxes(demo_root, tmp_path):
    from typer.testing import CliRunner

    from mfsc_builder.cli import app

    runner = CliRunner()
    built = runner.invoke(app, ["build", str(demo_root), "--out", str(tmp_path / "b"), "--classes", "hex_nut",
                                "--workers", "1", "-q"])
    assert built.exit_code == 0, built.output
    shown = runner.invoke(app, ["show", str(tmp_path / "b"), "--class", "hex_nut"])
    assert shown.exit_code == 0, shown.output
    out = shown.output
    assert "╭" not in out and "│" not in out and "| component | count |" in out
    assert max(len(line) for line in out.splitlines()) > 80  # rows are whole, not wrapped at 80 columns


def test_the_same_state_is_never_written_twice():
    now = [0.0]
    lines: list[str] = []
    prog = ProgressLines("evaluating", lines.append, every=15.0, clock=lambda: now[0])
    prog("images", 0, 12)
    now[0] += 17.0
    prog("images", 12, 12)  # due: written
    prog("images", 12, 12)  # the closing call of the bar: the same state, not again
    assert lines == ["evaluating: images 12/12, elapsed 0:00:17, left ~0:00:00"]


def test_mfsc_build_in_a_pipe_prints_progress_lines(demo_root, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import fsad_data.progress
    from mfsc_builder.cli import app

    monkeypatch.setattr(fsad_data.progress, "EVERY_SECONDS", 0.0)  # every update is due
    res = CliRunner().invoke(app, ["build", str(demo_root), "--out", str(tmp_path / "b"), "--classes", "hex_nut",
                                   "--workers", "1"])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("mfsc build: ")]
    assert any(line.startswith("mfsc build: images 20/20, elapsed ") for line in lines), res.output
