"""The stages of a build, in order: the per-image steps (``steps.py``: prepare = decode + crop, caption, fill)
over every sample, part by part, then the class records.

Why separate steps: each one is stored per sample id (``store.StageStore``) as soon as it is done, so a killed
build resumes where it stopped; the loop (``run_image_stages``) only orders them. Around the steps, and not
inside them: ``_Prefetch`` runs ``prepare`` ahead of the loop, in one helper thread or in ``workers`` processes
(``workers.py``), up to about one part ahead, so a model captioner never waits for the CPU and the offline
attribute captioner (which runs inside ``prepare`` there) uses every core; ``steps.SkipPolicy`` decides whether a
failing sample stops the build (``on_error=raise``) or is listed and left out (``skip``); ``_Timer`` adds the
time of each step.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Self

from fsad_data import load_rgb, readable_name, shots_selection
from fsad_data.samples import Sample
from mfsc_builder.build_config import BuildConfig
from mfsc_builder.captioners import Captioner
from mfsc_builder.crop import SURFACE_VOTERS
from mfsc_builder.errors import BuildError, BuildInterrupted
from mfsc_builder.fill import class_record, defect_vocab_label, defect_vocabulary
from mfsc_builder.records import ImageRecord
from mfsc_builder.steps import (
    Item,
    Job,
    Loaded,
    Prepared,
    SkipPolicy,
    StopRequest,
    caption,
    class_surface,
    fill,
    prepare,
    runs_beside_crop,
)
from mfsc_builder.store import WorkStore, as_stored
from mfsc_builder.workers import WorkerPool, prepare_in_worker, surface_in_worker

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)
Stored = Callable[[list[str], list[dict]], None]  # (settled sample ids, their image records)
SECONDS = ("crop", "crop_wait", "caption", "fill", "store")


@dataclass
class Context:
    """What every stage of one build reads."""

    cfg: BuildConfig
    samples: Sequence[Sample]
    refs: dict[str, list[Sample]]  # class -> reference normal samples
    source_layout: str
    captioner: Captioner
    textured: dict[str, bool]  # class -> whole image is the foreground (a surface)
    pool: WorkerPool | None = None  # worker processes (``workers.WorkerPool``); None: one helper thread
    workers: int = 1  # how many processes ``pool`` has

    @property
    def caption_in_workers(self) -> bool:
        return runs_beside_crop(self.captioner)


@dataclass
class StageResults:
    """The stored fill results of all samples, and what this run computed, skipped and spent."""

    fills: dict[str, dict]
    computed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("crop", "caption", "fill"), 0))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SECONDS, 0.0))


# --------------------------------------------------------------------------- around the steps
class _Timer:
    """Wall seconds per step, added up over the build (``BuildSummary.seconds``)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] += time.perf_counter() - t0


class _Prefetch:
    """Runs ``prepare`` on the jobs in order, ``lookahead`` jobs ahead of ``next()``: in the build's worker
    processes (``ctx.pool``), else in one helper thread."""

    def __init__(self, ctx: Context, jobs: list[Job], lookahead: int, stop: StopRequest) -> None:
        self._jobs, self._stop = jobs, stop
        self._own: ThreadPoolExecutor | None = None
        self._workers = ctx.pool
        self._pool: WorkerPool | ThreadPoolExecutor
        if ctx.pool is not None:
            self._pool, self._fn = ctx.pool, prepare_in_worker
        else:
            cap = ctx.captioner if ctx.caption_in_workers else None
            self._pool = self._own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfsc-crop")
            self._fn = lambda job: prepare(ctx.cfg, job, cap)
        self._queue: deque[tuple[Job, Future[Prepared]]] = deque((j, self._pool.submit(self._fn, j))
                                                                 for j in jobs[:lookahead])
        self._submitted = len(self._queue)

    def next(self) -> Prepared:
        job, future = self._queue.popleft()
        if self._workers is None:
            got = future.result()
        else:
            got = self._workers.result(future, f"the images {job.batch[0].id} .. {job.batch[-1].id}", self._stop)
        if self._submitted < len(self._jobs) and not self._stop.requested:
            nxt = self._jobs[self._submitted]
            self._queue.append((nxt, self._pool.submit(self._fn, nxt)))
            self._submitted += 1
        return got

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for _, future in self._queue:  # an interrupted loop: jobs not started are dropped
            future.cancel()
        if self._own is not None:  # after an error or a stop, a job still running is not waited for
            self._own.shutdown(wait=exc_type is None, cancel_futures=True)


def _chunks(items: Sequence[Sample], size: int) -> Iterator[list[Sample]]:
    for i in range(0, len(items), size):
        yield list(items[i: i + size])


