"""Post-processing: from a model's ``Prediction`` (scores, R x R maps, token matching) to one result per image.

One owner for what ``detector predict`` writes and what ``Detector.predict`` returns, so that the two agree:
- the map resized to the image's own size, bilinear (``map_to_image_size``);
- the mask: the full-size map at or above the pixel threshold;
- the decision: the image score at or above the image threshold (compared as the model returned it);
- the named defects (``detector.eval.defects``) at the pixel threshold, cut on the full-size map, so boxes and
  region masks are in the image's pixels; only for a model that exposes its token matching (``FineGrainedAD``;
  an export does not).
Evaluation names its regions elsewhere (``defects.NamingCollector``: small maps, the threshold picked after all
images are scored).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from detector.eval.defects import (
    DEFAULT_MIN_AREA,
    DEFAULT_MIN_MARGIN,
    Defect,
    NamingConfig,
    StateBank,
    model_state_bank,
    name_regions,
    token_evidence,
)


def map_to_image_size(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (R, R) map to (H, W) float32 (the map covers the whole image)."""

    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == (height, width):
        return amap.copy()
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)


def names_defects(model: Any) -> bool:
    """Whether the model can name defects: it exposes its token matching and abnormal texts (``FineGrainedAD``)."""
    return hasattr(model, "abnormal_text_features")


@dataclass(frozen=True)
class Namer:
    """What naming a model's regions needs, gathered once per run rather than per image."""

    config: NamingConfig
    bank: StateBank
    object_name: str
    tau: float

    def name(self, amap: np.ndarray, tokens: np.ndarray, groups: np.ndarray) -> tuple[list[Defect], np.ndarray]:
        """The named defects of one full-size map and its label map (``defects.name_regions``)."""
        evidence = token_evidence(tokens, groups, self.bank)
        return name_regions(amap, evidence, self.bank, self.config, object_name=self.object_name, tau=self.tau)


def namer_for(model: Any, pixel: float | None, min_area: float = DEFAULT_MIN_AREA,
              min_margin: float = DEFAULT_MIN_MARGIN, *, object_name: str | None = None,
              bank: StateBank | None = None) -> Namer | None:
    """The namer at pixel threshold ``pixel``: None without a threshold or for a model that cannot name.
    ``object_name`` defaults to the model's meta; ``bank`` (the model's ``model_state_bank``) lets a caller reuse
    the one it built before."""
    if pixel is None or not names_defects(model):
        return None
    config = NamingConfig(pixel, min_area, min_margin)  # checked before the bank is built
    bank = bank if bank is not None else model_state_bank(model)
    if object_name is None:
        object_name = str((getattr(model, "meta", None) or {}).get("object_name") or "")
    return Namer(config, bank, object_name, float(model.tau))


@dataclass(frozen=True)
class Decisions:
    """The thresholds a run applies (None: not applied) and its namer (None: no named defects)."""

    pixel: float | None = None
    image: float | None = None
    namer: Namer | None = None


@dataclass
class ImageResult:
    """One image, post-processed: maps and masks have the image's own size (H, W)."""

    score: float
    model_map: np.ndarray  # (R, R): the map as the model returned it
    map: np.ndarray  # (H, W) float32
    mask: np.ndarray | None  # (H, W) bool, map >= pixel threshold
    anomalous: bool | None  # score >= image threshold
    defects: list[Defect] | None = None  # with a namer
    labels: np.ndarray | None = None  # (H, W) int32 region label map (region k = k), with a namer


def run_model(model: Any, images: list[np.ndarray], decisions: Decisions, *, resolution: int, branch: str,
              batch_size: int) -> Any:
    """``model.predict``, asking for the token matching only when naming: an engine without it (an export, a
    test double) takes no ``tokens`` keyword."""
    extra = {"tokens": True} if decisions.namer is not None else {}
    return model.predict(images, resolution=resolution, branch=branch, batch_size=batch_size, **extra)


def postprocess(pred: Any, images: Sequence[np.ndarray], decisions: Decisions) -> list[ImageResult]:
    """Per image of ``images`` (the arrays the model scored): its ``ImageResult`` from the model's Prediction."""
    out = []
    for j, (img, score, amap) in enumerate(zip(images, pred.scores, pred.maps)):
        full = map_to_image_size(amap, img.shape[0], img.shape[1])
        result = ImageResult(float(score), amap, full,
                             None if decisions.pixel is None else full >= decisions.pixel,
                             None if decisions.image is None else bool(score >= decisions.image))
        if decisions.namer is not None:
            result.defects, result.labels = decisions.namer.name(full, pred.tokens[j], pred.token_groups[j])
        out.append(result)
    return out
