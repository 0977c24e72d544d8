"""Run ``detector train`` and die (``os._exit``, as kill -9: no clean-up, no ``finally``) at a chosen instant of
one atomic write: ``python tests/train_kill_probe.py NAME K WHEN -- TRAIN ARGS...``.

NAME and K pick the K-th ``save_checkpoint`` into a folder called NAME (``state``, ``features`` or the ``--out``
folder's name) or, with NAME ``card``, the K-th writing of the checkpoint's README.md, or, with NAME ``discard``,
the K-th removal of ``<out>.partial``. WHEN is ``line:N`` (die at the
N-th line run inside ``fsad_data/atomic.py`` during that call: every instant of the write, swap and removal, one
line apart), ``after`` (die as the call returns) or a named state of the folder (``CONDITIONS``). ``list`` dies
nowhere: it prints ``STATES n1 n2 ...`` on stderr, the first line of each distinct state on disk of the folder
the call writes in (lines that change nothing on disk are the same kill point), and exits 3, as does any run
that ends without reaching its instant.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from fsad_data import atomic

KILLED = 137
ATOMIC_FILE = atomic.__file__


def _orphans(folder: Path, name: str, kind: str) -> list[Path]:
    return [p for p in folder.glob(f".{name}.{kind}-*") if p.is_dir()] if folder.is_dir() else []


def _on_disk(folder: Path) -> tuple:
    """Every path under ``folder`` with its size (files) or -1 (folders): what a kill at this instant leaves."""
    return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1)
                        for p in folder.rglob("*")))


CONDITIONS = {
    # the old folder moved aside, the new one not yet in place: NAME is missing
    "old-aside": lambda parent, name: (any((p / "previous").is_dir() for p in _orphans(parent, name, "old"))
                                       and not (parent / name).exists()),
    # the new folder in place, the old one not yet removed (the case of issue 22)
    "old-left": lambda parent, name: bool(_orphans(parent, name, "old")) and (parent / name).is_dir(),
    # the new folder complete under its temporary name, not yet swapped in
    "staged": lambda parent, name: any((p / "config.json").is_file() for p in _orphans(parent, name, "tmp")),
}


def main() -> None:
    name, k, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[sys.argv.index("--") + 1:]
    out = Path(args[args.index("--out") + 1])
    lines = [0]
    calls = [0]
    states: list[int] = []
    seen: list[object] = [None]

    def tracer(parent: Path, target: str):
        def local(frame, event, arg):
            if event == "line":
                lines[0] += 1
                if when == "list":
                    now = _on_disk(parent)
                    if now != seen[0]:
                        seen[0] = now
                        states.append(lines[0])
                if when == f"line:{lines[0]}" or (when in CONDITIONS and CONDITIONS[when](parent, target)):
                    os._exit(KILLED)
            return local

        def global_(frame, event, arg):
            return local if frame.f_code.co_filename == ATOMIC_FILE else None

        return global_

    def watched(fn, folder_of):
        def run(*a, **kw):
            folder = folder_of(*a, **kw)
            if folder is None:
                return fn(*a, **kw)
            calls[0] += 1
            if calls[0] != k:
                return fn(*a, **kw)
            sys.settrace(tracer(folder.parent, folder.name))
            try:
                result = fn(*a, **kw)
            finally:
                sys.settrace(None)
            if when == "after":
                os._exit(KILLED)
            return result
        return run

    import detector.store.checkpoint as cio

    if name == "card":  # the checkpoint's README.md, written after the checkpoint
        import detector.store.model_card as card

        card.write_card = watched(card.write_card, lambda d, *a, **kw: Path(d) / card.CARD_FILE)
    elif name == "discard":
        import detector.store.train_state as ts

        partial = out.with_name(out.name + ".partial")
        ts.discard_state = watched(ts.discard_state, lambda *a, **kw: partial)
    else:  # before detector.method.model / detector.store.train_state import it by name
        cio.save_checkpoint = watched(cio.save_checkpoint,
                                      lambda d, *a, **kw: Path(d) if Path(d).name == name else None)
    from detector.cli import app

    try:
        app(args)
    except SystemExit as e:
        if e.code:
            raise
    print(f"LINES {lines[0]}", file=sys.stderr, flush=True)
    print("STATES " + " ".join(map(str, states)), file=sys.stderr, flush=True)
    sys.exit(3)


if __name__ == "__main__":
    main()
