"""The one error guard of the command lines (``mfsc``, ``detector``): a user's mistake is one line, never a traceback.

A user error (the CLI's own error type, or ``DataError``, which includes ``ConfigError``) or an ``OSError``
(a full disk, a file where a folder must go) becomes one red line on stderr and exit code 1; Ctrl-C becomes
exit code 130 with one yellow line saying what was kept. SIGTERM (a process manager's stop, ``kill``, a CI
timeout) is the same orderly stop with exit code 143: a command unwinds, so the processes it started are ended
and its resumable state is kept, instead of dying at once and leaving them behind. Usage errors stay typer's
(exit code 2).
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import typer
from rich.console import Console

from fsad_data.errors import DataError

T = TypeVar("T")
INTERRUPTED = 130
TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so it unwinds as on Ctrl-C."""


def run_guarded(body: Callable[[], T], user_errors: tuple[type[BaseException], ...], *,
                interrupted: str | None = None, stopped: tuple[type[BaseException], ...] = ()) -> T:
    """Run a command body under the guard.

    ``interrupted``: the line printed on Ctrl-C (None: the body has said what was kept). ``stopped``: error types
    that mean an orderly stop after Ctrl-C (their message is the resume hint, exit 130).
    """
    try:
        with sigterm_unwinds():
            return body()
    except stopped as exc:
        say(str(exc), "yellow")
        raise typer.Exit(INTERRUPTED) from None
    except KeyboardInterrupt as exc:
        if interrupted is not None:
            say(interrupted, "yellow")
        raise typer.Exit(TERMINATED if isinstance(exc, Terminated) else INTERRUPTED) from None
    except (*user_errors, DataError) as exc:
        say(f"error: {exc}", "red")
        raise typer.Exit(1) from None
    except OSError as exc:
        where = f": {user_path(exc.filename)}" if exc.filename else ""
        say(f"error: {exc.strerror or exc}{where}; check that path (a writable folder, not a file) and the free "
            "disk space", "red")
        raise typer.Exit(1) from None


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While the body runs, SIGTERM raises ``Terminated`` in the main thread (elsewhere: left as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while unwinding ends the process
        raise Terminated

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# the names fsad_data.atomic and the --out locks give their helpers beside a target NAME
_HELPER = re.compile(r"^\.(?P<name>.+?)(?:\.(?:tmp|old)-\d+-[0-9a-f]+|\.[0-9a-f]{8}\.tmp|\.lock)$")


def user_path(filename: str | bytes | os.PathLike) -> str:
    """The path a user gave for a helper file of ours (``.out.tmp-123-ab12cd34`` -> ``out``, also inside a path:
    ``.out.tmp-123-ab12cd34/maps/x.npy`` -> ``out/maps/x.npy``), so an error names the folder the user knows;
    any other path as it is."""
    path = Path(os.fsdecode(filename))
    parts = [m["name"] if (m := _HELPER.match(part)) else part for part in path.parts]
    return str(Path(*parts)) if parts else str(path)


def say(message: str, style: str) -> None:
    """One line on stderr, printed as is (no markup: messages quote paths, lists and brackets)."""
    Console(stderr=True, highlight=False).print(message, style=style, soft_wrap=True, markup=False, emoji=False)
