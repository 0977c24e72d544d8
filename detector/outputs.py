"""What the detector's commands share when they write results: strict JSON values, CSV rows, progress bars.

``eval``, ``predict``, ``benchmark`` and ``train`` use these instead of each their own; the files are written
through ``fsad_data.atomic`` (one temporary name, fsync, rename), so a crash never leaves half a table.
``output_lock`` is the one lock of the detector's commands: one run per ``--out`` (train, benchmark) and per
benchmark cell.
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

from detector.errors import DetectorError
from fsad_data.atomic import write_text_atomic
from fsad_data.folder_lock import FolderInUse, FolderLock

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


@contextmanager
def output_lock(out: str | Path, command: str = "detector train", name: str | None = None) -> Iterator[None]:
    """Hold ``out`` for one run (``fsad_data.folder_lock`` on ``.NAME.lock`` beside it, released by the OS even
    on kill -9): a second run into the same folder is refused at once, naming ``command`` and the lock, instead
    of both claiming to have written it. ``name``: another lock beside ``out`` (one shard of a benchmark)."""
    out = Path(out)
    lock = FolderLock(out.parent / f".{name or out.name}.lock")
    try:
        lock.acquire()
    except FolderInUse as exc:
        raise DetectorError(f"{out} is in use by another `{command}` (lock {exc.lock_file}); wait for it "
                            "to finish or use another --out") from None
    try:
        yield
    finally:
        lock.release()


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


def _clock(seconds: float) -> str:
    s = max(0, round(float(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class EpochLines:
    """Training progress for a log file or a pipe (CI, nohup, a batch job), where a bar shows nothing: one
    plain line when a prompt set starts, then after an epoch when ``every`` seconds passed since the last
    line (so one per epoch when epochs are slow, one every ~10 s when they are fast) and after its last epoch:
    phase, epoch/total, loss, elapsed, an estimate of the time left in the phase (from this run's epochs)."""

    def __init__(self, write: Callable[[str], None] = print, every: float = 10.0,
                 clock: Callable[[], float] | None = None) -> None:
        import time

        self.write, self.every = write, float(every)
        self.clock = clock or time.monotonic
        self.start: dict[str, tuple[float, int]] = {}  # label -> (time, epochs done) when it started
        self.last = -math.inf

    def __call__(self, label: str, done: int, total: int, loss: float) -> None:
        now = self.clock()
        if label not in self.start:
            self.start[label] = (now, done)
            self.last = now
            resumed = f" (resumed after epoch {done})" if done else ""
            self.write(f"train: {label} {done}/{total} epochs{resumed}")
            return
        if now - self.last < self.every and done < total:
            return
        t0, d0 = self.start[label]
        elapsed = now - t0
        rate = elapsed / (done - d0) if done > d0 else math.nan
        left = "" if math.isnan(rate) else f", left ~{_clock(rate * (total - done))}"
        self.write(f"train: {label} epoch {done}/{total}, loss {loss:.4f}, elapsed {_clock(elapsed)}{left}")
        self.last = now


@contextmanager
def epoch_bars(enabled: bool) -> Iterator[EpochReport | None]:
    """One bar per prompt set with its latest loss, as ``detector.fit.fit``'s ``report`` (None when disabled);
    plain ``EpochLines`` when stdout is not a terminal (a bar would print nothing until the end)."""
    if not enabled:
        yield None
        return
    from rich.console import Console

    if not Console().is_terminal:
        import sys

        yield EpochLines(lambda line: print(line, file=sys.stdout, flush=True))
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
