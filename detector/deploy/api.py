"""The Python API: ``from detector import Detector``; ``Detector.load(path_or_hub_id).predict(images)``.

Why a separate layer: ``FineGrainedAD.predict`` is the method (RGB uint8 arrays in, scores and R x R maps
out); a user's service has file paths, PIL images or arrays of any size, wants the map at each image's own
size and a defect mask, and should not need to know how checkpoints are laid out. This module adds exactly
that and nothing else: input conversion (``as_rgb``), the checkpoint's F1-max thresholds when
``detector eval`` stored them, maps resized to the image (bilinear, as ``detector predict`` writes them),
and one ``DetectorResult`` per image. The source is a checkpoint folder, an export folder (``detector
export``; then ONNX Runtime or OpenVINO runs it, without torch) or a Hub model id ``ORG/NAME``.

torch is imported only when a PyTorch checkpoint is loaded, so ``import detector`` stays cheap.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from detector.errors import DetectorError
from detector.eval.defects import DEFAULT_MIN_AREA, DEFAULT_MIN_MARGIN
from detector.eval.postprocess import Decisions, namer_for, names_defects, postprocess, run_model
from detector.method.scoring import DEFAULT_BRANCH, MAP_RESOLUTION
from detector.run.runtime import EXPORT_JSON, load_exported
from detector.store.checkpoint import backbone_name, checkpoint_meta, shot_count
from detector.store.hub import resolve_checkpoint
from detector.store.thresholds import image_threshold_in_force, resolve_threshold, stored_thresholds
from fsad_data import load_rgb

if TYPE_CHECKING:
    from detector.store.thresholds import Thresholds


ImageLike = str | Path | np.ndarray | Any  # Any: a PIL.Image.Image (PIL is imported only when given one)
Threshold = float | Literal["auto"] | str | Path | None  # str / Path: an evaluation folder or its threshold.json


class Engine(Protocol):
    """What runs the model: ``FineGrainedAD`` (PyTorch) or ``runtime.ExportedModel`` (ONNX Runtime/OpenVINO)."""

    def predict(self, images: list[np.ndarray], resolution: int = MAP_RESOLUTION, branch: str = DEFAULT_BRANCH,
                batch_size: int = 8) -> Any: ...


@dataclass
class DetectorResult:
    """One image's prediction; maps and masks have the image's own size (H, W)."""

    score: float  # image anomaly score, higher = more anomalous
    map: np.ndarray  # (H, W) float32 anomaly map
    mask: np.ndarray | None  # (H, W) bool, map >= pixel threshold; None without a threshold
    anomalous: bool | None  # score >= the image threshold; None unless `detector eval` stored one
    defects: list[dict[str, Any]] | None = None  # named defects at the pixel threshold (detector.eval.defects);
    # None without a threshold or for an engine that exposes no token matching (an export)


def as_rgb(image: ImageLike, where: str = "image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a path, a PIL image or an array (gray and RGBA are converted)."""
    if isinstance(image, (str, Path)):

        return load_rgb(Path(image))
    if type(image).__module__.startswith("PIL."):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise DetectorError(f"{where}: array of dtype {image.dtype}; pass uint8 RGB (H, W, 3) values 0..255 "
                                "(e.g. (x * 255).round().astype(np.uint8) for floats in 0..1)")
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return np.ascontiguousarray(image[:, :, :3])
        raise DetectorError(f"{where}: array of shape {image.shape}; pass (H, W, 3) RGB, (H, W) gray or "
                            "(H, W, 4) RGBA")
    raise DetectorError(f"{where}: a {type(image).__name__}; pass a file path, a PIL image or a numpy array")


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or many: a 4-D array is a batch, a str/Path/2-D/3-D array/PIL image is one image."""
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, Path)) or type(images).__module__.startswith("PIL."):
        return [images]
    return list(images)


class Detector:
    """A trained FineGrainedAD detector for one class, ready to score images.

    >>> det = Detector.load("ckpt/bottle-k4-s0")          # or an export folder, or "org/bottle-detector"
    >>> results = det.predict(["a.png", pil_image, array])  # one DetectorResult per image
    """

    def __init__(self, engine: Engine, meta: dict[str, Any], thresholds: dict[str, Any] | None,
                 source: str, resolution: int | None = None, folder: Path | None = None) -> None:
        self.engine = engine
        self.meta = meta
        self.thresholds = thresholds or {}  # what threshold="auto" finds for the fused branch, if anything
        self.source = source
        self.folder = folder  # the checkpoint or export folder (a Hub id's snapshot); None: built in memory
        self._fixed_resolution = resolution  # an export's map size; None: any

        self.min_area, self.min_margin = DEFAULT_MIN_AREA, DEFAULT_MIN_MARGIN  # named defects (settable)
        self._bank: Any = None

    @classmethod
    def load(cls, path_or_hub_id: str | Path, *, device: str = "cpu", precision: str = "fp32",
             revision: str | None = None, engine: str | None = None) -> Detector:
        """Load a checkpoint folder, an export folder or a Hub model id (``ORG/NAME``, optional ``revision``).

        ``engine``: None (PyTorch for a checkpoint, the export's own runtime for an export), or "onnx" /
        "openvino" to pick the runtime of an export (OpenVINO also runs ONNX exports).
        """

        folder = resolve_checkpoint(path_or_hub_id, revision=revision)
        if (folder / EXPORT_JSON).is_file():

            model = load_exported(folder, engine=engine, device=device)
            return cls(model, model.spec.get("checkpoint_meta") or {}, read_thresholds(folder),
                       str(path_or_hub_id), resolution=model.resolution, folder=folder)
        if engine not in (None, "torch"):
            raise DetectorError(f"{folder} is a PyTorch checkpoint; engine {engine!r} needs an export: run "
                                f"`detector export --checkpoint {folder} --format {engine} --out DIR`")
        # torch: only a checkpoint needs it, an export runs without
        from detector.store.saved_detector import load_detector

        meta = checkpoint_meta(folder)
        model = load_detector(folder, device=device, precision=precision)
        return cls(model, meta, read_thresholds(folder), str(path_or_hub_id), folder=folder)

    def __repr__(self) -> str:
        def num(key: str) -> str:
            value = self.thresholds.get(key)
            return "none" if value is None else format(value, ".4g")

        found = any(self.thresholds.get(k) is not None for k in ("pixel_threshold", "image_threshold"))
        thresholds = f"pixel {num('pixel_threshold')}, image {num('image_threshold')}" if found else \
            "none (run detector eval)"
        return (f"Detector({self.source!r}: class {self.class_name!r}, backbone {backbone_name(self.meta)}, "
                f"shots {shot_count(self.meta)}, resolution {self.resolution}, thresholds {thresholds})")

    @property
    def class_name(self) -> str | None:
        """The class the detector was trained for."""
        return self.meta.get("class_name")

    @property
    def names_defects(self) -> bool:
        """Whether ``predict`` names defects (``detector.eval.defects``): the PyTorch engine does, with a pixel
        threshold; an export gives scores and maps only (its graph has no token outputs)."""

        return names_defects(self.engine)

    @property
    def resolution(self) -> int:
        """Map resolution used by default: an export's fixed size, else the threshold's, else ``MAP_RESOLUTION``."""
        return int(self._fixed_resolution or self.thresholds.get("resolution") or MAP_RESOLUTION)

    def predict(self, images: ImageLike | Sequence[ImageLike], *, threshold: Threshold = "auto",
                image_threshold: float | None = None, resolution: int | None = None,
                batch_size: int = 8) -> list[DetectorResult]:
        """Score images (paths, PIL images, arrays; one or a list): one ``DetectorResult`` per image.

        ``threshold``: "auto" (the F1-max thresholds of the checkpoint's latest `detector eval`; no mask if
        there are none), an evaluation folder or its ``threshold.json`` (as ``detector predict --threshold``),
        a number (pixel threshold for the mask) or None (no mask). ``image_threshold``: the image score at or
        above which ``anomalous`` is True, over the evaluation's (as ``detector predict --image-threshold``;
        with threshold None or a number, the only one). The map is computed at ``resolution`` (default
        ``self.resolution``) and resized to each image's size.
        """

        picked = self._picked(threshold)
        res = int(resolution or (picked.resolution if picked else None) or self.resolution)
        if self._fixed_resolution and res != self._fixed_resolution:
            raise DetectorError(f"{self.source} was exported at resolution {self._fixed_resolution}; predict at "
                                f"that resolution or export again with --resolution {res}")
        if picked is not None:  # an evaluation named by the caller: its resolution, or a clear refusal
            if picked.resolution and picked.resolution != res:
                raise DetectorError(f"threshold {str(threshold)!r} was picked at resolution {picked.resolution}, "
                                    f"not {res}; leave resolution out or pass a number as threshold")
            pixel_t, image_t = picked.pixel, picked.image
        else:
            pixel_t, image_t = self._thresholds(threshold, res)
        image_t = image_threshold_in_force(image_threshold, image_t, "image_threshold")
        items = _as_list(images)
        results: list[DetectorResult] = []
        for start in range(0, len(items), max(1, batch_size)):
            batch = [as_rgb(im, f"image {start + i}") for i, im in enumerate(items[start : start + batch_size])]
            decisions = self._decisions(pixel_t, image_t)
            pred = run_model(self.engine, batch, decisions, resolution=res, branch=DEFAULT_BRANCH,
                             batch_size=batch_size)
            results += [DetectorResult(score=r.score, map=r.map, mask=r.mask, anomalous=r.anomalous,
                                       defects=None if r.defects is None else [d.to_dict() for d in r.defects])
                        for r in postprocess(pred, batch, decisions)]
        return results

    def _decisions(self, pixel: float | None, image: float | None) -> Decisions:
        """The thresholds to apply and the namer (``detector.eval.postprocess``): defects are named with a pixel
        threshold by an engine that exposes its token matching, at the current ``min_area`` / ``min_margin``;
        the state bank is built once per detector."""

        namer = namer_for(self.engine, pixel, self.min_area, self.min_margin,
                          object_name=str(self.meta.get("object_name") or ""), bank=getattr(self, "_bank", None))
        if namer is not None:
            self._bank = namer.bank
        return Decisions(pixel, image, namer)

    def _thresholds(self, threshold: Threshold, resolution: int) -> tuple[float | None, float | None]:
        """(pixel, image) thresholds for ``threshold``; auto ones only at the resolution they were picked at."""
        if threshold is None:
            return None, None
        if isinstance(threshold, str):
            t = self.thresholds
            if t.get("resolution") and t["resolution"] != resolution:
                return None, None
            pixel, image = t.get("pixel_threshold"), t.get("image_threshold")  # an image-level eval: no pixel one
            return None if pixel is None else float(pixel), None if image is None else float(image)
        return float(threshold), None

    def _picked(self, threshold: Threshold) -> Thresholds | None:
        """The thresholds of an evaluation folder or ``threshold.json`` given as ``threshold`` (checked by
        ``detector.store.thresholds``, as ``detector predict --threshold PATH``); None for auto, a number or None."""
        if not isinstance(threshold, (str, Path)) or str(threshold) == "auto":
            return None

        try:
            float(str(threshold))
        except ValueError:
            return resolve_threshold(Path(threshold), self.folder or Path("."))
        raise DetectorError(f"threshold={threshold!r}: give a number as a number, 'auto', an evaluation folder or None")


def read_thresholds(folder: Path, branch: str = DEFAULT_BRANCH) -> dict[str, Any] | None:
    """The ``branch`` entry of FOLDER/threshold.json (`detector eval`'s, checked by ``detector.store.thresholds``), or None."""

    return stored_thresholds(Path(folder), branch)
