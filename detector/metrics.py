"""Evaluation metrics for few-shot anomaly detection: image and pixel AUROC, AP, F1-max, AUPRO@0.3.

The sort-based metrics are exact (no histogram binning): scores are sorted once, equal scores are
grouped so a tie moves as one threshold step (like scikit-learn's ``_binary_clf_curve``), and the curves
are read off cumulative sums. The pixel metrics share that single sort of all pixel scores, including
AUPRO. ``PixelHistogram`` reads the same curves off per-level counts instead (below).

AUPRO follows the MVTec AD reference evaluation (Bergmann et al., ``pro_curve_util.compute_pro`` and
``generic_util.trapezoid``): per image the ground truth is split into connected components with an
all-ones 3x3 structuring element (8-connectivity; the reference passes ``np.ones((3, 3))`` to
``scipy.ndimage.label``), every region pixel adds ``1 / region size`` to the PRO sum and every normal
pixel adds 1 to the false-positive count, the (FPR, PRO) curve starts at (0, 0) and ends at (1, 1), and
the trapezoid integral up to FPR 0.3 (interpolating the curve at 0.3) is divided by 0.3.

Memory: ``pixel_metrics`` takes the maps as one (N, H, W) array (float32: 256 KiB per image at 256 px,
200 images 52 MB; 400 px 128 MB). ``detector eval`` therefore streams batches into a ``PixelHistogram``
(constant 1.5 MiB, exact for the maps quantised to 2^16 levels, see its docstring) by default, and into
``PixelMaps`` (every float32 map kept, then ``pixel_metrics``) with ``--exact-metrics``.

``METRICS`` is the one table of the reported metrics (key, title, short name, direction) that evaluation,
the benchmark tables, the CLI and the reports read. A new metric touches this file only: a row in ``METRICS``
and its value in ``curve_values`` (a curve metric of image scores and pixels alike) or ``_pixel_values``
(pixel only, like AUPRO); everything that prints or tabulates metrics follows the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.errors import DetectorError

AUPRO_LIMIT = 0.3


@dataclass(frozen=True)
class Metric:
    """One reported metric: its key (metrics.json, CSV columns), title (reports, tables), short name (the
    terminal table) and direction."""

    key: str
    title: str
    short: str
    higher_is_better: bool = True


METRICS = (
    Metric("image_auroc", "image AUROC", "img AUROC"),
    Metric("pixel_auroc", "pixel AUROC", "px AUROC"),
    Metric("aupro", f"AUPRO@{AUPRO_LIMIT}", "AUPRO"),
    Metric("image_f1_max", "image F1-max", "img F1"),
    Metric("pixel_f1_max", "pixel F1-max", "px F1"),
    Metric("image_ap", "image AP", "img AP"),
    Metric("pixel_ap", "pixel AP", "px AP"),
    Metric("naming_accuracy", "naming accuracy", "naming"),  # detector.defects: named component right
    Metric("state_accuracy", "state accuracy", "state"),  # named state = defect folder (dataset states only)
)
METRIC_KEYS = tuple(m.key for m in METRICS)
METRIC = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Curve:
    """Cumulative counts at each distinct score, highest score first (one point per threshold)."""

    thresholds: np.ndarray  # distinct scores, descending
    tps: np.ndarray  # positives with score >= threshold
    fps: np.ndarray  # negatives with score >= threshold
    payload: np.ndarray | None = None  # per element in sorted order: the payload given (AUPRO: region id)
    ends: np.ndarray | None = None  # index in sorted order of the last element of each tie group


def _check(scores: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise DetectorError(f"{what}: {scores.size} scores but {labels.size} labels; pass one label per score")
    if scores.size == 0:
        raise DetectorError(f"{what}: no scores to evaluate; the test split is empty")
    if scores.dtype == np.float16:
        scores = scores.astype(np.float32)  # exact: every float16 is a float32
    elif not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if not np.all(np.isfinite(scores)):
        raise DetectorError(f"{what}: scores contain NaN or inf; check the model output")
    return scores, labels


def sort_descending(scores: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores sorted high to low and the uint32 payload carried along (order inside ties unspecified).

    float32 scores take a fast path: the score's bits, mapped to an order-preserving unsigned integer,
    and the payload are packed into one uint64 key and sorted by value (several times faster than an
    argsort; exact, since equal floats give equal keys). Other dtypes use an argsort.
    """
    payload = np.asarray(payload, dtype=np.uint32)
    if scores.dtype != np.float32:
        order = np.argsort(scores, kind="quicksort")[::-1]
        return scores[order], payload[order]
    bits = (scores + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0: one key for zero
    key32 = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    keys = (key32.astype(np.uint64) << np.uint64(32)) | payload
    del key32
    keys.sort()
    keys = keys[::-1]
    hi = (keys >> np.uint64(32)).astype(np.uint32)
    back = np.where(hi >> np.uint32(31), hi & np.uint32(0x7FFFFFFF), ~hi)
    return back.view(np.float32), (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def binary_curve(scores: np.ndarray, labels: np.ndarray, payload: np.ndarray | None = None) -> Curve:
    """One descending sort, tie groups merged: the shared basis of ROC, PR, F1 and PRO curves.

    ``labels`` are 0/1; ``payload`` (optional, uint32 per element, 0 exactly where the label is 0) is
    carried through the sort instead of the labels, e.g. the ground-truth region id of each pixel.
    """
    scores, labels = _check(scores, labels, "binary_curve")
    carry = labels.astype(np.uint32) if payload is None else np.asarray(payload).ravel()
    sorted_scores, sorted_carry = sort_descending(scores, carry)
    # the last index of each run of equal scores is where a threshold step ends
    ends = np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]).astype(np.int64)
    ends = np.append(ends, sorted_scores.size - 1)
    tps = np.cumsum(sorted_carry > 0, dtype=np.int64)[ends]
    fps = ends + 1 - tps
    return Curve(sorted_scores[ends], tps, fps, sorted_carry if payload is not None else None,
                 ends if payload is not None else None)


