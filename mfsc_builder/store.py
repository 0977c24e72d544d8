"""Resumable, atomic shard store for the MFSC build stages.

Why: a build over thousands of images with a model captioner takes hours and can be killed at any
moment. Each stage (crop, caption, fill) keeps its results per sample id in small JSONL parts
under ``DIR/work/<stage>/part-XXXXX.jsonl``. A part is written to a temporary name in the same folder
and moved into place with ``os.replace``; its last line is a footer with the number of records and the
SHA-256 of the lines before it, so a truncated or damaged part is detected, set aside (renamed
``*.corrupt``) and never read back. ``DIR/work/manifest.json`` records the configuration and the
captioner's model, revision and prompt version; a rerun with a different configuration is refused
instead of mixing results.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsad_data.atomic import temp_folder_beside, write_bytes_atomic, write_json_atomic
from mfsc_builder.errors import BuildError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FOOTER_KEY = "__footer__"
_PART_RE = re.compile(r"^part-(\d{5,})\.jsonl(\.corrupt)?$")


# --------------------------------------------------------------------------- writes
@contextlib.contextmanager
def disk_errors(path: Path) -> Iterator[None]:
    """An ``OSError`` while writing ``path`` (a full disk, permissions) becomes a BuildError saying what to do."""
    try:
        yield
    except OSError as exc:
        raise BuildError(
            f"could not write {path}: {exc.strerror or exc}; free some disk space or fix permissions, "
            "then rerun the same command (finished work is kept)"
        ) from exc


def write_json(path: Path, obj: Any) -> None:
    """Pretty, key-sorted JSON (stable bytes for the same object), written atomically (fsad_data.atomic)."""
    with disk_errors(path):
        write_json_atomic(path, obj, sort_keys=True)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def canonical_json(obj: Any) -> str:
    """One-line JSON with sorted keys: the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def as_stored(obj: Any) -> Any:
    """``obj`` as a stage part gives it back (one JSON round trip): what a reader of fresh results sees is
    exactly what it would read after a resume."""
    return json.loads(canonical_json(obj))


