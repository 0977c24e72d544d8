"""Shot selection: which k normal training images of a class the few-shot model sees.

Seeded choice (no shots file): the candidates are the class's normal ``train`` samples, sorted by
``file_name``. Each gets the key ``sha256(f"{class_name}:{seed}:{file_name}")``; the k smallest keys win and
are returned sorted by file name. The result therefore depends only on the class, the seed and the file
names: not on directory listing order, the platform or the Python version, and for one seed the k=1 shot is
among the k=2 shots, which are among the k=4 shots (fewer shots are a subset of more).

Shots file (the PromptAD / WinCLIP seed lists): lines ``#<n>: <stem> <stem> ...``. A line with exactly k
stems is a candidate for k. If only one line has k stems it is used whatever the seed (the file fixes the
choice); if several have, the ``seed``-th of them (0-based, file order) is used. The file may hold sections
for several classes: a header line that is just the class name (``bottle``, ``[bottle]`` or ``# bottle``)
starts a section. Blank lines and other ``#`` comments are ignored. A stem may carry a suffix (``131.png``),
and a numeric stem also matches the same number with other zero padding (``48`` = ``048``) when that is
unambiguous. Any stem that is not a normal training image of the class is a DataError naming the file and
the stem.

``shots_file`` may also be a folder laid out as PromptAD ships its seeds
(``seeds_mvtec/<class>/selected_samples_per_run.txt``): the class's file inside it is used. Note that
PromptAD reads those numbers as positions in an unsorted directory listing (so its shots differ between
machines); here they are file stems, which is what the numbers were meant to name.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from fsad_data.errors import DataError
from fsad_data.samples import Sample

_LINE = re.compile(r"^#\s*(\d+)\s*[:=]\s*(.*)$")
_HEADER = re.compile(r"^(?:#\s*|\[\s*)?(\w[\w\-]*)\s*\]?\s*:?\s*$")


def shot_candidates(samples: Iterable[Sample], class_name: str) -> list[Sample]:
    """Normal training samples of the class, sorted by file name (the pool shots are drawn from)."""
    pool = [s for s in samples if s.class_name == class_name and s.split == "train" and s.label == 0]
    return sorted(pool, key=lambda s: s.file_name)


def _rank_key(class_name: str, seed: int, file_name: str) -> str:
    return hashlib.sha256(f"{class_name}:{seed}:{file_name}".encode()).hexdigest()


def parse_shots_file(path: str | Path) -> dict[str | None, list[list[str]]]:
    """The stem lists of a shots file, by class section (``None`` for lines before any header)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shots file not found: {path}. Check the path, or leave it out to pick shots by seed.")
    sections: dict[str | None, list[list[str]]] = {}
    current: str | None = None
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m:
            stems = [t for t in re.split(r"[\s,]+", m.group(2)) if t]
            if not stems:
                raise DataError(f"{path} line {lineno}: {line!r} names no file stems. Fix or remove the line.")
            sections.setdefault(current, []).append(stems)
            continue
        h = _HEADER.match(line)
        if h:
            current = h.group(1)
            continue
        if line.startswith("#"):
            continue
        raise DataError(
            f"{path} line {lineno}: cannot parse {line!r}. Expected '#<n>: <stem> <stem> ...' or a class-name "
            "header line."
        )
    if not any(sections.values()):
        raise DataError(f"shots file {path} lists no shots. Expected lines like '#1: 131' and '#2: 101 048'.")
    return sections


SEED_FILE_NAME = "selected_samples_per_run.txt"


def resolve_shots_file(shots_file: str | Path, class_name: str) -> Path:
    """The shots file to read: the path itself, or ``<folder>/<class>/selected_samples_per_run.txt``."""
    path = Path(shots_file)
    if path.is_dir():
        inner = path / class_name / SEED_FILE_NAME
        if not inner.is_file():
            raise DataError(
                f"shots folder {path} has no {class_name}/{SEED_FILE_NAME}. Pass the class's file, or a folder "
                "with one sub-folder per class (PromptAD's seeds_mvtec / seeds_visa)."
            )
        return inner
    return path