def auroc_from_curve(c: Curve) -> float:
    """Trapezoid area under the ROC curve (exactly scikit-learn's roc_auc_score)."""
    pos, neg = int(c.tps[-1]), int(c.fps[-1])
    if pos == 0 or neg == 0:
        return float("nan")
    tpr = np.concatenate(([0.0], c.tps / pos))
    fpr = np.concatenate(([0.0], c.fps / neg))
    return float(np.trapezoid(tpr, fpr))


def ap_from_curve(c: Curve) -> float:
    """Step-wise average precision sum_n (R_n - R_{n-1}) P_n, as scikit-learn's average_precision_score."""
    pos = int(c.tps[-1])
    if pos == 0:
        return float("nan")
    precision = c.tps / (c.tps + c.fps)
    recall = c.tps / pos
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))


def f1max_from_curve(c: Curve) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it (predict anomalous when score >= it)."""
    pos = int(c.tps[-1])
    if pos == 0:
        return float("nan"), float("nan")
    precision = c.tps / (c.tps + c.fps)
    recall = c.tps / pos
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(c.thresholds[best])


def curve_values(c: Curve, level: str) -> dict[str, float]:
    """AUROC, AP, F1-max and its threshold of one curve as ``{level}_auroc`` ... (level: image or pixel):
    the one place these keys are built, for image scores and pixels alike."""
    f1, thr = f1max_from_curve(c)
    return {f"{level}_auroc": auroc_from_curve(c), f"{level}_ap": ap_from_curve(c), f"{level}_f1_max": f1,
            f"{level}_f1_threshold": thr}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    return auroc_from_curve(binary_curve(scores, labels))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Step-wise average precision (not a trapezoid); NaN without positives."""
    return ap_from_curve(binary_curve(scores, labels))