# --------------------------------------------------------------------------- the loop
@dataclass
class _Part:
    """What one part gathers before it is stored: the loaded regions, the new crops and the new fills."""

    loaded: Loaded = field(default_factory=dict)
    crops: list[Item] = field(default_factory=list)
    fills: list[Item] = field(default_factory=list)


class _ImageLoop:
    """The state the parts of one ``run_image_stages`` share: the three stage stores and what they hold, the
    results so far, and the timer and skip policy around the steps."""

    def __init__(self, ctx: Context, work: WorkStore, stop: StopRequest, stored: Stored | None) -> None:
        self.ctx, self.stop, self.stored = ctx, stop, stored
        self.crop_st, self.cap_st, self.fill_st = work.stage("crop"), work.stage("caption"), work.stage("fill")
        self.crops, self.caps = self.crop_st.load(), self.cap_st.load()
        self.res = StageResults(self.fill_st.load())
        self.timer, self.policy = _Timer(self.res.seconds), SkipPolicy(ctx.cfg.on_error, self.res.skipped)
        self.ref_ids = {s.id for refs in ctx.refs.values() for s in refs}

    def jobs(self, chunks: list[list[Sample]]) -> list[Job]:
        """The captioner batches of every part, each with the stored results ``prepare`` needs."""
        crops, caps, size = self.crops, self.caps, self.ctx.cfg.captioner.batch_size
        return [Job(b, {s.id: crops[s.id] for s in b if s.id in crops}, frozenset(s.id for s in b if s.id in caps),
                    {s.class_name: self.ctx.textured[s.class_name] for s in b})
                for c in chunks for b in _chunks(c, size)]

    def run_part(self, chunk: list[Sample], ahead: _Prefetch) -> None:
        """One part, batch by batch: take what ``prepare`` made, caption and fill; then store its crops and
        fills (the captions are stored per batch, as soon as they are made)."""
        part = _Part()
        for batch in _chunks(chunk, self.ctx.cfg.captioner.batch_size):
            with self.timer("crop_wait"):
                got = ahead.next()
            self._take(got, part)
            if self.stop.requested:
                continue
            self._caption_and_fill(batch, got, part)
        self._store_part(part)

    def _take(self, got: Prepared, part: _Part) -> None:
        """Add a prepared batch to the part: its seconds, its failures (to the skip policy), its regions and
        crops, and the captions made beside the crop (stored at once)."""
        self.res.seconds["crop"] += got.seconds
        self.res.seconds["caption"] += got.caption_seconds
        for s, exc in got.failures:
            self.policy.fail(s, exc)
        part.loaded.update(got.loaded)
        part.crops += got.crops
        if got.caps:
            self._store_captions(got.caps)

    def _caption_and_fill(self, batch: list[Sample], got: Prepared, part: _Part) -> None:
        """Caption what the batch still lacks, fill its records, and tell ``stored`` which samples settled."""
        need = [s for s in batch if s.id in got.loaded and s.id not in self.caps]
        if need:
            with self.timer("caption"):
                new_caps = caption(self.ctx.captioner, need, part.loaded, self.policy)
            self._store_captions(new_caps)
        with self.timer("fill"):
            batch_fills = fill(batch, part.loaded, self.caps, self.ref_ids)
        part.fills += batch_fills
        if self.stored:
            self.stored([s.id for s in batch], [as_stored(d) for _, d in batch_fills])

    def _store_captions(self, new: list[Item]) -> None:
        with self.timer("store"):
            self.cap_st.append(new)
        self.caps.update(new)
        self.res.computed["caption"] += len(new)

    def _store_part(self, part: _Part) -> None:
        """The part's crops, then its fills: a fill is never stored before the crop it was made from."""
        with self.timer("store"):
            self.crop_st.append(part.crops)
        self.crops.update(part.crops)
        self.res.computed["crop"] += len(part.crops)
        with self.timer("store"):
            self.fill_st.append(part.fills)
        self.res.fills.update(part.fills)
        self.res.computed["fill"] += len(part.fills)


