"""What the detector's commands share when they write results: strict JSON values, CSV rows, progress bars.

``eval``, ``predict``, ``benchmark`` and ``train`` use these instead of each their own; the files are written
through ``fsad_data.atomic`` (one temporary name, fsync, rename), so a crash never leaves half a table.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fsad_data.atomic import write_text_atomic

Step = Callable[..., None]
"""``step(k, done=False)``: k more items finished; ``done=True`` closes the bar."""
EpochReport = Callable[[str, int, int, float], None]
"""``report(label, epochs done, epochs in all, latest loss)``: when a prompt set starts and after each epoch."""


def json_safe(value: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, recursively, so metrics.json is strict JSON."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    """A transient bar over ``total`` items (a no-op when disabled, e.g. when stdout is not a terminal)."""
    if not enabled:
        return lambda k, done=False: None
    prog = Progress(transient=True)
    task = prog.add_task(what, total=total)
    prog.start()

    def step(k: int, done: bool = False) -> None:
        prog.advance(task, k)
        if done:
            prog.stop()

    return step


@contextmanager
def epoch_bars(enabled: bool) -> Iterator[EpochReport | None]:
    """One bar per prompt set with its latest loss, as ``detector.fit.fit``'s ``report`` (None when disabled)."""
    if not enabled:
        yield None
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
