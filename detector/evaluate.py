"""Evaluation protocol: score a class's test split, compute every metric, write metrics, overlays, report.

``detector eval`` runs ``run_eval``. What it writes into OUT:
- ``metrics.json`` (atomic): the metrics (NaN as null), the evaluation resolution and branch, counts,
  the checkpoint's meta (class, shots, seed, backbone) and whether the weights make the figures meaningful;
- ``metrics.csv``: one row for the class (the same numbers);
- ``scores.csv``: one row per test image (id, label, defect type, image score, map max);
- ``overlays/*.png``: image with the ground-truth contour | heat-map overlay, for up to 8 anomalous and 4
  normal images picked evenly along the id-sorted list (deterministic, independent of the scores);
- ``report.html``: the self-contained page (tables + those overlays inline).
It also stores the pixel and image F1-max thresholds in the checkpoint folder (``threshold.json``, keyed
by branch, atomic) for ``detector predict --threshold auto``. The threshold is picked on the test split,
so it is a convenience for inspection, never used for any reported metric.

Masks are resized to the evaluation resolution (R x R, the same squash as the image preprocessing)
bilinearly and binarised at 0.5 afterwards. Memory stays flat in the number of test images: each batch's
maps go into a ``metrics.PixelHistogram`` (2^16 levels, 1.5 MiB in all; AUROC within a recorded bound
of the float maps) and are dropped; only the figure images' maps, one map maximum per image and the image
scores are kept. ``exact_metrics`` (``--exact-metrics``) keeps every float32 map instead (``PixelMaps``,
256 KiB per image at R = 256). metrics.json records which was used under ``pixel_metrics``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from detector import metrics as M
from detector import outputs, report
from detector.checkpoint_io import checkpoint_info, checkpoint_meta, meta_class_name
from detector.data import class_test_samples, iter_batches, load_images, load_sample_mask
from detector.errors import DetectorError
from detector.outputs import json_safe, write_csv
from detector.scoring import DEFAULT_BRANCH, EVAL_RESOLUTION
from fsad_data import Sample
from fsad_data.atomic import write_json_atomic, write_png_atomic

if TYPE_CHECKING:
    from detector.model import Prediction

RANDOM_WEIGHTS_NOTE = "random (untrained) backbone weights: these figures test the wiring and are not meaningful"


class Predictor(Protocol):
    """What evaluation needs from a model: FineGrainedAD.predict's signature."""

    def predict(self, images: list[np.ndarray], resolution: int = 256, branch: str = DEFAULT_BRANCH,
                batch_size: int = 8) -> Prediction: ...


@dataclass
class EvalConfig:
    """Flags of ``detector eval``."""

    checkpoint: Path
    data: Path
    out: Path
    resolution: int = EVAL_RESOLUTION
    branch: str = DEFAULT_BRANCH
    batch_size: int = 8
    device: str = "cpu"
    precision: str = "fp32"
    layout: str = "auto"
    class_name: str | None = None  # default: the class the checkpoint was trained for
    n_anomalous_figures: int = 8
    n_normal_figures: int = 4
    write_threshold: bool = True
    progress: bool = True
    exact_metrics: bool = False  # keep every float32 map (exact pixel metrics, memory grows with images)


@dataclass
class EvalResult:
    """Where the outputs went, and the metrics."""

    metrics: dict[str, float]
    out: Path
    metrics_path: Path
    csv_path: Path
    report_path: Path | None
    overlays: list[Path] = field(default_factory=list)


def mask_at(mask: np.ndarray, resolution: int) -> np.ndarray:
    """A ground truth at R x R: bilinear resize of the 0/1 mask (the images' squash), then binarised at 0.5."""
    import cv2

    m = cv2.resize(np.asarray(mask, np.float32), (resolution, resolution), interpolation=cv2.INTER_LINEAR)
    return m > 0.5


def eval_mask(sample: Sample, resolution: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The sample's ground truth at R x R (``detector.data.load_sample_mask``, then ``mask_at``); without
    ``image_shape`` the mask is read at its file's own size."""
    if sample.mask_path is None and image_shape is None:
        image_shape = (resolution, resolution)  # a normal image without a mask: all False at any size
    return mask_at(load_sample_mask(sample, image_shape), resolution)


def pick_figures(samples: Sequence[Sample], n_anomalous: int = 8, n_normal: int = 4) -> list[int]:
    """Indices of the images to draw: evenly spaced along the id order, anomalous first (deterministic)."""
    chosen: list[int] = []
    for label, n in ((1, n_anomalous), (0, n_normal)):
        idx = sorted((i for i, s in enumerate(samples) if int(s.label) == label), key=lambda i: samples[i].id)
        if n <= 0 or not idx:
            continue
        if len(idx) <= n:
            chosen += idx
        else:
            chosen += [idx[round(j * (len(idx) - 1) / (n - 1))] if n > 1 else idx[0] for j in range(n)]
    return chosen


@dataclass
class Collected:
    """What evaluation keeps of a test split (sample order): per image a score, a label and the map's
    maximum; the pixel accumulator; and only the maps and masks of the images to draw."""

    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) bool
    map_max: np.ndarray  # (N,) float32
    pixels: M.PixelHistogram | M.PixelMaps  # the histogram (default) or every map (exact)
    has_masks: bool  # some ground-truth pixel is anomalous
    map_range: tuple[float, float]  # min and max over all maps: one colour scale for the figures
    kept: dict[int, tuple[np.ndarray, np.ndarray]]  # index -> (map, mask) of the figure images


