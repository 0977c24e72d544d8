"""The staged MFSC build: ingest -> crop -> caption -> fill -> write, resumable and shardable.

Why staged: each stage's result is stored per sample id (``store.StageStore``), so a crashed or
interrupted build resumes where it stopped and gives the same dataset as an uninterrupted one; the
final datasets are always written from the stored form of the results (``store.as_stored``), so both paths
produce identical bytes. ``--num-shards N --shard-index I`` gives each machine the samples whose stable
hash falls into its shard; every part also processes the (few) reference normal images of every class,
so each part can write complete ``classes`` records and ``merge_builds`` only joins the ``images`` rows.

Where things are: the settings and the manifest in ``build_config``, the per-image steps in ``steps``, their
loop and the class records in ``stages``, the datasets' writing in ``write``; this module runs them in order.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Self

from fsad_data import detect_layout, read_dataset, select_shots
from fsad_data.atomic import clean_orphans
from fsad_data.samples import Sample
from mfsc_builder import clip_tokens
from mfsc_builder.build_config import BuildConfig, build_manifest
from mfsc_builder.captioners import Captioner, make_captioner
from mfsc_builder.errors import BuildError
from mfsc_builder.ownership import (
    BUILD_INFO_NAME,
    WORK_DIR,
    check_apart,
    check_build_output,
    holding,
    image_storage,
    read_build_info,
)
from mfsc_builder.records import SCHEMA_VERSION
from mfsc_builder.stages import Context, Progress, class_records, run_image_stages, textured_classes
from mfsc_builder.store import WorkStore, write_json
from mfsc_builder.workers import build_workers, default_workers
from mfsc_builder.write import ImagesWriter, group_by_split, split_key, staged_datasets, write_datasets

log = logging.getLogger(__name__)

STAGES = ("crop", "caption", "fill", "classes")  # the work folder's stage stores (--force removes them)

__all__ = ["BUILD_INFO_NAME", "BuildConfig", "BuildSummary", "merge_builds", "run_build", "shard_of",
           "write_datasets"]


def shard_of(sample_id: str, num_shards: int) -> int:
    """Stable shard of a sample: the same on every machine and Python version (not ``hash()``)."""
    if num_shards == 1:
        return 0
    return int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "big") % num_shards


# --------------------------------------------------------------------------- interruption
class _StopFlag:
    """First SIGINT asks the build to stop after storing what is done; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Callable[[int, FrameType | None], Any] | int | None = None  # what signal.signal returns

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# --------------------------------------------------------------------------- results
@dataclass
class BuildSummary:
    """What a build did: counts, skipped samples, where the datasets are."""

    out: Path
    images: dict[str, int]
    classes: list[str]
    resumed: bool
    computed: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage (crop includes decoding)


def _source_layout(cfg: BuildConfig, samples: list[Sample]) -> str:
    """The layout name recorded in class records (mvtec, visa, visa_raw, realiad, folder)."""
    if cfg.layout != "auto":
        return cfg.layout
    layout = getattr(samples, "layout", "")  # fsad_data's SampleList says which reader ran
    return str(layout) if layout else str(detect_layout(Path(cfg.source)))


def _is_synthetic(source: Path) -> bool:
    note = source / "license.txt"
    try:
        return note.read_text(encoding="utf-8").startswith("Synthetic anomaly-detection data set made by fsad_data")
    except OSError:
        return False


