"""The per-image stages of a build, as small steps: prepare (decode + crop), caption, fill, then the class records.

Why separate steps: each one is stored per sample id (``store.StageStore``) as soon as it is done, so a killed
build resumes where it stopped; the loop (``run_image_stages``) only orders them. Around the steps, and not
inside them: ``_Prefetch`` runs ``prepare`` ahead of the loop, in one helper thread or in ``workers`` processes
(``workers.py``), up to about one part ahead, so a model captioner never waits for the CPU and the offline
attribute captioner (which runs inside ``prepare`` there) uses every core; ``_SkipPolicy`` decides whether a
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
from typing import TYPE_CHECKING, Protocol, Self

import numpy as np

from fsad_data import DataError, load_mask, load_rgb, readable_name, shots_selection
from fsad_data.samples import Sample
from mfsc_builder.build_config import BuildConfig
from mfsc_builder.captioners import Captioner, CaptionRequest, CaptionResult
from mfsc_builder.crop import (
    SURFACE_VOTERS,
    ImageRegions,
    class_is_textured,
    crop_regions,
    is_textured_class,
    working_image,
)
from mfsc_builder.errors import BuildError, BuildInterrupted
from mfsc_builder.fill import class_record, defect_vocab_label, defect_vocabulary, image_record
from mfsc_builder.records import ImageRecord
from mfsc_builder.store import WorkStore, as_stored

if TYPE_CHECKING:
    from mfsc_builder.workers import WorkerPool

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (what, done, total)
Stored = Callable[[list[str], list[dict]], None]  # (settled sample ids, their image records)
Item = tuple[str, dict]  # (sample id, stored value)
Loaded = dict[str, tuple[np.ndarray | None, ImageRegions]]  # id -> (working image or None, regions)
SECONDS = ("crop", "crop_wait", "caption", "fill", "store")


class StopRequest(Protocol):
    """Set by the first Ctrl-C (``build._StopFlag``): finish the part in flight, store it, stop."""

    requested: bool


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


def runs_beside_crop(captioner: Captioner) -> bool:
    """A captioner that is pure CPU work on the pixels (the attribute captioner) runs inside ``prepare``,
    beside the crop, instead of in the loop."""
    return bool(getattr(captioner, "runs_beside_crop", False))


@dataclass
class StageResults:
    """The stored fill results of all samples, and what this run computed, skipped and spent."""

    fills: dict[str, dict]
    computed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("crop", "caption", "fill"), 0))
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SECONDS, 0.0))


# --------------------------------------------------------------------------- around the steps
class _SkipPolicy:
    """``on_error=raise``: the first failing sample stops the build; ``skip``: it is listed and left out."""

    def __init__(self, on_error: str, skipped: list[tuple[str, str]],
                 deferred: list[tuple[Sample, Exception]] | None = None) -> None:
        self.skips = on_error == "skip"
        self.skipped = skipped
        self.deferred = deferred  # inside prepare: failures go back to the loop, which lists and logs them

    def fail(self, sample: Sample, exc: Exception) -> None:
        if not self.skips:
            raise exc
        if self.deferred is not None:
            self.deferred.append((sample, exc))
            return
        self.skipped.append((sample.id, str(exc)))
        log.warning("skipped %s: %s", sample.id, exc)


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
            from mfsc_builder.workers import prepare_in_worker  # it imports this module

            self._pool, self._fn = ctx.pool, prepare_in_worker
        else:
            cap = ctx.captioner if ctx.caption_in_workers else None
            self._pool = self._own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfsc-crop")
            self._fn = lambda job: prepare(ctx.cfg, job, cap)
        self._queue: deque[tuple[Job, Future[_Prepared]]] = deque((j, self._pool.submit(self._fn, j))
                                                                  for j in jobs[:lookahead])
        self._submitted = len(self._queue)

    def next(self) -> _Prepared:
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


# --------------------------------------------------------------------------- the steps
@dataclass
class _Prepared:
    loaded: Loaded
    crops: list[Item]  # newly computed crop results
    failures: list[tuple[Sample, Exception]]
    seconds: float
    caps: list[Item] = field(default_factory=list)  # captions made inside ``prepare`` (in-worker captioner)
    caption_seconds: float = 0.0


@dataclass(frozen=True)
class Job:
    """One captioner batch to prepare, with the stored results of its samples: small and picklable, so a
    worker process needs nothing else."""

    batch: list[Sample]
    crops: dict[str, dict]  # stored crop results of the batch's samples
    captioned: frozenset[str]  # the batch's samples whose caption is stored
    textured: dict[str, bool]  # the class decisions of the batch's classes


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """(RGB image, defect mask or None) of a sample, with the size check of load_mask."""
    image = load_rgb(sample.image_path)
    mask = None
    if sample.mask_path is not None:
        h, w = image.shape[:2]
        mask = load_mask(sample.mask_path, size=(w, h), image_path=sample.image_path)
    return image, mask


def prepare(cfg: BuildConfig, job: Job, captioner: Captioner | None = None) -> _Prepared:
    """Decode and crop a few samples (in a helper thread or a worker process). The captioner gets the working
    copy the masks belong to; a sample whose crop and caption are both stored needs no pixels. With
    ``captioner`` (one that runs where the pixels are), the samples are captioned here too and no pixels
    are returned."""
    t0 = time.perf_counter()
    out = _Prepared({}, [], [], 0.0)
    for s in job.batch:
        try:
            if s.id in job.crops and s.id in job.captioned:  # only the fill is missing
                out.loaded[s.id] = (None, ImageRegions.from_dict(job.crops[s.id]))
                continue
            image, mask = load_sample(s)
            crop_cfg = cfg.crop_config(job.textured[s.class_name])
            if s.id in job.crops:
                regions = ImageRegions.from_dict(job.crops[s.id])
            else:
                regions = crop_regions(image, mask, crop_cfg)
                out.crops.append((s.id, regions.to_dict()))
        except (DataError, BuildError) as exc:
            out.failures.append((s, exc))
            continue
        out.loaded[s.id] = (working_image(image, crop_cfg.work_size), regions)
    out.seconds = time.perf_counter() - t0
    if captioner is not None:
        need = [s for s in job.batch if s.id in out.loaded and s.id not in job.captioned]
        t1 = time.perf_counter()
        policy = _SkipPolicy(cfg.on_error, [], deferred=out.failures)
        out.caps = caption(captioner, need, out.loaded, policy) if need else []
        out.caption_seconds = time.perf_counter() - t1
        out.loaded = {k: (None, regions) for k, (_, regions) in out.loaded.items()}
    return out


def caption_request(sample: Sample, image: np.ndarray | None, regions: ImageRegions) -> CaptionRequest:
    return CaptionRequest(
        sample_id=sample.id, object_name=readable_name(sample.class_name), image=image, regions=regions,
        is_anomalous=bool(sample.label), defect_type=sample.defect_type.replace("_", " ") if sample.label else "",
    )


def caption(captioner: Captioner, need: list[Sample], loaded: Loaded, policy: _SkipPolicy) -> list[Item]:
    """Caption a batch in one call; when it fails and failures are skipped, find the failing sample one by one
    and keep the others."""
    reqs = [caption_request(s, *loaded[s.id]) for s in need]
    results: list[CaptionResult | None]
    try:
        results = list(captioner.caption(reqs))
        if len(results) != len(reqs):
            raise BuildError(f"captioner {captioner.name} returned {len(results)} results for "
                             f"{len(reqs)} images; this is a backend bug, please report it")
    except BuildError:
        if not policy.skips:
            raise
        results = []
        for s, r in zip(need, reqs):
            try:
                results.append(captioner.caption([r])[0])
            except BuildError as one:
                policy.fail(s, one)
                results.append(None)
    return [(s.id, r.to_dict()) for s, r in zip(need, results) if r is not None]


def fill(chunk: list[Sample], loaded: Loaded, caps: Mapping[str, dict], ref_ids: set[str]) -> list[Item]:
    """The image records of the samples of ``chunk`` whose crop and caption are there."""
    out = []
    for s in chunk:
        if s.id not in loaded or s.id not in caps:
            continue
        rec = image_record(s, loaded[s.id][1], CaptionResult.from_dict(caps[s.id]),
                           object_name=readable_name(s.class_name), is_reference=s.id in ref_ids)
        out.append((s.id, rec.to_dict()))
    return out


# --------------------------------------------------------------------------- the loop
def run_image_stages(ctx: Context, work: WorkStore, todo: list[Sample], stop: StopRequest,
                     progress: Progress | None, stored: Stored | None = None) -> StageResults:
    """Crop, caption and fill every sample of ``todo`` not stored yet, one part (``part_size`` samples) at a
    time, each part cut into captioner batches; the parts are stored in the order caption, crop, fill. Once the
    stored fills are read, and after each batch, ``stored`` hears which samples are settled and their records
    (a settled sample without one was skipped): the records of a batch reach it, in their stored form, before
    its part is stored, which is safe for a reader that publishes nothing before the build has finished
    (``write.ImagesWriter``)."""
    cfg = ctx.cfg
    crop_st, cap_st, fill_st = work.stage("crop"), work.stage("caption"), work.stage("fill")
    crops, caps = crop_st.load(), cap_st.load()
    res = StageResults(fill_st.load())
    if stored:
        stored(list(res.fills), list(res.fills.values()))
    timer, policy = _Timer(res.seconds), _SkipPolicy(cfg.on_error, res.skipped)
    ref_ids = {s.id for refs in ctx.refs.values() for s in refs}
    pending = [s for s in todo if s.id not in res.fills]
    total, done = len(todo), len(todo) - len(pending)
    if progress:
        progress("images", done, total)
    size = cfg.captioner.batch_size
    chunks = list(_chunks(pending, cfg.part_size))
    jobs = [Job(b, {s.id: crops[s.id] for s in b if s.id in crops}, frozenset(s.id for s in b if s.id in caps),
                {s.class_name: ctx.textured[s.class_name] for s in b})
            for c in chunks for b in _chunks(c, size)]
    lookahead = max(2 * ctx.workers, -(-cfg.part_size // size))
    with _Prefetch(ctx, jobs, lookahead, stop) as ahead:
        for chunk in chunks:
            loaded: Loaded = {}
            new_crops: list[Item] = []
            new_fills: list[Item] = []
            for batch in _chunks(chunk, size):
                with timer("crop_wait"):
                    got = ahead.next()
                res.seconds["crop"] += got.seconds
                res.seconds["caption"] += got.caption_seconds
                for s, exc in got.failures:
                    policy.fail(s, exc)
                loaded.update(got.loaded)
                new_crops += got.crops
                if got.caps:
                    with timer("store"):
                        cap_st.append(got.caps)
                    caps.update(got.caps)
                    res.computed["caption"] += len(got.caps)
                if stop.requested:
                    continue
                need = [s for s in batch if s.id in got.loaded and s.id not in caps]
                if need:
                    with timer("caption"):
                        new_caps = caption(ctx.captioner, need, loaded, policy)
                    with timer("store"):
                        cap_st.append(new_caps)
                    caps.update(new_caps)
                    res.computed["caption"] += len(new_caps)
                with timer("fill"):
                    batch_fills = fill(batch, loaded, caps, ref_ids)
                new_fills += batch_fills
                if stored:
                    stored([s.id for s in batch], [as_stored(d) for _, d in batch_fills])
            with timer("store"):
                crop_st.append(new_crops)
            crops.update(new_crops)
            res.computed["crop"] += len(new_crops)
            with timer("store"):
                fill_st.append(new_fills)
            res.fills.update(new_fills)
            res.computed["fill"] += len(new_fills)
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
    from mfsc_builder.workers import surface_in_worker  # it imports this module

    futures = {cls: pool.submit(surface_in_worker, cls, v) for cls, v in voters.items()}
    return {cls: pool.result(f, f"the surface decision of class {cls!r}") for cls, f in futures.items()}


def class_surface(cfg: BuildConfig, class_name: str, voters: list[Sample]) -> bool:
    """``crop.class_is_textured`` of one class on its voting images (read here, in a worker when there are)."""
    config = cfg.crop_config()
    if is_textured_class(class_name):  # decided by its name: no image to read
        return True
    images = []
    for s in voters:
        try:
            images.append(working_image(load_rgb(s.image_path), config.work_size))
        except DataError:
            if cfg.on_error == "raise":
                raise
    return class_is_textured(class_name, images, config)


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