def collect(model: Predictor, samples: Sequence[Sample], resolution: int = 256, branch: str = DEFAULT_BRANCH,
            batch_size: int = 8, show_progress: bool = False, exact: bool = False,
            keep: Sequence[int] = ()) -> Collected:
    """Run the model over the samples in batches (``detector.data.iter_batches``); one batch of images and maps
    is in memory at a time (plus every map with ``exact``). The maps and masks of the samples at ``keep`` are
    kept for figures."""
    n = len(samples)
    scores = np.zeros(n, np.float32)
    map_max = np.zeros(n, np.float32)
    labels = np.array([bool(s.label) for s in samples], bool)
    pixels = M.PixelMaps(n) if exact else M.PixelHistogram()
    keep = set(keep)
    kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    has_masks, lo, hi = False, math.inf, -math.inf
    bar = outputs.progress(show_progress, n, "evaluating")
    start = 0
    for batch, images, full_masks in iter_batches(samples, batch_size):
        pred = model.predict(images, resolution=resolution, branch=branch, batch_size=batch_size)
        if pred.maps.shape != (len(batch), resolution, resolution):
            raise DetectorError(f"the model returned maps of shape {pred.maps.shape}, expected "
                                f"({len(batch)}, {resolution}, {resolution})")
        maps = np.asarray(pred.maps, np.float32)
        masks = np.stack([mask_at(m, resolution) for m in full_masks])
        pixels.add(maps, masks)
        scores[start : start + len(batch)] = pred.scores
        map_max[start : start + len(batch)] = maps.reshape(len(batch), -1).max(1)
        has_masks = has_masks or bool(masks.any())
        lo, hi = min(lo, float(maps.min())), max(hi, float(maps.max()))
        kept.update((start + j, (maps[j].copy(), masks[j])) for j in range(len(batch)) if start + j in keep)
        start += len(batch)
        bar(len(batch))
    bar(0, done=True)
    return Collected(scores, labels, map_max, pixels, has_masks, (lo, hi), kept)


def figure_images(samples: Sequence[Sample], col: Collected, indices: list[int], resolution: int
                  ) -> list[tuple[str, str, np.ndarray]]:
    """(file stem, caption, panel RGB) per picked image, heat maps on one colour scale for the class."""
    import cv2

    vmin, vmax = col.map_range
    out = []
    for i in indices:
        s = samples[i]
        img = load_images([s])[0]
        img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_AREA)
        amap, mask = col.kept[i]
        pic = report.panel(img, amap, mask if mask.any() else None, vmin, vmax)
        stem = s.id.replace("/", "__")
        caption = f"{s.id} ({'anomalous' if s.label else 'normal'}) score {float(col.scores[i]):.4f}"
        out.append((stem, caption, pic))
    return out


def write_threshold(ckpt_dir: Path, branch: str, metrics: dict[str, float], resolution: int,
                    class_name: str) -> Path:
    """Merge this branch's F1-max thresholds into CKPT/threshold.json (atomic)."""
    path = Path(ckpt_dir) / "threshold.json"
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}
    data[branch] = json_safe({
        "pixel_threshold": metrics.get("pixel_f1_threshold"),
        "image_threshold": metrics.get("image_f1_threshold"),
        "pixel_f1_max": metrics.get("pixel_f1_max"),
        "image_f1_max": metrics.get("image_f1_max"),
        "resolution": resolution,
        "source": f"F1-max on the test split of {class_name} (detector eval); for inspection only",
    })
    write_json_atomic(path, data)
    return path