def run_image_stages(ctx: Context, work: WorkStore, todo: list[Sample], stop: StopRequest,
                     progress: Progress | None, stored: Stored | None = None) -> StageResults:
    """Crop, caption and fill every sample of ``todo`` not stored yet, one part (``part_size`` samples) at a
    time, each part cut into captioner batches; the parts are stored in the order caption, crop, fill. Once the
    stored fills are read, and after each batch, ``stored`` hears which samples are settled and their records
    (a settled sample without one was skipped): the records of a batch reach it, in their stored form, before
    its part is stored, which is safe for a reader that publishes nothing before the build has finished
    (``write.ImagesWriter``)."""
    cfg = ctx.cfg
    loop = _ImageLoop(ctx, work, stop, stored)
    res = loop.res
    if stored:
        stored(list(res.fills), list(res.fills.values()))
    pending = [s for s in todo if s.id not in res.fills]
    total, done = len(todo), len(todo) - len(pending)
    if progress:
        progress("images", done, total)
    chunks = list(_chunks(pending, cfg.part_size))
    lookahead = max(2 * ctx.workers, -(-cfg.part_size // cfg.captioner.batch_size))
    with _Prefetch(ctx, loop.jobs(chunks), lookahead, stop) as ahead:
        for chunk in chunks:
            loop.run_part(chunk, ahead)
            done += len(chunk)
            if progress:
                progress("images", done, total)
            if stop.requested:
                raise BuildInterrupted(f"interrupted: {len(res.fills)} of {total} images are stored in {work.dir}; "
                                       "run the same command again to resume")
    return res


# --------------------------------------------------------------------------- per class
def _surface_voters(refs: list[Sample], samples: Sequence[Sample], class_name: str) -> list[Sample]:
    """The normal images that decide a class's surface question: its references, then its other normal
    training images by file name, up to ``crop.SURFACE_VOTERS`` (the same on every machine and shard)."""
    ids = {s.id for s in refs}
    more = sorted((s for s in samples if s.class_name == class_name and s.split == "train" and s.label == 0
                   and s.id not in ids), key=lambda s: s.file_name)
    return (list(refs) + more)[:max(SURFACE_VOTERS, len(refs))]


def textured_classes(cfg: BuildConfig, refs: dict[str, list[Sample]], all_samples: Sequence[Sample] = (),
                     pool: WorkerPool | None = None) -> dict[str, bool]:
    """Per class, once: is it a surface filling the frame? By its name or by a clear majority of several of
    its normal images (``crop.class_is_textured``), so an unknown surface class is found, every image of a
    class gets the same kind of record, and one odd reference cannot flip the class. Unreadable images do
    not vote (with on_error=skip). The classes are decided in the worker processes when there are some."""
    if "textured" in cfg.crop:
        return {cls: bool(cfg.crop["textured"]) for cls in sorted(refs)}
    voters = {cls: _surface_voters(refs_of, all_samples, cls) for cls, refs_of in sorted(refs.items())}
    if pool is None:
        return {cls: class_surface(cfg, cls, v) for cls, v in voters.items()}
    futures = {cls: pool.submit(surface_in_worker, cls, v) for cls, v in voters.items()}
    return {cls: pool.result(f, f"the surface decision of class {cls!r}") for cls, f in futures.items()}


def class_records(ctx: Context, work: WorkStore, fills: Mapping[str, dict]) -> dict[str, dict]:
    """One merged record per class from its reference images' stored records (stage "classes")."""
    cfg = ctx.cfg
    st = work.stage("classes")
    stored = st.load()
    new: list[Item] = []
    for cls, refs in sorted(ctx.refs.items()):
        if cls in stored:
            continue
        recs = [ImageRecord.from_dict(fills[s.id]) for s in refs if s.id in fills]
        if not recs:
            msg = f"class {cls}: none of its reference images could be captioned; check them or choose others"
            if cfg.on_error == "raise":
                raise BuildError(msg)
            log.warning(msg)
            continue
        object_name = readable_name(cls)
        vocab = cfg.defect_vocab
        states = _model_defects(ctx.captioner, refs[0], object_name) if vocab == "model" else None
        if vocab == "model" and not states:  # the backend cannot propose: say honestly what was used
            log.warning("class %s: the captioner proposed no defect states; using the generic list", cls)
            vocab = "generic"
        if not states:
            states = defect_vocabulary(vocab, ctx.samples, cls)
        selection = shots_selection(cfg.shots, cfg.seed, cfg.shots_file)
        rec = class_record(cls, object_name, recs, defect_states=list(states), defect_vocab=defect_vocab_label(vocab),
                           source_layout=ctx.source_layout, reference_selection=selection)
        new.append((cls, rec.to_dict()))
    st.append(new)
    stored.update(new)
    if not stored:  # --on-error skip left every class without a record: there is no caption dataset to write
        raise BuildError("no class record could be made: the reference images of every class were skipped (see "
                         "the lines above); fix or remove them, or choose other ones with --seed / --shots-file")
    return stored


def _model_defects(captioner: Captioner, ref: Sample, object_name: str) -> list[str] | None:
    propose = getattr(captioner, "propose_defects", None)  # test doubles may lack it
    if propose is None:
        return None
    return propose(object_name, load_rgb(ref.image_path))