# --------------------------------------------------------------------------- the run
def run_build(cfg: BuildConfig, *, force: bool = False, progress: Progress | None = None,
              captioner: Captioner | None = None) -> BuildSummary:
    """Build (or resume) the MFSC datasets of ``cfg.source`` into ``cfg.out``."""
    cfg.validate()
    out = Path(cfg.out)
    check_apart(out, [Path(cfg.source)])
    check_build_output(out)
    work = WorkStore(out / WORK_DIR)
    samples = read_dataset(Path(cfg.source), layout=cfg.layout, classes=cfg.classes, on_error=cfg.on_error)
    if not samples:
        raise BuildError(f"no images found in {cfg.source} (layout {cfg.layout}); check the path and --layout")
    class_names = sorted({s.class_name for s in samples})
    refs = {c: list(select_shots(samples, c, cfg.shots, cfg.seed, shots_file=cfg.shots_file)) for c in class_names}
    if captioner is None:
        captioner = make_captioner(cfg.captioner)
    manifest = build_manifest(cfg, samples, captioner)
    workers = cfg.workers or default_workers()
    ref_ids = {s.id for rs in refs.values() for s in rs}
    mine = [s for s in samples if shard_of(s.id, cfg.num_shards) == cfg.shard_index]
    todo = sorted({s.id: s for s in mine + [s for s in samples if s.id in ref_ids]}.values(), key=lambda s: s.id)

    threading.Thread(target=_load_aside, args=(clip_tokens.counter,), daemon=True).start()  # class records' tokenizer
    with contextlib.ExitStack() as done:  # unwinds in reverse: the writer stops, then the lock goes
        # OUT's one lock (any second mfsc run into it is refused before workers start), then OUT checked again:
        # what another command wrote before this one took the lock counts
        done.enter_context(holding(out, "mfsc build"))
        check_build_output(out)
        with build_workers(workers, cfg, captioner) as pool:  # the worker processes live while images are read
            # the class decisions read images: a bad one stops the build before anything is written
            ctx = Context(cfg, samples, refs, _source_layout(cfg, samples), captioner,
                          textured_classes(cfg, refs, samples, pool), pool, workers)
            _clear(out, work, force)  # with the lock held: never pull the floor from under a running build
            resumed = work.open(manifest, replace=force)
            writer = done.enter_context(ImagesWriter(out, _row_order(mine), source=cfg.source, images=cfg.images,
                                                     workers=workers))
            with _StopFlag() as stop:
                res = run_image_stages(ctx, work, todo, stop, progress, stored=writer.add)
        fills, seconds = res.fills, res.seconds
        skipped = [(str(k.path), k.message) for k in getattr(samples, "skipped", [])] + res.skipped
        t0 = time.perf_counter()
        classes = class_records(ctx, work, fills)
        t1 = time.perf_counter()
        mine_ids = {s.id for s in mine}
        image_recs = group_by_split([fills[i] for i in sorted(mine_ids) if i in fills])
        if progress:
            progress("writing", 0, 1)
        writer.finish([classes[c] for c in sorted(classes)])
        seconds.update({"classes": t1 - t0, "write": time.perf_counter() - t1})
        info = _build_info(cfg, ctx, manifest, image_recs, sorted(classes), skipped)
        write_json(out / BUILD_INFO_NAME, info)
        if progress:
            progress("writing", 1, 1)
    return BuildSummary(out, info["images"], info["classes"], resumed, res.computed, skipped, seconds)


def _load_aside(load: Callable[[], object]) -> None:
    """Load something the build needs later while it works; a failure is left to that later call to report."""
    with contextlib.suppress(Exception):
        load()


def _row_order(samples: list[Sample]) -> dict[str, list[str]]:
    """The ids of each split's ``images`` rows, in the datasets' order (by id)."""
    order: dict[str, list[str]] = {}
    for s in sorted(samples, key=lambda s: s.id):
        order.setdefault(s.split, []).append(s.id)
    return order


