"""Progress where no bar can be drawn: a log file, a pipe, CI, ``nohup``, a batch job.

A rich bar in a pipe prints nothing until it ends, so a 20-minute build or a 2-minute training epoch looks hung.
``ProgressLines`` writes one plain line at most every ``every`` seconds (and at the end of a task that printed
before): task, done/total, elapsed, an estimate of the time left from this run's own pace. ``heartbeat`` adds a
line while one step is still running (an image-prompt epoch of the full-size backbone is minutes long on a CPU),
so a log is never silent for more than ``every`` seconds. Both commands' progress goes through here
(``mfsc build``; ``detector train / eval / predict / benchmark`` via ``detector.run.outputs``).
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

EVERY_SECONDS = 15.0  # at most this long without a line in a log (the issue asked for 10-20 s)


def clock_text(seconds: float) -> str:
    """``H:MM:SS``."""
    s = max(0, round(float(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def to_stdout(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


@dataclass
class _Task:
    start: float  # when this run first saw the task
    start_done: int  # how much was done then (a resumed run's estimate counts its own pace only)
    done: int
    total: int
    detail: str = ""
    updated: float = 0.0  # when ``done`` last changed
    shown: int = -1  # the ``done`` of its last line (never the same line twice)


class ProgressLines:
    """``lines(task, done, total, detail="")``: a line when ``every`` seconds passed since the last one, or when the
    task finishes after it printed (``announce=True``: also a line when a task starts). Thread-safe: the heartbeat
    calls ``pending`` from its own thread."""

    def __init__(self, prefix: str, write: Callable[[str], None] = to_stdout, every: float | None = None,
                 clock: Callable[[], float] = time.monotonic, unit: str = "", announce: bool = False) -> None:
        self.prefix, self.write, self.clock = prefix, write, clock
        self.every = EVERY_SECONDS if every is None else float(every)
        self.unit, self.announce = unit, announce
        self.tasks: dict[str, _Task] = {}
        self.current: str | None = None
        self.last = clock()
        self.printed: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, task: str, done: int, total: int, detail: str = "") -> None:
        with self._lock:
            now = self.clock()
            t = self.tasks.get(task)
            if t is None:
                self.tasks[task] = _Task(now, done, done, total, detail, now)
                self.current = task
                if self.announce:
                    resumed = f" (resumed after {(self.unit + ' ') if self.unit else ''}{done})" if done else ""
                    self._emit(task, f"{self.prefix}: {task} {done}/{total}{self._units()}{resumed}", now)
                return
            if done != t.done:
                t.updated = now
            t.done, t.total, t.detail = done, total, detail
            self.current = task
            finished = done >= total
            if (now - self.last >= self.every or (finished and task in self.printed)) and t.shown != done:
                t.shown = done
                self._emit(task, self._line(task, t, now), now)

    def pending(self) -> str | None:
        """The heartbeat's line: the running task, the step in progress, elapsed, left (None when no task runs)."""
        with self._lock:
            return self._pending(self.clock())

    def _pending(self, now: float) -> str | None:
        if self.current is None:
            return None
        t = self.tasks[self.current]
        if t.done >= t.total:
            return None
        step = f"{self.unit} {t.done + 1}/{t.total} running" if self.unit else f"{t.done}/{t.total}"
        return f"{self.prefix}: {self.current} {step}, elapsed {clock_text(now - t.start)}{self._left(t, now)}"

    def beat(self, before_first: str | None = None, since: float = 0.0) -> None:
        """Write ``pending()`` when nothing was written for ``every`` seconds (called by ``heartbeat``); while no
        task has started, ``before_first`` with the time elapsed ``since``. Checked and written under one lock,
        so a line never describes a state that has already changed."""
        with self._lock:
            now = self.clock()
            if now - self.last < self.every:
                return
            if self.current is None:
                line = None if before_first is None else \
                    f"{self.prefix}: {before_first}, elapsed {clock_text(now - since)}"
            else:
                line = self._pending(now)
            if line is not None:
                self._emit(self.current or "", line, now)

    def _units(self) -> str:
        return f" {self.unit}s" if self.unit else ""

    def _line(self, task: str, t: _Task, now: float) -> str:
        where = f"{self.unit} {t.done}/{t.total}" if self.unit else f"{t.done}/{t.total}"
        return (f"{self.prefix}: {task} {where}{t.detail}, elapsed {clock_text(now - t.start)}"
                f"{self._left(t, now)}")

    @staticmethod
    def _left(t: _Task, now: float) -> str:
        """From this run's pace so far, less the time already spent on the step in progress."""
        if t.done <= t.start_done:
            return ""
        rate = (t.updated - t.start) / (t.done - t.start_done)
        left = rate * (t.total - t.done) - (now - t.updated)
        return f", left ~{clock_text(max(left, 0.0))}" if math.isfinite(rate) else ""

    def _emit(self, task: str, line: str, now: float) -> None:
        self.write(line)
        self.last = now
        self.printed.add(task)


@contextmanager
def heartbeat(lines: ProgressLines, before_first: str | None = None, poll: float = 1.0
              ) -> Iterator[ProgressLines]:
    """A daemon thread that calls ``lines.beat()`` every ``poll`` seconds, so a step longer than ``every`` seconds
    still shows it is alive. ``before_first``: the line written while no task has started yet (e.g. "encoding
    the shots"), with the elapsed time appended. A closed output (``| head``) ends the heartbeat quietly."""
    stop = threading.Event()
    since = lines.clock()

    def run() -> None:
        while not stop.wait(poll):
            try:
                lines.beat(before_first, since)
            except (OSError, ValueError):  # stdout closed or gone: the work goes on without lines
                return

    thread = threading.Thread(target=run, name="progress-heartbeat", daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        stop.set()
        thread.join(timeout=2.0)
