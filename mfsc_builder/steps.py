"""The steps of a build that one image (or one class's surface question) needs: prepare (decode + crop, and a
captioner that runs beside the crop), caption, fill, and the surface decision of a class; with the small
records they pass (``Job`` in, ``Prepared`` out) and the skip policy they apply to a failing sample.

Why a module of their own: the worker processes (``workers.py``) run these steps and the loop that orders
them (``stages.py``) runs the workers, so the steps sit below both; nothing here imports either of them.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fsad_data import DataError, load_mask, load_rgb, readable_name
from fsad_data.samples import Sample
from mfsc_builder.build_config import BuildConfig
from mfsc_builder.captioners import Captioner, CaptionRequest, CaptionResult
from mfsc_builder.crop import ImageRegions, class_is_textured, crop_regions, is_textured_class, working_image
from mfsc_builder.errors import BuildError
from mfsc_builder.fill import image_record

log = logging.getLogger(__name__)

Item = tuple[str, dict]  # (sample id, stored value)
Loaded = dict[str, tuple[np.ndarray | None, ImageRegions]]  # id -> (working image or None, regions)


class StopRequest(Protocol):
    """Set by the first Ctrl-C (``build._StopFlag``): finish the part in flight, store it, stop."""

    requested: bool


def runs_beside_crop(captioner: Captioner) -> bool:
    """A captioner that is pure CPU work on the pixels (the attribute captioner) runs inside ``prepare``,
    beside the crop, instead of in the loop."""
    return bool(getattr(captioner, "runs_beside_crop", False))


class SkipPolicy:
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


@dataclass
class Prepared:
    """What ``prepare`` sends back for one job: the pixels (or None) and regions, the crops it computed, the
    samples that failed, its seconds, and the captions made beside the crop."""

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


def prepare(cfg: BuildConfig, job: Job, captioner: Captioner | None = None) -> Prepared:
    """Decode and crop a few samples (in a helper thread or a worker process). The captioner gets the working
    copy the masks belong to; a sample whose crop and caption are both stored needs no pixels. With
    ``captioner`` (one that runs where the pixels are), the samples are captioned here too and no pixels
    are returned."""
    t0 = time.perf_counter()
    out = Prepared({}, [], [], 0.0)
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
        policy = SkipPolicy(cfg.on_error, [], deferred=out.failures)
        out.caps = caption(captioner, need, out.loaded, policy) if need else []
        out.caption_seconds = time.perf_counter() - t1
        out.loaded = {k: (None, regions) for k, (_, regions) in out.loaded.items()}
    return out


def caption_request(sample: Sample, image: np.ndarray | None, regions: ImageRegions) -> CaptionRequest:
    return CaptionRequest(
        sample_id=sample.id, object_name=readable_name(sample.class_name), image=image, regions=regions,
        is_anomalous=bool(sample.label), defect_type=sample.defect_type.replace("_", " ") if sample.label else "",
    )


def caption(captioner: Captioner, need: list[Sample], loaded: Loaded, policy: SkipPolicy) -> list[Item]:
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
