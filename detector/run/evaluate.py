"""Evaluation protocol: score a class's test split, compute every metric, write metrics, overlays, report.

``detector eval`` runs ``run_eval``. What it writes into OUT:
- ``metrics.json`` (atomic): the metrics (NaN as null), the evaluation resolution and branch, counts,
  the checkpoint's meta (class, shots, seed, backbone) and whether the weights make the figures meaningful;
- ``metrics.csv``: one row for the class (the same numbers);
- ``scores.csv``: one row per test image (id, label, defect type, image score, map max);
- ``overlays/*.png``: image with the ground-truth contour | heat-map overlay, for up to 8 anomalous and 4
  normal images picked evenly along the id-sorted list (deterministic, independent of the scores);
- ``defects.json``: per test image its named defects (``detector.eval.defects``) at the pixel F1-max threshold,
  and per ground-truth region the true and the named component (``naming_accuracy`` in metrics.json; the
  truth needs the test images' caption regions: ``--captions``, default the training captions);
- ``report.html``: the self-contained page: metrics and per-defect-type tables, ROC/PR curves and score
  histograms (matplotlib), the threshold explorer (an image-threshold slider: flags, false alarms, misses,
  flips; a pixel-threshold slider: region outlines; the ``detector predict`` command applying both) over every
  test image's overlay (capped by a byte budget) with its named defects, and the panels above.
- ``threshold.json``: the pixel and image F1-max thresholds of the branch (``detector.store.thresholds``), naming the
  checkpoint by its weights' SHA-256, for ``detector predict --threshold OUT``. Picked on the test split: a
  convenience for inspection, never used for any reported metric.
Into the checkpoint folder, where it is writable: the evaluation's summary per branch (``evaluation.json``)
and the refreshed model card (``README.md``, ``detector.store.model_card``), so that ``detector push`` shares them;
a read-only or busy checkpoint is left as it is, with a warning, and a Hub snapshot (``--checkpoint
ORG/NAME``) is never written.
The whole evaluation is written to a temporary folder beside OUT and swapped in at the end (an OUT that is not
an earlier evaluation is refused before any work), so a kill leaves the previous evaluation whole.

Masks are resized to the evaluation resolution (R x R, the same squash as the image preprocessing)
bilinearly and binarised at 0.5 afterwards. Memory stays flat in the number of test images: each batch's
maps go into a ``metrics.PixelHistogram`` (2^16 levels, 1.5 MiB in all; AUROC within a recorded bound
of the float maps) and are dropped; only the figure images' maps, one map maximum per image and the image
scores are kept. ``exact_metrics`` (``--exact-metrics``) keeps every float32 map instead (``PixelMaps``,
256 KiB per image at R = 256). metrics.json records which was used under ``pixel_metrics``.
"""
from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import cv2
import numpy as np

from detector.errors import DetectorError
from detector.eval import metrics as M
from detector.eval import report
from detector.eval.defects import (
    DEFAULT_MIN_AREA,
    DEFAULT_MIN_MARGIN,
    NamingCollector,
    NamingConfig,
    model_state_bank,
)
from detector.method.scoring import DEFAULT_BRANCH, EVAL_RESOLUTION, MAP_RESOLUTION
from detector.run import outputs
from detector.run.outputs import write_csv
from detector.store.captions import drop_changed, load_image_regions
from detector.store.checkpoint import checkpoint_info, checkpoint_meta, meta_class_name
from detector.store.data import (
    class_test_samples,
    image_level_only,
    iter_batches,
    load_images,
    load_sample_mask,
    readable,
)
from detector.store.files import (
    DEFECTS_JSON,
    EVALUATION_FORMAT,
    SCORES_CSV,
    OwnOutput,
    check_replaceable,
    has_format,
    json_safe,
    output_lock,
)
from detector.store.hub import resolve_checkpoint
from detector.store.model_card import record_evaluation
from detector.store.thresholds import THRESHOLD_FILE, checkpoint_sha256, threshold_record
from fsad_data import Sample
from fsad_data.atomic import staged_folder, write_json_atomic, write_png_atomic
from fsad_data.folder_lock import FolderInUse