def fingerprint(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj`` (used for configurations)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- one stage
@dataclass(frozen=True)
class PartReport:
    """What :meth:`StageStore.load` found: good parts, records, parts set aside as corrupt."""

    parts: int
    records: int
    corrupt: tuple[Path, ...]


class StageStore:
    """Results of one stage, keyed by sample id, stored as atomically written JSONL parts."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.name = self.dir.name
        self.last_report = PartReport(0, 0, ())

    # -- files
    def part_paths(self) -> list[Path]:
        """Readable parts, in write order."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _PART_RE.match(p.name)
            if m and not m.group(2):
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def _next_index(self) -> int:
        best = -1
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                m = _PART_RE.match(p.name)
                if m:
                    best = max(best, int(m.group(1)))
        return best + 1

    @staticmethod
    def read_part(path: Path) -> list[tuple[str, dict]] | None:
        """Records of one part, or None when the part is truncated or does not match its footer."""
        try:
            raw = Path(path).read_bytes()
        except OSError:
            return None
        if not raw.endswith(b"\n"):
            return None
        body_end = raw.rfind(b"\n", 0, len(raw) - 1) + 1  # start of the last line
        body, footer_line = raw[:body_end], raw[body_end:]
        try:
            footer = json.loads(footer_line)[FOOTER_KEY]
            count, digest = int(footer["count"]), str(footer["sha256"])
        except (ValueError, KeyError, TypeError):
            return None
        if hashlib.sha256(body).hexdigest() != digest:
            return None
        lines = body.splitlines()
        if len(lines) != count:
            return None
        out: list[tuple[str, dict]] = []
        try:
            for line in lines:
                rec = json.loads(line)
                out.append((str(rec["id"]), rec["value"]))
        except (ValueError, KeyError, TypeError):
            return None
        return out

    def load(self) -> dict[str, dict]:
        """All stored results (id -> value). Damaged parts are renamed ``*.corrupt`` and skipped."""
        results: dict[str, dict] = {}
        corrupt: list[Path] = []
        parts = 0
        for path in self.part_paths():
            recs = self.read_part(path)
            if recs is None:
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                corrupt.append(aside)
                log.warning("%s is incomplete or damaged; set aside as %s, its samples will be redone",
                            path, aside.name)
                continue
            parts += 1
            for sid, value in recs:
                results[sid] = value
        self.last_report = PartReport(parts, len(results), tuple(corrupt))
        return results

    def done_ids(self) -> set[str]:
        """Sample ids whose result is stored in a good part."""
        return set(self.load())

    def append(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> Path | None:
        """Store a batch of results as one new part (atomic). Returns its path (None for no items)."""
        if not items:
            return None
        lines = [canonical_json({"id": sid, "value": value}) + "\n" for sid, value in items]
        body = "".join(lines).encode("utf-8")
        footer = canonical_json({FOOTER_KEY: {"count": len(lines),
                                              "sha256": hashlib.sha256(body).hexdigest()}}) + "\n"
        path = self.dir / f"part-{self._next_index():05d}.jsonl"
        with disk_errors(path):
            write_bytes_atomic(path, body + footer.encode("utf-8"))
        return path

    def clean_temporaries(self) -> int:
        """Remove temp files left by a killed writer (they are never read). Returns how many."""
        n = 0
        if self.dir.is_dir():
            for p in self.dir.glob(".part-*.tmp"):  # fsad_data.atomic's temporary names
                _remove_quietly(p)
                n += 1
        return n


# --------------------------------------------------------------------------- the work folder
def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like dicts (for a readable refusal)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(root)"]


class WorkStore:
    """``DIR/work``: the manifest and one :class:`StageStore` per stage (the build holds the lock beside DIR:
    ``mfsc_builder.ownership.holding``)."""

    def __init__(self, work_dir: Path) -> None:
        self.dir = Path(work_dir)
        self.manifest_path = self.dir / MANIFEST_NAME

    def read_manifest(self) -> dict | None:
        """The stored manifest, or None when there is none yet."""
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BuildError(f"{self.manifest_path} is unreadable ({exc}); use a new --out or --force") from exc

    def open(self, manifest: Mapping[str, Any], replace: bool = False) -> bool:
        """Create the work folder or check it matches ``manifest``. Returns True when resuming.

        ``manifest["fingerprint"]`` decides whether stored results may be reused; everything else in
        the manifest is informational. ``replace`` (``--force``, its results already removed): the manifest is
        written over the old one, so a manifest marks the folder as a build's at every instant.
        """
        old = self.read_manifest()
        if old is None and any(self.dir.glob("*/part-*")):
            raise BuildError(f"{self.dir} holds results but no {MANIFEST_NAME}, so nothing says how they were "
                             "made; they are not mixed with new ones: use --force to discard them, or a new --out")
        if not self.dir.is_dir():  # made whole with its manifest: an empty work/ is never taken for ours
            tmp = temp_folder_beside(self.dir)
            write_json(tmp / MANIFEST_NAME, dict(manifest))
            os.replace(tmp, self.dir)
            return False
        if old is None or replace:
            write_json(self.manifest_path, dict(manifest))
            return False
        if old.get("fingerprint") != manifest.get("fingerprint"):
            keys = _diff_keys(old.get("config"), manifest.get("config"))
            keys += _diff_keys(old.get("captioner"), manifest.get("captioner"), "captioner.")
            what = ", ".join(keys) if keys else "schema"
            raise BuildError(
                f"{self.manifest_path} was made with a different configuration (changed: {what}); "
                "results are not mixed: use a new --out, or --force to discard the old results"
            )
        return True

    def stage(self, name: str) -> StageStore:
        """The store of one stage (created lazily on first write)."""
        st = StageStore(self.dir / name)
        st.clean_temporaries()
        return st