def _clear(out: Path, work: WorkStore, force: bool) -> None:
    """Remove what a killed build left (never read; with the lock held none is in use) and, with ``force``,
    every earlier result."""
    for stale in out.glob(".write-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for sub in ("images", "classes", WORK_DIR):
        clean_orphans(out / sub)
    if force:  # only what a build writes there: a user's own files in the folder stay
        for name in STAGES:  # the manifest stays until open(replace=True) writes the new one over it
            shutil.rmtree(work.dir / name, ignore_errors=True)
        for sub in ("images", "classes"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / BUILD_INFO_NAME).unlink(missing_ok=True)


def _build_info(cfg: BuildConfig, ctx: Context, manifest: dict[str, Any], image_recs: dict[str, list[dict]],
                classes: list[str], skipped: list[tuple[str, str]]) -> dict[str, Any]:
    """``build_info.json``: what was built from what, read by merge, publish and the card."""
    return {
        "schema_version": SCHEMA_VERSION,
        "source_name": Path(cfg.source).resolve().name,
        "source_layout": ctx.source_layout,
        "synthetic": _is_synthetic(Path(cfg.source)),
        "num_shards": cfg.num_shards,
        "shard_index": cfg.shard_index,
        "fingerprint": manifest["fingerprint"],
        "base_fingerprint": manifest["base_fingerprint"],
        "captioner": dict(manifest["captioner"], response_formats_used=_formats_used(image_recs)),
        "config": manifest["config"],
        "images": {k: len(v) for k, v in image_recs.items()},
        "classes": classes,
        "textured_classes": sorted(c for c, t in ctx.textured.items() if t),
        "image_storage": cfg.images,
        "skipped": [list(x) for x in skipped],
    }


def _formats_used(image_recs: dict[str, list[dict]]) -> dict[str, int]:
    """How many image records' answers were asked for in each response format (a server may refuse the
    record schema mid-build; records from the attribute captioner have none)."""
    used = Counter(r["provenance"].get("response_format", "") for rs in image_recs.values() for r in rs)
    return {k: used[k] for k in sorted(used) if k}


# --------------------------------------------------------------------------- merge
PART_KEYS = ("num_shards", "shard_index", "base_fingerprint", "classes")  # what merging reads of a part
def merge_builds(parts: list[Path], out: Path) -> BuildSummary:
    """Join the outputs of ``--num-shards N`` parts into one build equal to a single-machine build."""
    if not parts:
        raise BuildError("mfsc merge needs at least one part folder")
    with holding(Path(out), "mfsc merge"):  # one merge per --out: a second is refused at once
        return _merge_builds(parts, Path(out))


def _merge_builds(parts: list[Path], out: Path) -> BuildSummary:
    """``merge_builds`` under the lock of ``out``."""
    import datasets  # heavy: loaded when a command runs

    check_apart(Path(out), [Path(p) for p in parts])
    check_build_output(Path(out), "mfsc merge")
    infos = [read_build_info(Path(p), PART_KEYS) for p in parts]
    n = infos[0]["num_shards"]
    if any(i["base_fingerprint"] != infos[0]["base_fingerprint"] for i in infos):
        bad = next(p for p, i in zip(parts, infos) if i["base_fingerprint"] != infos[0]["base_fingerprint"])
        raise BuildError(f"{bad} was built with another configuration or captioner than {parts[0]}; "
                         "rebuild it with the same settings")
    storage = {str(p): image_storage(i) for p, i in zip(parts, infos)}
    if len(set(storage.values())) > 1:
        raise BuildError("the parts keep their images differently (" + ", ".join(f"{p}: {m}" for p, m in
                         storage.items()) + "); rerun mfsc build on the odd ones with the same --images")
    indices = sorted(i["shard_index"] for i in infos)
    if any(i["num_shards"] != n for i in infos) or indices != list(range(n)):
        raise BuildError(f"parts cover shard indices {indices} of --num-shards {n}; give each of 0..{n - 1} "
                         "exactly once")
    images = [datasets.load_from_disk(str(Path(p) / "images")) for p in parts]
    classes = [datasets.load_from_disk(str(Path(p) / "classes")) for p in parts]
    first = classes[[i["shard_index"] for i in infos].index(0)]
    for p, c in zip(parts, classes):
        if c.to_list() != first.to_list():
            log.warning("class records of %s differ from shard 0's (a non-deterministic captioner?); "
                        "shard 0's are kept", p)
    out = Path(out)
    with staged_datasets(out, ".merge-", "merged datasets") as tmp:
        splits = {}
        present = sorted({s for d in images for s in d}, key=split_key)
        for split in present:
            joined = datasets.concatenate_datasets([d[split] for d in images if split in d])
            ids = joined["id"]
            if len(set(ids)) != len(ids):
                raise BuildError(f"the parts share image ids in split {split}; were they built with different "
                                 "--num-shards? rebuild them")
            order = sorted(range(len(ids)), key=ids.__getitem__)
            splits[split] = joined.select(order)
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "images"))
        first.save_to_disk(str(tmp / "classes"))
    info = dict(infos[0])
    info.update({"num_shards": 1, "shard_index": 0, "merged_from": [str(Path(p).resolve()) for p in parts],
                 "images": {s: splits[s].num_rows for s in splits},
                 "skipped": [x for i in infos for x in i.get("skipped", [])]})
    info.pop("fingerprint", None)
    write_json(out / BUILD_INFO_NAME, info)
    return BuildSummary(out, info["images"], info["classes"], False, {}, [tuple(x) for x in info["skipped"]])