def evaluate_model(model: Predictor, samples: Sequence[Sample], out: Path, *, class_name: str,
                   resolution: int = 256, branch: str = DEFAULT_BRANCH, batch_size: int = 8,
                   info: dict[str, Any] | None = None, ckpt_dir: Path | None = None,
                   n_anomalous_figures: int = 8, n_normal_figures: int = 4, progress: bool = False,
                   html: bool = True, exact_metrics: bool = False) -> EvalResult:
    """Score the samples with the model and write metrics.json, metrics.csv, overlays and the report."""
    if not samples:
        raise DetectorError(f"no test images for class {class_name!r}; check --data and the class name")
    if resolution < 8:
        raise DetectorError(f"--resolution {resolution} is too small; use 400 (default, the paper) or 256")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    picks = pick_figures(samples, n_anomalous_figures, n_normal_figures)
    col = collect(model, samples, resolution, branch, batch_size, progress, exact_metrics, picks)
    values = M.image_metrics(col.scores, col.labels)
    if col.has_masks:
        values.update(col.pixels.metrics(M.AUPRO_LIMIT))
    pixel_record = col.pixels.record() if col.has_masks else {"method": "none"}  # no anomalous pixel
    info = dict(info or {})
    meaningful = bool(info.get("meaningful", True))
    record = {
        "class_name": class_name,
        "branch": branch,
        "resolution": resolution,
        "aupro_limit": M.AUPRO_LIMIT,
        "n_images": len(samples),
        "n_anomalous": int(col.labels.sum()),
        "n_normal": int((~col.labels).sum()),
        "meaningful": meaningful,
        "note": "" if meaningful else RANDOM_WEIGHTS_NOTE,
        "metrics": values,
        "pixel_metrics": pixel_record,
        **{k: v for k, v in info.items() if k != "meaningful"},
    }
    metrics_path = out / "metrics.json"
    csv_path = write_csv(out / "metrics.csv", [{"class_name": class_name, "branch": branch,
                                                 "resolution": resolution, "n_images": len(samples),
                                                 **{k: values.get(k) for k in M.METRIC_KEYS}}])
    write_csv(out / "scores.csv", [{"id": s.id, "label": int(s.label), "defect_type": s.defect_type,
                                    "score": float(col.scores[i]), "map_max": float(col.map_max[i])}
                                   for i, s in enumerate(samples)])
    overlays: list[Path] = []
    figures = []
    for stem, caption, pic in figure_images(samples, col, picks, resolution):
        path = out / "overlays" / f"{stem}.png"
        write_png_atomic(path, pic)
        overlays.append(path)
        figures.append(report.Figure(caption, pic))
    report_path = None
    if html:
        table = report.Table(f"{class_name}: metrics (%) at {resolution} px, branch {branch}",
                             ["class", *(m.title for m in M.METRICS)],
                             [[class_name, *(values.get(m.key) for m in M.METRICS)]])
        notes = [] if meaningful else [RANDOM_WEIGHTS_NOTE]
        details = [(f"{len(samples)} test images ({record['n_anomalous']} anomalous); F1-max thresholds: "
                   f"image {values.get('image_f1_threshold', float('nan')):.4g}, pixel "
                   f"{values.get('pixel_f1_threshold', float('nan')):.4g}"), pixel_method_note(pixel_record)]
        report_path = report.write_report(out / "report.html", report.Report(
            f"FineGrainedAD evaluation: {class_name}", notes + details, [table], figures))
    if ckpt_dir is not None:
        from detector.model_card import record_evaluation

        write_threshold(ckpt_dir, branch, values, resolution, class_name)
        record_evaluation(ckpt_dir, json_safe(record))  # the card states this evaluation
    write_json_atomic(metrics_path, json_safe(record))  # last: its presence marks a finished evaluation
    return EvalResult(values, out, metrics_path, csv_path, report_path, overlays)


def pixel_method_note(record: dict[str, Any]) -> str:
    """One line for the report: how the pixel metrics were computed."""
    if record["method"] == "exact":
        return "pixel metrics: exact (every float32 map kept)"
    if record["method"] != "histogram":
        return "pixel metrics: none (no anomalous pixel in the ground truth)"
    clamped = f"; {record['clamped_pixels']} map values outside [0, 1] clamped" if record["clamped_pixels"] else ""
    return (f"pixel metrics: {record['levels']}-level histogram (pixel AUROC within "
            f"{record['auroc_bound']:.1e} of the float maps; --exact-metrics for exact){clamped}")


def run_eval(config: EvalConfig) -> EvalResult:
    """``detector eval``: load the checkpoint, evaluate its class's test split, write everything."""
    from detector.model import load_detector

    ckpt = Path(config.checkpoint)
    meta = checkpoint_meta(ckpt)
    class_name = config.class_name or meta_class_name(meta, ckpt)
    samples = class_test_samples(config.data, class_name, config.layout)
    model = load_detector(ckpt, device=config.device, precision=config.precision)
    info = checkpoint_info(meta)
    info.update(checkpoint=str(ckpt), data=str(config.data), config={
        k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()})
    return evaluate_model(model, samples, Path(config.out), class_name=class_name,
                          resolution=config.resolution, branch=config.branch, batch_size=config.batch_size,
                          info=info, ckpt_dir=ckpt if config.write_threshold else None,
                          n_anomalous_figures=config.n_anomalous_figures,
                          n_normal_figures=config.n_normal_figures, progress=config.progress,
                          exact_metrics=config.exact_metrics)