def _match(stem: str, pool: Sequence[Sample], path: Path, class_name: str) -> Sample:
    bare = Path(stem).stem if Path(stem).suffix else stem
    hits = [s for s in pool if s.stem == bare or s.file_name == stem]
    if not hits and bare.isdigit():
        hits = [s for s in pool if s.stem.isdigit() and int(s.stem) == int(bare)]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DataError(
            f"shots file {path} names {stem!r}, which is not a normal training image of class {class_name!r} "
            f"({len(pool)} candidates, e.g. {', '.join(s.stem for s in pool[:3])}). Fix the file, or check that "
            "it belongs to this data set and class."
        )
    raise DataError(
        f"shots file {path} names {stem!r}, which matches several training images of {class_name!r}: "
        f"{', '.join(s.file_name for s in hits)}. Use the full file name."
    )


def _from_file(pool: list[Sample], class_name: str, k: int, seed: int, path: Path) -> list[Sample]:
    sections = parse_shots_file(path)
    headed = [c for c in sections if c is not None]
    if class_name in sections:
        lines = sections[class_name]
    elif headed:
        raise DataError(
            f"shots file {path} has sections for {', '.join(headed)} but not for class {class_name!r}. "
            "Use the file of this class or add a section."
        )
    else:
        lines = sections.get(None, [])
    fits = [stems for stems in lines if len(stems) == k]
    if not fits:
        raise DataError(
            f"shots file {path} has no line with {k} stems for class {class_name!r} (line sizes: "
            f"{', '.join(str(len(x)) for x in lines)}). Add a line '#{k}: ...' or choose another k."
        )
    if len(fits) == 1:
        stems = fits[0]
    elif 0 <= seed < len(fits):
        stems = fits[seed]
    else:
        raise DataError(
            f"shots file {path} has {len(fits)} lines with {k} stems for {class_name!r}; seed {seed} picks "
            f"none of them. Use a seed from 0 to {len(fits) - 1}."
        )
    chosen = [_match(stem, pool, path, class_name) for stem in stems]
    if len({s.id for s in chosen}) != len(chosen):
        raise DataError(f"shots file {path} names the same image twice in '{' '.join(stems)}'. Fix the line.")
    return sorted(chosen, key=lambda s: s.file_name)


def select_shots(
    samples: Iterable[Sample], class_name: str, k: int, seed: int, shots_file: str | Path | None = None
) -> list[Sample]:
    """The k shot samples of a class, sorted by file name (see the module docstring for the rule)."""
    pool = shot_candidates(samples, class_name)
    if k < 1:
        raise DataError(f"the number of shots must be at least 1, got k={k}.")
    if not pool:
        raise DataError(
            f"class {class_name!r} has no normal training images to take shots from. Check the class name and "
            "that the data set has a train split."
        )
    if shots_file is not None:
        return _from_file(pool, class_name, k, seed, resolve_shots_file(shots_file, class_name))
    if k > len(pool):
        raise DataError(
            f"class {class_name!r} has {len(pool)} normal training images, fewer than k={k}. Choose a smaller k."
        )
    ranked = sorted(pool, key=lambda s: (_rank_key(class_name, int(seed), s.file_name), s.file_name))
    return sorted(ranked[:k], key=lambda s: s.file_name)


def shots_record(shots: Iterable[Sample]) -> list[str]:
    """The shots' file names (relative to the class root), to record in every output that depends on them."""
    return [s.file_name for s in shots]


def shots_selection(k: int, seed: int, shots_file: str | Path | None = None) -> str:
    """A short description of how shots were chosen ("k=1 seed=0" or "file:<name>"), for provenance fields."""
    return f"file:{Path(shots_file).name}" if shots_file is not None else f"k={k} seed={seed}"