def f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(F1-max, threshold) over all thresholds."""
    return f1max_from_curve(binary_curve(scores, labels))


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth regions of one (H, W) mask: 8-connected components, as in the MVTec reference.

    Returns the label image (0 = normal pixel, regions 1..n) and the size of each label (index 0: the
    normal pixels)."""
    import cv2

    _, lab, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    return lab, stats[:, cv2.CC_STAT_AREA].astype(np.int64)


def region_ids(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the id of its ground-truth region (0 for normal pixels, ids unique over all images),
    and ``1 / size`` per id (index 0: 0). Regions are ``components`` of each image's mask."""
    masks = np.asarray(masks, dtype=bool)
    ids = np.zeros(masks.shape, dtype=np.uint32)
    inv_sizes = [np.zeros(1)]
    offset = 0
    for i, m in enumerate(masks):
        if not m.any():
            continue
        lab, sizes = components(m)
        ids[i] = np.where(lab > 0, lab + offset, 0)
        inv_sizes.append(1.0 / sizes[1:].astype(np.float64))
        offset += sizes.size - 1
    return ids, np.concatenate(inv_sizes)


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid integral of y(x) for x in [x0, x_max], the curve interpolated linearly at x_max."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    inside = x <= x_max
    area = float(np.trapezoid(y[inside], x[inside]))
    last = int(np.flatnonzero(inside)[-1])
    if x[last] < x_max and last + 1 < x.size:
        x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += float(0.5 * (y0 + y_at) * (x_max - x0))
    return area


def aupro_from_sums(fps: np.ndarray, region_sums: np.ndarray, n_regions: int,
                    limit: float = AUPRO_LIMIT) -> float:
    """Normalised area under the PRO curve up to FPR ``limit``.

    Per distinct threshold (highest first): ``fps`` normal pixels at or above it, ``region_sums`` the sum
    of ``1 / region size`` over the defect pixels at or above it (so PRO = region_sums / n_regions). The
    curve gets the end points (0, 0) and (1, 1)."""
    if n_regions == 0 or int(fps[-1]) == 0:
        return float("nan")
    fpr = np.concatenate(([0.0], np.minimum(fps / int(fps[-1]), 1.0), [1.0]))
    pro = np.concatenate(([0.0], np.minimum(region_sums / n_regions, 1.0), [1.0]))
    return float(integrate_to(fpr, pro, limit) / limit)


def aupro_from_curve(c: Curve, inv_sizes: np.ndarray, limit: float = AUPRO_LIMIT) -> float:
    """AUPRO from a pixel curve carrying region ids and ``1 / size`` per id (``region_ids``)."""
    if inv_sizes.size <= 1:
        return float("nan")
    return aupro_from_sums(c.fps, np.cumsum(inv_sizes[c.payload])[c.ends], inv_sizes.size - 1, limit)


def _check_maps(maps: np.ndarray, masks: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise DetectorError(
            f"{what}: maps {maps.shape} and masks {masks.shape} must both be (N, H, W) at the evaluation "
            "resolution; resize the masks before evaluating"
        )
    return maps, masks


def _pixel_curve(maps: np.ndarray, masks: np.ndarray, what: str) -> tuple[Curve, np.ndarray]:
    maps, masks = _check_maps(maps, masks, what)
    ids, inv_sizes = region_ids(masks)
    return binary_curve(maps, masks, payload=ids), inv_sizes


def aupro(maps: np.ndarray, masks: np.ndarray, limit: float = AUPRO_LIMIT) -> float:
    """AUPRO of (N, H, W) maps against (N, H, W) binary masks, normalised to [0, 1]."""
    c, inv_sizes = _pixel_curve(maps, masks, "aupro")
    return aupro_from_curve(c, inv_sizes, limit)


def _pixel_values(c: Curve, region_sums: np.ndarray, n_regions: int, limit: float) -> dict[str, float]:
    """The pixel metrics of a curve (and its per-threshold region weights, see ``aupro_from_sums``)."""
    return {**curve_values(c, "pixel"), "aupro": aupro_from_sums(c.fps, region_sums, n_regions, limit)}


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, limit: float = AUPRO_LIMIT) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max (+ threshold) and AUPRO from one sort of all pixel scores."""
    c, inv_sizes = _pixel_curve(maps, masks, "pixel metrics")
    return _pixel_values(c, np.cumsum(inv_sizes[c.payload])[c.ends], inv_sizes.size - 1, limit)


LEVELS = 1 << 16  # PixelHistogram: scores in [0, 1] quantised to uint16 levels


class PixelHistogram:
    """Pixel AUROC, AP, F1-max and AUPRO accumulated batch by batch in constant memory.

    Why: keeping every map costs 256 KiB per test image at 256 px; these counts cost 1.5 MiB in all.
    The detector's maps lie in [0, 1] (probabilities, (1 - cos) / 2, their harmonic mean, then bilinear
    and Gaussian filters, which are convex combinations). A score x goes to level floor(x * 2^16) (1.0 to
    the top level); values outside [0, 1] (float rounding) are clamped and counted in ``clamped``, NaN is
    an error. Per level: the count of normal pixels, of defect pixels, and the sum of ``1 / region size``
    over the defect pixels. A region (``components`` of one image's mask) is complete when its image
    arrives, so that weight is known at once: the PRO at a threshold is the weight at or above it divided
    by the number of regions, exactly as in the MVTec reference, without keeping any pixel.

    Exactness: the results equal ``pixel_metrics`` on the quantised maps (level / 2^16) up to float
    summation order (1e-12). A threshold is its level's lower edge, so ``map >= threshold`` on the float32
    maps selects exactly the pixels counted at or above it. Against the float maps, quantising only turns
    scores that share a level into ties: pixel AUROC moves by at most ``auroc_bound`` (half the fraction of
    (defect, normal) pairs sharing a level), recorded with the metrics. AP, F1-max and AUPRO have no such
    bound; they stay within 1e-3 in the tests and within 1e-4 on bench/bench_metrics.py's 200 maps. Image
    metrics are not affected (one exact float per image).
    """

    def __init__(self) -> None:
        self.normal = np.zeros(LEVELS, np.int64)
        self.defect = np.zeros(LEVELS, np.int64)
        self.region_weight = np.zeros(LEVELS, np.float64)
        self.n_regions = 0
        self.clamped = 0

    @staticmethod
    def quantise(maps: np.ndarray) -> np.ndarray:
        """uint16 levels floor(x * 2^16) of float scores clamped to [0, 1] (computed in float32, exact)."""
        scaled = np.clip(np.asarray(maps, np.float32), 0.0, 1.0) * np.float32(LEVELS)
        return np.minimum(scaled, LEVELS - 1).astype(np.uint16)

    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Count one batch of (B, H, W) maps against their (B, H, W) binary masks."""
        maps, masks = _check_maps(maps, masks, "pixel metrics")
        outside = maps.size - int(np.count_nonzero((maps >= 0) & (maps <= 1)))
        if outside and np.isnan(maps).any():
            raise DetectorError("pixel metrics: maps contain NaN; check the model output")
        self.clamped += outside
        levels = self.quantise(maps)
        counts = np.bincount((levels + masks * np.int32(LEVELS)).ravel(), minlength=2 * LEVELS)
        self.normal += counts[:LEVELS]
        self.defect += counts[LEVELS:]
        for lv, m in zip(levels, masks):
            if m.any():
                lab, sizes = components(m)
                self.n_regions += sizes.size - 1
                inv = 1.0 / sizes.astype(np.float64)
                self.region_weight += np.bincount(lv[m], weights=inv[lab[m]], minlength=LEVELS)

    @property
    def nbytes(self) -> int:
        """Bytes held, independent of the number of images and of defect pixels."""
        return self.normal.nbytes + self.defect.nbytes + self.region_weight.nbytes

    def curve(self) -> Curve:
        """The pixel curve read off the counts (non-empty levels are the thresholds, highest first)."""
        if not self.normal.any() and not self.defect.any():
            raise DetectorError("pixel metrics: no pixels were added; the test split is empty")
        keep = np.flatnonzero((self.normal + self.defect)[::-1])  # highest level first
        tps = np.cumsum(self.defect[::-1])[keep]
        fps = np.cumsum(self.normal[::-1])[keep]
        return Curve((LEVELS - 1 - keep) / LEVELS, tps, fps)

    def metrics(self, limit: float = AUPRO_LIMIT) -> dict[str, float]:
        """The keys of ``pixel_metrics``, from the counts (non-empty levels are the thresholds)."""
        c = self.curve()
        keep = np.flatnonzero((self.normal + self.defect)[::-1])
        return _pixel_values(c, np.cumsum(self.region_weight[::-1])[keep], self.n_regions, limit)

    @classmethod
    def merged(cls, parts: list[PixelHistogram]) -> PixelHistogram:
        """The counts of several histograms together (e.g. one defect type's images with the good ones)."""
        out = cls()
        for h in parts:
            out.normal += h.normal
            out.defect += h.defect
            out.region_weight += h.region_weight
            out.n_regions += h.n_regions
            out.clamped += h.clamped
        return out

    def record(self) -> dict[str, object]:
        """How the pixel metrics were computed, for metrics.json."""
        pos, neg = int(self.defect.sum()), int(self.normal.sum())
        shared = float(np.dot(self.normal.astype(np.float64), self.defect.astype(np.float64)))
        return {"method": "histogram", "levels": LEVELS, "clamped_pixels": self.clamped,
                "auroc_bound": 0.5 * shared / (pos * neg) if pos and neg else float("nan")}


class PixelMaps:
    """The exact fallback (``--exact-metrics``): every map kept as float32 (memory grows with the images:
    5 bytes per pixel with the mask), then ``pixel_metrics`` with one sort of all scores."""

    def __init__(self, n_images: int) -> None:
        self.n_images = n_images
        self.filled = 0
        self.maps: np.ndarray | None = None
        self.masks: np.ndarray | None = None

    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Store one batch of (B, H, W) maps and masks (allocated for every image at the first batch)."""
        maps, masks = _check_maps(maps, masks, "pixel metrics")
        if self.maps is None:
            self.maps = np.zeros((self.n_images, *maps.shape[1:]), np.float32)
            self.masks = np.zeros((self.n_images, *maps.shape[1:]), bool)
        end = self.filled + len(maps)
        if end > self.n_images or maps.shape[1:] != self.maps.shape[1:]:
            raise DetectorError(f"pixel metrics: batch {maps.shape} does not fit the {self.n_images} maps of "
                                f"{self.maps.shape[1:]} announced")
        self.maps[self.filled : end] = maps
        self.masks[self.filled : end] = masks
        self.filled = end

    @property
    def nbytes(self) -> int:
        return 0 if self.maps is None else self.maps.nbytes + self.masks.nbytes

    def metrics(self, limit: float = AUPRO_LIMIT) -> dict[str, float]:
        if self.maps is None:
            raise DetectorError("pixel metrics: no pixels were added; the test split is empty")
        return pixel_metrics(self.maps[: self.filled], self.masks[: self.filled], limit)

    def record(self) -> dict[str, object]:
        return {"method": "exact"}


def image_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Image AUROC, AP and F1-max (+ threshold) from one sort."""
    return curve_values(binary_curve(scores, labels), "image")


def evaluate(
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    maps: np.ndarray | None,
    masks: np.ndarray | None,
    aupro_limit: float = AUPRO_LIMIT,
) -> dict[str, float]:
    """Every image and pixel metric in one dict (values in [0, 1]; NaN where undefined).

    Keys: image_auroc, image_ap, image_f1_max, image_f1_threshold, pixel_auroc, pixel_ap,
    pixel_f1_max, pixel_f1_threshold, aupro. Pixel keys are absent when ``maps`` is None.
    """
    out = image_metrics(image_scores, image_labels)
    if maps is not None:
        if masks is None:
            raise DetectorError("evaluate: maps given without masks; pass the ground-truth masks")
        out.update(pixel_metrics(maps, masks, aupro_limit))
    return out
