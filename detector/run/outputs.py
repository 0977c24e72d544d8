"""What the detector's commands share when they write results: strict JSON values, CSV rows, progress bars.

``eval``, ``predict``, ``benchmark`` and ``train`` use these instead of each their own; the files are written
through ``fsad_data.atomic`` (one temporary name, fsync, rename), so a crash never leaves half a table.
``output_lock`` is the one lock of the detector's commands: one run per ``--out`` (train, benchmark, predict,
export) and per benchmark cell; ``naming_folder`` makes a write error that names no file name the ``--out``.
"""
from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from detector.store.files import json_safe
from fsad_data.atomic import write_text_atomic
from fsad_data.progress import ProgressLines, heartbeat

if TYPE_CHECKING:
    from detector.method.fit import EpochReport  # torch: imported for the annotation only

Step = Callable[..., None]
"""``step(k, done=False)``: k more items finished; ``done=True`` closes the bar."""


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write dict rows as CSV atomically (columns from the first row)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in json_safe(r).items()})
    write_text_atomic(path, buf.getvalue())
    return path


def progress(enabled: bool, total: int, what: str) -> Step:
    """Progress over ``total`` items: a transient bar on a terminal, plain lines at most every 15 s in a log or a
    pipe (``fsad_data.progress``: a short run prints nothing there); a no-op when disabled (the Python API)."""
    if not enabled:
        return lambda k, done=False: None

    if not Console().is_terminal:
        lines = ProgressLines(what)
        count = [0]
        lines("images", 0, total)

        def line(k: int, done: bool = False) -> None:
            count[0] += k
            lines("images", total if done else count[0], total)

        return line
    prog = Progress(transient=True)
    task = prog.add_task(what, total=total)
    prog.start()

    def step(k: int, done: bool = False) -> None:
        prog.advance(task, k)
        if done:
            prog.stop()

    return step


class EpochLines:
    """Training progress for a log file or a pipe, where a bar shows nothing: one plain line when a prompt set
    starts, then after an epoch when ``every`` seconds (default ``fsad_data.progress.EVERY_SECONDS``) passed
    since the last line, and after its last epoch: phase, epoch/total, loss, elapsed, an estimate of the time
    left in the phase (from this run's epochs). Under ``epoch_bars`` a heartbeat adds a line while an epoch
    longer than ``every`` is still running, and while the shots are being encoded."""

    def __init__(self, write: Callable[[str], None] = print, every: float | None = None,
                 clock: Callable[[], float] | None = None) -> None:

        self.lines = ProgressLines("train", write, every, clock or time.monotonic, unit="epoch", announce=True)

    def __call__(self, label: str, done: int, total: int, loss: float) -> None:
        self.lines(label, done, total, f", loss {loss:.4f}")


@contextmanager
def epoch_bars(enabled: bool) -> Iterator[EpochReport | None]:
    """One bar per prompt set with its latest loss, as ``detector.method.fit.fit``'s ``report`` (None when disabled);
    plain ``EpochLines`` when stdout is not a terminal (a bar would print nothing until the end)."""
    if not enabled:
        yield None
        return

    if not Console().is_terminal:

        report = EpochLines(lambda line: print(line, file=sys.stdout, flush=True))
        with heartbeat(report.lines, before_first="encoding the shots (backbone and region weights)"):
            yield report
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), transient=False)
    tasks: dict[str, Any] = {}

    def report(label: str, done: int, total: int, loss: float) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(label, total=total, completed=done, loss=loss)
        else:
            bar.update(tasks[label], completed=done, loss=loss)

    with bar:
        yield report