if TYPE_CHECKING:
    from detector.method.model import Prediction

IMAGE_LEVEL_NOTE = "image-level evaluation: the anomalous test images have no masks"
RANDOM_WEIGHTS_NOTE = "random (untrained) backbone weights: these figures test the wiring and are not meaningful"


class Predictor(Protocol):
    """What evaluation needs from a model: FineGrainedAD.predict's signature."""

    def predict(self, images: list[np.ndarray], resolution: int = MAP_RESOLUTION, branch: str = DEFAULT_BRANCH,
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
    captions: str | None = None  # caption dataset with the test images' regions; None: the training captions
    min_area: float = DEFAULT_MIN_AREA  # named defects: smallest region, fraction of the image
    min_margin: float = DEFAULT_MIN_MARGIN  # named defects: state probability margin, else "unknown"
    report_bytes: int = 4_000_000  # the report's overlay gallery stops at about this many bytes
    on_error: str = "raise"  # a test image or mask that does not decode: stop (naming it) or skip (listed)


@dataclass
class EvalResult:
    """Where the outputs went, and the metrics."""

    metrics: dict[str, float]
    out: Path
    metrics_path: Path
    csv_path: Path
    report_path: Path | None
    overlays: list[Path] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # --on-error skip: {"path", "error"} per test image
    card_note: str = ""  # why the checkpoint's model card was not updated, when it was not


def mask_at(mask: np.ndarray, resolution: int) -> np.ndarray:
    """A ground truth at R x R: bilinear resize of the 0/1 mask (the images' squash), then binarised at 0.5."""

    m = cv2.resize(np.asarray(mask, np.float32), (resolution, resolution), interpolation=cv2.INTER_LINEAR)
    return m > 0.5


def eval_mask(sample: Sample, resolution: int, image_shape: tuple[int, int] | None = None) -> np.ndarray:
    """The sample's ground truth at R x R (``detector.store.data.load_sample_mask``, then ``mask_at``); without
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
    by_type: dict[str, Any] = field(default_factory=dict)  # defect type -> PixelHistogram of its images
    namer: NamingCollector | None = None  # small maps + token evidence for named defects


def collect(model: Predictor, samples: Sequence[Sample], resolution: int = MAP_RESOLUTION, branch: str = DEFAULT_BRANCH,
            batch_size: int = 8, show_progress: bool = False, exact: bool = False,
            keep: Sequence[int] = (), namer: NamingCollector | None = None) -> Collected:
    """Run the model over the samples in batches (``detector.store.data.iter_batches``); one batch of images and maps
    is in memory at a time (plus every map with ``exact``). The maps and masks of the samples at ``keep`` are
    kept for figures; with ``namer`` every image's small map and token evidence for named defects, and one
    pixel histogram per defect type (1.5 MiB each) for the per-type table."""
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
    by_type: dict[str, Any] = {}
    for batch, images, full_masks in iter_batches(samples, batch_size, image_level_only(samples)):
        if namer is not None:
            pred = model.predict(images, resolution=resolution, branch=branch, batch_size=batch_size, tokens=True)
        else:
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
        for j, s in enumerate(batch):
            by_type.setdefault(s.defect_type, M.PixelHistogram()).add(maps[j : j + 1], masks[j : j + 1])
            if namer is not None:
                namer.add(start + j, maps[j], pred.tokens[j], pred.token_groups[j], masks[j], images[j].shape[:2])
        start += len(batch)
        bar(len(batch))
    bar(0, done=True)
    return Collected(scores, labels, map_max, pixels, has_masks, (lo, hi), kept, by_type, namer)


def figure_images(samples: Sequence[Sample], col: Collected, indices: list[int], resolution: int
                  ) -> list[tuple[str, str, np.ndarray]]:
    """(file stem, caption, panel RGB) per picked image, heat maps on one colour scale for the class."""

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


PER_TYPE_METRICS = ("image_auroc", "pixel_auroc", "aupro")  # per defect type: against the good images
METRICS_JSON, METRICS_CSV = "metrics.json", "metrics.csv"
EVALUATION_OUTPUT = OwnOutput("an evaluation of `detector eval`", METRICS_JSON, lambda path: has_format(
    path / METRICS_JSON, EVALUATION_FORMAT, frozenset({"class_name", "metrics", "n_images"})))


@dataclass(frozen=True, kw_only=True)
class ScoringSettings:
    """How a model is run over images, for eval and predict alike: the map size, the branch, the batch, what the
    model is (``checkpoint_info``), a progress bar, and the region settings of the named defects."""

    resolution: int = MAP_RESOLUTION
    branch: str = DEFAULT_BRANCH
    batch_size: int = 8
    info: dict[str, Any] | None = None
    progress: bool = False
    min_area: float = DEFAULT_MIN_AREA
    min_margin: float = DEFAULT_MIN_MARGIN


@dataclass(frozen=True, kw_only=True)
class EvalSettings(ScoringSettings):
    """How ``evaluate_model`` evaluates and what it writes, shared by its steps (collect -> record -> write)."""

    class_name: str
    checkpoint_sha256: str | None = None  # names the checkpoint in threshold.json
    write_threshold: bool = True
    card_dir: Path | None = None  # the checkpoint folder whose model card records the evaluation
    n_anomalous_figures: int = 8
    n_normal_figures: int = 4
    html: bool = True
    exact_metrics: bool = False
    captions: str | None = None
    report_bytes: int = 4_000_000


def evaluate_model(model: Predictor, samples: Sequence[Sample], out: Path, s: EvalSettings) -> EvalResult:
    """Score the samples and write the evaluation into ``out``: collect (the model over the split), record (metrics,
    named defects), write (tables, overlays, report, thresholds, the model card; metrics.json last, so that its
    presence marks a finished evaluation)."""
    if not samples:
        raise DetectorError(f"no test images for class {s.class_name!r}; check --data and the class name")
    if s.resolution < 8:
        raise DetectorError(f"--resolution {s.resolution} is too small; use 256 (default) or 400 (the paper)")
    naming_config = NamingConfig(0.0, s.min_area, s.min_margin)  # the threshold comes after collection
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    picks = pick_figures(samples, s.n_anomalous_figures, s.n_normal_figures)
    col = collect(model, samples, s.resolution, s.branch, s.batch_size, s.progress, s.exact_metrics, picks,
                  _naming_collector(model))
    record, naming = evaluation_record(model, samples, col, s, naming_config)
    csv_path = _write_tables(out, samples, col, record, naming)
    overlays, figures = _write_overlays(out, samples, col, picks, s.resolution)
    report_path = _write_report(out, samples, col, record, naming, figures, s) if s.html else None
    thresholds = threshold_record(s.branch, record["metrics"], s.resolution, s.class_name, s.checkpoint_sha256)
    if s.write_threshold:
        write_json_atomic(out / THRESHOLD_FILE, thresholds)
    card_note = _record_in_card(s.card_dir, record, thresholds[s.branch])
    metrics_path = out / METRICS_JSON
    write_json_atomic(metrics_path, json_safe(record))  # last: its presence marks a finished evaluation
    return EvalResult(record["metrics"], out, metrics_path, csv_path, report_path, overlays, card_note=card_note)


def _naming_collector(model: Predictor) -> NamingCollector | None:
    """What keeps every image's evidence for named defects: only a model that exposes its token matching."""
    if not hasattr(model, "abnormal_text_features"):
        return None

    return NamingCollector(model_state_bank(model))


def evaluation_record(model: Predictor, samples: Sequence[Sample], col: Collected, s: EvalSettings,
                      naming_config: NamingConfig) -> tuple[dict[str, Any], Any]:
    """metrics.json's content (the metrics under "metrics") and the named defects (None without token
    matching): computed once, then every file is written from them."""
    values = M.image_metrics(col.scores, col.labels)
    if col.has_masks:
        values.update(col.pixels.metrics(M.AUPRO_LIMIT))
    pixel_record = col.pixels.record() if col.has_masks else {  # no anomalous pixel: no pixel metric
        "method": "none", "why": IMAGE_LEVEL_NOTE if image_level_only(samples) else "no anomalous pixel in the "
        "ground truth"}
    info = dict(s.info or {})
    meaningful = bool(info.get("meaningful", True))
    naming, naming_record = None, None
    values.update(naming_accuracy=float("nan"), state_accuracy=float("nan"))  # named defects need token matching
    if col.namer is not None:
        naming, naming_record = _name_defects(model, samples, col, values, naming_config, s.captions, s.class_name)
        values.update({k: naming.summary[k] for k in ("naming_accuracy", "state_accuracy")})
    return {
        "format": EVALUATION_FORMAT,
        "class_name": s.class_name,
        "branch": s.branch,
        "resolution": s.resolution,
        "aupro_limit": M.AUPRO_LIMIT,
        "n_images": len(samples),
        "n_anomalous": int(col.labels.sum()),
        "n_normal": int((~col.labels).sum()),
        "meaningful": meaningful,
        "note": "" if meaningful else RANDOM_WEIGHTS_NOTE,
        "metrics": values,
        "pixel_metrics": pixel_record,
        "per_type": per_type_metrics(samples, col),
        "naming": naming_record,
        **{k: v for k, v in info.items() if k != "meaningful"},
    }, naming


def _write_tables(out: Path, samples: Sequence[Sample], col: Collected, record: dict[str, Any], naming: Any
                  ) -> Path:
    """metrics.csv (returned), scores.csv and, with named defects, defects.json."""
    values = record["metrics"]
    csv_path = write_csv(out / METRICS_CSV, [{"class_name": record["class_name"], "branch": record["branch"],
                                                 "resolution": record["resolution"], "n_images": len(samples),
                                                 **{k: values.get(k) for k in M.METRIC_KEYS}}])
    write_csv(out / SCORES_CSV, [{"id": s.id, "label": int(s.label), "defect_type": s.defect_type,
                                    "score": float(col.scores[i]), "map_max": float(col.map_max[i]),
                                    **({} if naming is None else {
                                        "flag_threshold": float(naming.flags[i]),
                                        "n_defects": len(naming.defects[i]),
                                        "defects": "; ".join(d.sentence for d in naming.defects[i])})}
                                   for i, s in enumerate(samples)])
    if naming is not None:
        write_json_atomic(out / DEFECTS_JSON, json_safe({
            **record["naming"],
            "images": [{"id": s.id, "label": int(s.label), "defect_type": s.defect_type,
                        "flag_threshold": float(naming.flags[i]),
                        "defects": [d.to_dict() for d in naming.defects[i]]} for i, s in enumerate(samples)],
            "regions": [{**{k: v for k, v in r.items() if k != "image"}, "id": samples[r["image"]].id}
                        for r in naming.rows]}))
    return csv_path


def _write_overlays(out: Path, samples: Sequence[Sample], col: Collected, picks: list[int], resolution: int
                    ) -> tuple[list[Path], list[report.Figure]]:
    """overlays/*.png of the picked images, and the same panels as the report's figures."""
    overlays: list[Path] = []
    figures = []
    for stem, caption, pic in figure_images(samples, col, picks, resolution):
        path = out / "overlays" / f"{stem}.png"
        write_png_atomic(path, pic)
        overlays.append(path)
        figures.append(report.Figure(caption, pic))
    return overlays, figures


def _write_report(out: Path, samples: Sequence[Sample], col: Collected, record: dict[str, Any], naming: Any,
                  figures: list[report.Figure], s: EvalSettings) -> Path:
    """report.html: the notes (weights, counts and thresholds, how the pixel metrics were computed, naming)
    above ``eval_report``'s page."""
    values, pixel_record, naming_record = record["metrics"], record["pixel_metrics"], record["naming"]
    notes = [] if record["meaningful"] else [RANDOM_WEIGHTS_NOTE]
    details = [(f"{len(samples)} test images ({record['n_anomalous']} anomalous); F1-max thresholds: "
               f"image {values.get('image_f1_threshold', float('nan')):.4g}, pixel "
               f"{values.get('pixel_f1_threshold', float('nan')):.4g}"), pixel_method_note(pixel_record)]
    if naming_record is not None:
        details.append(naming_record["note"])
    page = eval_report(samples, col, values, record, naming, class_name=s.class_name, resolution=s.resolution,
                       branch=s.branch, notes=notes + details, figures=figures, ckpt_dir=s.card_dir,
                       budget_bytes=s.report_bytes)
    return report.write_report(out / "report.html", page)


def _record_in_card(card_dir: Path | None, record: dict[str, Any], thresholds: dict[str, Any]) -> str:
    """The checkpoint's model card states this evaluation with its thresholds (which --threshold auto then finds,
    ``detector.store.thresholds``), where the folder is writable; else why not (a line for the user)."""
    if card_dir is None:
        return ""

    try:
        record_evaluation(card_dir, json_safe({**record, "thresholds": thresholds}))
    except (OSError, FolderInUse) as exc:  # a read-only, shared or busy checkpoint: the evaluation is whole
        return (f"the model card of {card_dir} was not updated with this evaluation ({exc}); rerun "
                "detector eval when the checkpoint is writable and free, to record it there")
    return ""


def per_type_metrics(samples: Sequence[Sample], col: Collected) -> list[dict[str, Any]]:
    """Per defect type: its count, image AUROC against the good images, pixel AUROC and AUPRO over its
    images with the good ones (pixel figures from the per-type histograms)."""
    types = sorted({s.defect_type for s in samples if s.label})
    good = np.array([not s.label for s in samples])
    rows = []
    for t in types:
        sel = np.array([s.defect_type == t for s in samples])
        row: dict[str, Any] = {"defect_type": t, "count": int(sel.sum()),
                               **dict.fromkeys(PER_TYPE_METRICS, float("nan"))}
        if good.any():
            row["image_auroc"] = M.auroc(col.scores[sel | good], col.labels[sel | good])
        hists = [h for k, h in col.by_type.items() if k == t or k == "good"]
        merged = M.PixelHistogram.merged(hists) if hists else None
        if merged is not None and merged.defect.any() and merged.normal.any():
            px = merged.metrics(M.AUPRO_LIMIT)
            row.update(pixel_auroc=px["pixel_auroc"], aupro=px["aupro"])
        rows.append(row)
    return rows


def caption_regions(captions: str | None, class_name: str, samples: Sequence[Sample]
                    ) -> tuple[dict[int, list[dict[str, Any]]] | None, str]:
    """The test images' caption regions by sample index (None when there are none) and a line saying so."""

    if not captions:
        return None, "naming accuracy: no caption dataset for the test images (pass --captions)"
    try:
        by_id = load_image_regions(captions, class_name, "test")
    except DetectorError as exc:
        return None, f"naming accuracy: not computed ({exc})"
    changed = drop_changed(by_id, samples, str(captions))  # edited since the build: left out, with a warning
    if changed:
        print(f"warning: {changed}", file=sys.stderr, flush=True)
    changed = f"; {changed}" if changed else ""
    found = {i: by_id[s.id]["regions"] for i, s in enumerate(samples) if s.id in by_id}
    anomalous = [i for i, s in enumerate(samples) if s.label]
    if not any(i in found for i in anomalous):
        return None, (f"naming accuracy: {captions} holds no caption regions for these test images; build the "
                      f"captions over the test split (mfsc build) or pass --captions{changed}")
    missing = sum(i not in found for i in anomalous)
    extra = f"; {missing} anomalous images without caption regions left out" if missing else ""
    extra += changed
    return found, f"naming accuracy: true components from the caption regions of {captions}{extra}"


def _name_defects(model: Any, samples: Sequence[Sample], col: Collected, values: dict[str, float],
                  config: NamingConfig, captions: str | None, class_name: str) -> tuple[Any, dict[str, Any]]:
    """Named defects of every test image at the pixel F1-max threshold (without ground-truth pixels: the
    F1-max of the images' flag thresholds; without anomalous images, just above every image's regions, so the
    normal split still gets its report), scored against the caption regions."""
    assert col.namer is not None
    threshold = values.get("pixel_f1_threshold")
    source = "pixel F1-max of this evaluation"
    if (threshold is None or not math.isfinite(threshold)) and col.labels.any():
        flags = col.namer.flags(config.min_area)
        threshold = M.f1_max(np.where(np.isfinite(flags), flags, -1.0), col.labels)[1]
        source = "image F1-max of the flag thresholds (no ground-truth pixels)"
    elif threshold is None or not math.isfinite(threshold):
        flags = col.namer.flags(config.min_area)
        top = float(flags[np.isfinite(flags)].max()) if np.isfinite(flags).any() else col.map_range[1]
        threshold = top + 0.01 * ((col.map_range[1] - col.map_range[0]) or abs(top) or 1.0)
        source = "threshold just above every image's regions (no anomalous test image: no F1-max)"
    config = NamingConfig(float(threshold), config.min_area, config.min_margin)
    regions, note = caption_regions(captions, class_name, samples)
    meta = getattr(model, "meta", {}) or {}
    record = meta.get("record") or {}
    from_dataset = record.get("defect_vocab") == "dataset"
    result = col.namer.finish(config, object_name=str(meta.get("object_name") or class_name),
                              tau=float(model.tau), defect_types=[s.defect_type for s in samples],
                              caption_regions=regions, states_from_dataset=from_dataset)
    state_note = "" if from_dataset else (" State accuracy needs defect states from the data set "
                                         f"(defect_vocab is {record.get('defect_vocab') or 'unknown'}).")
    return result, {"threshold": config.threshold, "threshold_source": source, "min_area": config.min_area,
                    "min_margin": config.min_margin, "named_at": col.namer.size,
                    **result.summary, "note": note + "." + state_note}


def eval_report(samples: Sequence[Sample], col: Collected, values: dict[str, float], record: dict[str, Any],
                naming: Any, *, class_name: str, resolution: int, branch: str, notes: list[str],
                figures: list[Any], ckpt_dir: Path | None, budget_bytes: int) -> report.Report:
    """The evaluation page: metrics and per-type tables, curves and histograms, the threshold explorer."""
    table = report.Table(f"{class_name}: metrics (%) at {resolution} px, branch {branch}",
                         ["class", *(m.title for m in M.METRICS)],
                         [[class_name, *(values.get(m.key) for m in M.METRICS)]])
    per_type = report.Table("Per defect type (%; image AUROC of that type against the good images)",
                            ["defect type", "count", *(M.METRIC[k].title for k in PER_TYPE_METRICS)],
                            [[r["defect_type"], str(r["count"]), *(r[k] for k in PER_TYPE_METRICS)]
                             for r in record["per_type"]])
    plots = _report_plots(col, values, record, naming)
    sections, page_figures = [], figures
    if naming is not None and col.namer is not None:
        sections.append(_explorer(samples, col, values, record, naming, ckpt_dir, budget_bytes))
        page_figures = []  # the full-size panels stay in overlays/ (the page stays bounded)
        notes = [*notes, "Full-size panels (image | overlay | colour bar) are in the overlays/ folder."]
    return report.Report(f"FineGrainedAD evaluation: {class_name}", notes, [table, per_type], page_figures,
                         plots, sections)


def _report_plots(col: Collected, values: dict[str, float], record: dict[str, Any], naming: Any
                  ) -> list[report.Plot]:
    """The page's plots: ROC/PR curves, the score histograms with their thresholds, the overlays' colour scale."""
    curves: dict[str, Any] = {"image": M.binary_curve(col.scores, col.labels)}
    hist = M.PixelHistogram.merged(list(col.by_type.values())) if col.by_type else None
    if col.has_masks and hist is not None:
        curves["pixel"] = hist.curve()
    plots = [report.Plot("ROC and precision-recall curves", report.curves_plot(curves, values))]
    panels: list[dict[str, Any]] = [{"title": "image scores", "normal": col.scores[~col.labels],
                                     "anomalous": col.scores[col.labels],
                                     "threshold": values.get("image_f1_threshold"),
                                     "threshold_label": "image F1-max threshold"}]
    if naming is not None:
        panels.append({"title": "highest pixel threshold with a region, per image",
                       "normal": naming.flags[~col.labels], "anomalous": naming.flags[col.labels],
                       "threshold": record["naming"]["threshold"], "threshold_label": "reference pixel threshold"})
    if col.has_masks and hist is not None:
        panels.append(_pixel_panel(hist, values.get("pixel_f1_threshold")))
    plots.append(report.Plot("Score histograms of normal and anomalous images (and pixels) with the thresholds",
                             report.histograms_plot(panels)))
    plots.append(report.Plot("Colour scale of every overlay", report.colour_scale_plot(*col.map_range)))
    return plots


def _explorer(samples: Sequence[Sample], col: Collected, values: dict[str, float], record: dict[str, Any],
              naming: Any, ckpt_dir: Path | None, budget_bytes: int) -> Any:
    """The threshold explorer over every test image (anomalous first, by id): its row, thumbnail, quantised map
    and named defects."""

    assert col.namer is not None
    vmin, vmax = col.map_range
    maps = col.namer.maps()
    rows, thumbs = [], []
    for i in sorted(range(len(samples)), key=lambda i: (-int(samples[i].label), samples[i].id)):
        s = samples[i]
        rows.append({"id": s.id, "label": int(s.label), "defect_type": s.defect_type,
                     "score": float(col.scores[i]), "region": float(naming.flags[i])})
        img = cv2.resize(load_images([s])[0], (160, 160), interpolation=cv2.INTER_AREA)
        gt = col.namer.ground_truth(i)
        pic = report.overlay(img, maps[i], gt if gt.any() else None, vmin, vmax)
        caption = (f"{s.id} ({'anomalous, ' + s.defect_type if s.label else 'normal'}) "
                   f"score {float(col.scores[i]):.4f}")
        thumbs.append(report.Thumb(s.id, caption, pic, report.quantise_map(maps[i], vmin, vmax, 80),
                                   [d.sentence for d in naming.defects[i]]))
    image_t = values.get("image_f1_threshold")
    image_t = float(image_t) if image_t is not None and math.isfinite(image_t) else None
    return report.threshold_explorer(
        rows, image_t, float(record["naming"]["threshold"]), vmin, vmax, thumbs,
        command=explorer_command(record, ckpt_dir), budget_bytes=budget_bytes,
        note=f"Image threshold reference: the image F1-max of this evaluation; "
        f"pixel threshold reference: the {record['naming']['threshold_source']}.",
        no_image="F1-max needs anomalous images and this test split has none" if not record["n_anomalous"]
        else "F1-max found none")


def explorer_command(record: dict[str, Any], ckpt_dir: Path | None) -> str:
    """The ``detector predict`` command the report's explorer completes with its two thresholds: this checkpoint
    (its absolute folder, or the Hub id evaluated), a placeholder IMAGES, ``--out predictions``, the evaluation's
    resolution, branch and naming settings, so that it scores and names as this evaluation did."""

    ckpt = str(Path(ckpt_dir).resolve()) if ckpt_dir is not None else str(record.get("checkpoint") or "CKPT")
    naming = record["naming"]
    parts = ["detector predict --checkpoint", shlex.quote(ckpt), "IMAGES --out predictions --resolution",
             str(record["resolution"])]
    if record["branch"] != DEFAULT_BRANCH:
        parts += ["--branch", shlex.quote(record["branch"])]
    parts += ["--min-area", report.js_number(naming["min_area"])]
    if naming["min_margin"] != DEFAULT_MIN_MARGIN:
        parts += ["--min-margin", report.js_number(naming["min_margin"])]
    return " ".join(parts)


def _pixel_panel(hist: Any, threshold: float | None, bins: int = 60) -> dict[str, Any]:
    """The pixel score histogram (normal vs defect pixels) re-binned over the occupied levels."""
    used = np.flatnonzero(hist.normal + hist.defect)
    lo, hi = int(used[0]), int(used[-1]) + 1
    edges = np.linspace(lo, hi, bins + 1).round().astype(int)
    edges = np.unique(edges)
    normal = np.add.reduceat(hist.normal[lo:hi], edges[:-1] - lo)
    defect = np.add.reduceat(hist.defect[lo:hi], edges[:-1] - lo)
    return {"title": "pixel scores", "edges": edges / M.LEVELS, "normal_counts": normal,
            "anomalous_counts": defect, "threshold": threshold, "threshold_label": "pixel F1-max threshold"}


def pixel_method_note(record: dict[str, Any]) -> str:
    """One line for the report: how the pixel metrics were computed."""
    if record["method"] == "exact":
        return "pixel metrics: exact (every float32 map kept)"
    if record["method"] != "histogram":
        return f"pixel metrics: none ({record.get('why') or 'no anomalous pixel in the ground truth'})"
    clamped = f"; {record['clamped_pixels']} map values outside [0, 1] clamped" if record["clamped_pixels"] else ""
    return (f"pixel metrics: {record['levels']}-level histogram (pixel AUROC within "
            f"{record['auroc_bound']:.1e} of the float maps; --exact-metrics for exact){clamped}")


def run_eval(config: EvalConfig) -> EvalResult:
    """``detector eval``: load the checkpoint (a folder, or a Hub id ``ORG/NAME``: its snapshot), evaluate its
    class's test split, write everything."""

    ckpt = resolve_checkpoint(config.checkpoint)
    from_hub = not Path(config.checkpoint).expanduser().exists()  # a snapshot in the Hub cache is not ours
    meta = checkpoint_meta(ckpt)
    class_name = config.class_name or meta_class_name(meta, ckpt)
    samples = class_test_samples(config.data, class_name, config.layout)
    out = Path(config.out)
    with output_lock(out, "detector eval"):  # one run per --out, as every command that writes a folder
        return _run_eval(config, ckpt, from_hub, meta, class_name, samples, out)


def _run_eval(config: EvalConfig, ckpt: Path, from_hub: bool, meta: dict[str, Any], class_name: str,
              samples: list[Sample], out: Path) -> EvalResult:
    """``run_eval`` under the lock of ``out``."""
    # torch: only a checkpoint needs it, an export runs without
    from detector.store.saved_detector import load_detector

    check_replaceable(out, EVALUATION_OUTPUT)
    samples, skipped = readable(samples, config.on_error)
    if not samples:
        raise DetectorError(f"no test image of class {class_name!r} could be read (all {len(skipped)} skipped); "
                            f"first: {skipped[0]['error']}")
    model = load_detector(ckpt, device=config.device, precision=config.precision)
    info = checkpoint_info(meta)
    info.update(checkpoint=str(config.checkpoint if from_hub else ckpt), data=str(config.data), config={
        k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()})
    if skipped:
        info["skipped"] = skipped  # not in the metrics: listed so that nobody compares them as the full split
    # the whole evaluation, then swapped in: never one run's metrics beside another's CSVs
    with staged_folder(out) as tmp:
        res = evaluate_model(model, samples, tmp, EvalSettings(
            class_name=class_name, resolution=config.resolution, branch=config.branch, batch_size=config.batch_size,
            info=info, checkpoint_sha256=checkpoint_sha256(ckpt), card_dir=None if from_hub else ckpt,
            write_threshold=config.write_threshold, n_anomalous_figures=config.n_anomalous_figures,
            n_normal_figures=config.n_normal_figures, progress=config.progress, exact_metrics=config.exact_metrics,
            captions=config.captions or (meta.get("config") or {}).get("captions"), min_area=config.min_area,
            min_margin=config.min_margin, report_bytes=config.report_bytes))

    def moved(p: Path | None) -> Path | None:
        return None if p is None else out / Path(p).relative_to(tmp)

    return EvalResult(res.metrics, out, moved(res.metrics_path), moved(res.csv_path), moved(res.report_path),
                      [moved(p) for p in res.overlays], skipped, res.card_note)
