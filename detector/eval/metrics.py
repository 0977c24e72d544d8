"""Evaluation metrics for few-shot anomaly detection: image and pixel AUROC, AP, F1-max, AUPRO@0.3.

The sort-based metrics are exact (no histogram binning): scores are sorted once, equal scores are
grouped so a tie moves as one threshold step (like scikit-learn's ``_binary_clf_curve``), and the curves
are read off cumulative sums. The exact pixel metrics (``pixel_metrics``, ``PixelMaps``) sort the normal
pixels' scores and the defect pixels (score and region id packed in one key) in place, then sweep the
distinct scores a bounded block at a time, every metric AUPRO included read off the same curve: the
results of sorting every pixel at once, without its full-size temporaries. ``PixelHistogram`` reads the
same curves off per-level counts instead (below).

AUPRO follows the MVTec AD reference evaluation (Bergmann et al., ``pro_curve_util.compute_pro`` and
``generic_util.trapezoid``): per image the ground truth is split into connected components with an
all-ones 3x3 structuring element (8-connectivity; the reference passes ``np.ones((3, 3))`` to
``scipy.ndimage.label``), every region pixel adds ``1 / region size`` to the PRO sum and every normal
pixel adds 1 to the false-positive count, the (FPR, PRO) curve starts at (0, 0) and ends at (1, 1), and
the trapezoid integral up to FPR 0.3 (interpolating the curve at 0.3) is divided by 0.3.

Memory: ``pixel_metrics`` takes the maps as one (N, H, W) array (float32: 256 KiB per image at 256 px,
200 images 52 MB; 400 px 128 MB) and adds 4 bytes per normal pixel, 8 per defect pixel and a few MiB.
``detector eval`` therefore streams batches into a ``PixelHistogram`` (constant 1.5 MiB, exact for the maps
quantised to 2^16 levels, see its docstring) by default, and into ``PixelMaps`` with ``--exact-metrics``:
every pixel's float32 score kept (4 bytes per pixel, 8 per defect pixel), the metrics then adding 8 per
defect pixel and a few MiB. Measured (bench/bench_metrics.py, 192 maps of 400 px, 1.2 % defect pixels): a
peak of 4.3 bytes per pixel for either (the one-sort code before: 36 and 41).

``METRICS`` is the one table of the reported metrics (key, title, short name, direction) that evaluation,
the benchmark tables, the CLI and the reports read. A new metric touches this file only: a row in ``METRICS``
and its formula in ``CurveSums`` (every curve metric of image scores and pixels alike, AUPRO included, for
whole curves and the exact pixel sweep's blocks); everything that prints or tabulates metrics follows the
table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from detector.errors import DetectorError

AUPRO_LIMIT = 0.3


@dataclass(frozen=True)
class Metric:
    """One reported metric: its key (metrics.json, CSV columns), title (reports, tables), short name (the
    terminal table), direction, and whether it scores detection (the model card's table) or the naming of
    defects."""

    key: str
    title: str
    short: str
    higher_is_better: bool = True
    detection: bool = True


METRICS = (
    Metric("image_auroc", "image AUROC", "img AUROC"),
    Metric("pixel_auroc", "pixel AUROC", "px AUROC"),
    Metric("aupro", f"AUPRO@{AUPRO_LIMIT}", "AUPRO"),
    Metric("image_f1_max", "image F1-max", "img F1"),
    Metric("pixel_f1_max", "pixel F1-max", "px F1"),
    Metric("image_ap", "image AP", "img AP"),
    Metric("pixel_ap", "pixel AP", "px AP"),
    Metric("naming_accuracy", "naming accuracy", "naming", detection=False),  # eval.defects: component right
    Metric("state_accuracy", "state accuracy", "state", detection=False),  # state = defect folder (dataset states)
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


def _score_keys(scores: np.ndarray) -> np.ndarray:
    """uint32 keys of float32 scores in the same order; equal floats (-0.0 and 0.0 too) give equal keys."""
    bits = (scores + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0: one key for zero
    return np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))


def _key_scores(keys: np.ndarray) -> np.ndarray:
    """The float32 scores of uint32 ``_score_keys`` (zero comes back as +0.0)."""
    return np.where(keys >> np.uint32(31), keys & np.uint32(0x7FFFFFFF), ~keys).view(np.float32)


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
    keys = (_score_keys(scores).astype(np.uint64) << np.uint64(32)) | payload
    keys.sort()
    keys = keys[::-1]
    back = _key_scores((keys >> np.uint64(32)).astype(np.uint32))
    return back, (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)


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


class CurveSums:
    """The metrics of a curve, given whole (``curve_values``) or block by block, highest threshold first
    (the exact pixel sweep): every formula of the reported curve metrics lives here.

    AUROC: trapezoid area under the ROC curve from (0, 0) (exactly scikit-learn's roc_auc_score). AP:
    step-wise sum_n (R_n - R_{n-1}) P_n, not a trapezoid (scikit-learn's average_precision_score). F1-max
    and the threshold reaching it (predict anomalous when score >= it; the first maximum). AUPRO (with
    ``n_regions``, see ``add``): the PRO curve from (0, 0) to (1, 1), trapezoids up to FPR ``limit``,
    interpolated at ``limit``, divided by ``limit``. A block's terms start from the last point of the block
    before and are summed by numpy (pairwise); the block sums are added exactly (``math.fsum``), so one
    block gives the plain whole-curve values (see ``pixel_metrics`` for several)."""

    def __init__(self, pos: int, neg: int, n_regions: int | None = None, limit: float = AUPRO_LIMIT) -> None:
        self.pos, self.neg, self.n_regions, self.limit = pos, neg, n_regions, limit
        self.roc = (0.0, 0.0)  # the last (FPR, TPR)
        self.recall = 0.0
        self.pro = (0.0, 0.0)  # the last (FPR, PRO)
        self.roc_sums: list[float] = []
        self.ap_sums: list[float] = []
        self.pro_sums: list[float] = []
        self.pro_tail: float | None = None  # set once the PRO curve passes FPR = limit
        self.f1, self.threshold = -1.0, float("nan")

    def add(self, thresholds: np.ndarray, tps: np.ndarray, fps: np.ndarray,
            region_sums: np.ndarray | None = None) -> None:
        """The next points: per distinct threshold (descending) the positives and negatives at or above it
        and, for AUPRO, the sum of ``1 / region size`` over the defect pixels at or above it (PRO =
        region_sums / n_regions)."""
        pos, neg = self.pos, self.neg
        if pos and neg:
            tpr = np.concatenate(([self.roc[1]], tps / pos))
            fpr = np.concatenate(([self.roc[0]], fps / neg))
            self.roc_sums.append(float(np.trapezoid(tpr, fpr)))
            self.roc = (fpr[-1], tpr[-1])
        if pos:
            precision = tps / (tps + fps)
            recall = tps / pos
            self.ap_sums.append(float(np.sum(np.diff(np.concatenate(([self.recall], recall))) * precision)))
            self.recall = recall[-1]
            denom = precision + recall
            f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
            best = int(np.argmax(f1))
            if f1[best] > self.f1:  # the first maximum, as np.argmax over the whole curve
                self.f1, self.threshold = float(f1[best]), float(thresholds[best])
        if self.n_regions and neg and self.pro_tail is None and region_sums is not None:
            self._pro(np.minimum(fps / neg, 1.0), np.minimum(region_sums / self.n_regions, 1.0))

    def _pro(self, fpr: np.ndarray, pro: np.ndarray) -> None:
        """``integrate_to`` step by step: the trapezoids up to FPR = limit, then the interpolated piece."""
        x, y = np.concatenate(([self.pro[0]], fpr)), np.concatenate(([self.pro[1]], pro))
        inside = int(np.count_nonzero(x <= self.limit))  # a prefix: the FPR never decreases
        self.pro_sums.append(float(np.trapezoid(y[:inside], x[:inside])))
        if inside == x.size:
            self.pro = (x[-1], y[-1])
            return
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        self.pro_tail = 0.0
        if x0 < self.limit:
            y_at = y0 + (y1 - y0) * (self.limit - x0) / (x1 - x0)
            self.pro_tail = float(0.5 * (y0 + y_at) * (self.limit - x0))

    def values(self, level: str) -> dict[str, float]:
        """``{level}_auroc``, ``_ap``, ``_f1_max``, ``_f1_threshold`` (NaN where undefined), and ``aupro``
        when regions were given (NaN without a normal pixel)."""
        nan = float("nan")
        out = {f"{level}_auroc": math.fsum(self.roc_sums) if self.pos and self.neg else nan,
               f"{level}_ap": math.fsum(self.ap_sums) if self.pos else nan,
               f"{level}_f1_max": self.f1 if self.pos else nan,
               f"{level}_f1_threshold": self.threshold if self.pos else nan}
        if self.n_regions is None:
            return out
        out["aupro"] = nan
        if self.n_regions and self.neg:
            if self.pro_tail is None:
                self._pro(np.ones(1), np.ones(1))  # the curve's end point (1, 1)
            area = math.fsum(self.pro_sums)
            if self.pro_tail is not None:
                area += self.pro_tail
            out["aupro"] = float(area / self.limit)
        return out


def curve_values(c: Curve, level: str) -> dict[str, float]:
    """AUROC, AP, F1-max and its threshold of one curve as ``{level}_auroc`` ... (level: image or pixel):
    the one place these keys are built, for image scores and pixels alike."""
    sums = CurveSums(int(c.tps[-1]), int(c.fps[-1]))
    sums.add(c.thresholds, c.tps, c.fps)
    return sums.values(level)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    return curve_values(binary_curve(scores, labels), "x")["x_auroc"]


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Step-wise average precision (not a trapezoid); NaN without positives."""
    return curve_values(binary_curve(scores, labels), "x")["x_ap"]


def f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(F1-max, threshold) over all thresholds."""
    v = curve_values(binary_curve(scores, labels), "x")
    return v["x_f1_max"], v["x_f1_threshold"]


def components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth regions of one (H, W) mask: 8-connected components, as in the MVTec reference.

    Returns the label image (0 = normal pixel, regions 1..n) and the size of each label (index 0: the
    normal pixels)."""

    _, lab, stats, _ = cv2.connectedComponentsWithStats(np.asarray(mask, np.uint8), connectivity=8)
    return lab, stats[:, cv2.CC_STAT_AREA].astype(np.int64)


def _check_maps(maps: np.ndarray, masks: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    maps = np.asarray(maps)
    masks = np.asarray(masks, dtype=bool)
    if maps.shape != masks.shape or maps.ndim != 3:
        raise DetectorError(
            f"{what}: maps {maps.shape} and masks {masks.shape} must both be (N, H, W) at the evaluation "
            "resolution; resize the masks before evaluating"
        )
    return maps, masks


_BLOCK = 1 << 15  # the exact sweep takes the next _BLOCK normal and _BLOCK defect scores at a time


class _Positives:
    """The defect pixels sorted by (score, region id), ascending. float32: one uint64 key each (the score's
    order-preserving ``_score_keys`` above the region id), so a single in-place sort orders both; other
    dtypes: float64 scores and uint32 ids, ordered by ``np.lexsort``."""

    def __init__(self, keys: np.ndarray | None, scores: np.ndarray | None = None, ids: np.ndarray | None = None):
        self.keys, self._scores, self._ids = keys, scores, ids
        self.n = keys.size if keys is not None else scores.size

    def scores(self, lo: int, hi: int) -> np.ndarray:
        """The scores at sorted positions [lo, hi)."""
        if self.keys is None:
            return self._scores[lo:hi]
        return _key_scores((self.keys[lo:hi] >> np.uint64(32)).astype(np.uint32))

    def ids(self, lo: int, hi: int) -> np.ndarray:
        """The region ids at sorted positions [lo, hi)."""
        return self._ids[lo:hi] if self.keys is None else self.keys[lo:hi] & np.uint64(0xFFFFFFFF)

    def below(self, thresholds: np.ndarray, end: int) -> np.ndarray:
        """Per (ascending) threshold, how many of the first ``end`` positions score below it."""
        arr, needles = self._scores, thresholds
        if self.keys is not None:  # id 0 is no region: key << 32 is below every key of that score
            arr, needles = self.keys, _score_keys(thresholds).astype(np.uint64) << np.uint64(32)
        first = int(np.searchsorted(arr[:end], needles[0]))
        return first + np.searchsorted(arr[first:end], needles)


class _Store:
    """A 1-D array filled part by part: straight into one buffer while the parts fit its capacity (a total
    known in advance), the rest kept as parts and joined into one array when asked (so the join briefly
    holds those parts twice)."""

    def __init__(self, dtype: np.dtype, capacity: int = 0) -> None:
        self.dtype = dtype
        self.buf = np.empty(capacity, dtype)
        self.n = 0
        self.parts: list[np.ndarray] = []

    def append(self, part: np.ndarray) -> None:
        if not self.parts and self.n + part.size <= self.buf.size:
            self.buf[self.n : self.n + part.size] = part
            self.n += part.size
        else:
            self.parts.append(part if part.base is None else part.copy())  # never a view of the caller's maps

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes + sum(p.nbytes for p in self.parts)

    def array(self) -> np.ndarray:
        """Every value appended, in order, as one array (a view of the buffer)."""
        if self.parts:
            out = np.empty(self.n + sum(p.size for p in self.parts), self.dtype)
            out[: self.n] = self.buf[: self.n]
            self.buf, at = out, self.n
            while self.parts:  # each part let go once copied
                p = self.parts.pop(0)
                out[at : at + p.size] = p
                at += p.size
            self.n = at
        return self.buf[: self.n]


class _PixelScores:
    """Every pixel of (N, H, W) maps as the exact sweep needs it, the maps themselves not kept: the scores of
    the normal pixels, and of the defect pixels with their ground-truth region (``components`` of each
    image's mask; ids unique over all images as the images come, ``1 / size`` per id).

    float32 (float16 widens exactly): 4 bytes per normal pixel and 8 per defect pixel (``_Positives``); any
    other dtype is kept as float64 (8 and 12 bytes). The normal scores go into one buffer of ``n_neg``
    (at most: the pixels announced); the defect pixels into one of ``n_pos`` when known, else per image,
    joined once by ``sorted`` (16 bytes per defect pixel for that moment). ``sorted`` sorts them in place.
    """

    def __init__(self, dtype: type, n_neg: int, n_pos: int = 0) -> None:
        self.dtype = np.dtype(dtype)
        self.packed = self.dtype == np.float32
        self.neg = _Store(self.dtype, n_neg)
        self.pos = _Store(np.dtype(np.uint64) if self.packed else self.dtype, n_pos)  # packed keys, or scores
        self.pos_ids = _Store(np.dtype(np.uint32), 0 if self.packed else n_pos)  # unpacked: the region ids
        self.inv_sizes: list[np.ndarray] = [np.zeros(1)]  # index 0: normal pixels
        self.n_regions = 0

    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Keep the pixels of (B, H, W) maps against their masks (already checked by ``_check_maps``)."""
        for mp in maps:  # one image's temporaries at a time; nothing is kept before the batch is checked
            if not np.isfinite(np.asarray(mp, self.dtype)).all():
                raise DetectorError("pixel metrics: scores contain NaN or inf; check the model output")
        for mp, m in zip(maps, masks):
            mp = np.asarray(mp, self.dtype)
            if not m.any():
                self.neg.append(mp.ravel())
                continue
            lab, sizes = components(m)
            self.neg.append(mp[~m])
            ids = lab[m].astype(np.uint32) + np.uint32(self.n_regions)
            if self.packed:
                self.pos.append((_score_keys(mp[m]).astype(np.uint64) << np.uint64(32)) | ids)
            else:
                self.pos.append(mp[m])
                self.pos_ids.append(ids)
            self.inv_sizes.append(1.0 / sizes[1:].astype(np.float64))
            self.n_regions += sizes.size - 1

    @property
    def nbytes(self) -> int:
        return self.neg.nbytes + self.pos.nbytes + self.pos_ids.nbytes

    def sorted(self) -> tuple[np.ndarray, _Positives]:
        """The normal scores (ascending) and the defect pixels, each sorted in place."""
        neg = self.neg.array()
        neg.sort()
        if self.packed:
            keys = self.pos.array()
            keys.sort()
            return neg, _Positives(keys)
        scores, ids = self.pos.array(), self.pos_ids.array()
        order = np.lexsort((ids, scores))
        scores[:], ids[:] = scores[order], ids[order]
        return neg, _Positives(None, scores, ids)

    def metrics(self, limit: float) -> dict[str, float]:
        neg, pos = self.sorted()
        return _sweep(neg, pos, np.concatenate(self.inv_sizes), self.n_regions, limit)


def _sweep(neg: np.ndarray, pos: _Positives, inv_sizes: np.ndarray, n_regions: int,
           limit: float) -> dict[str, float]:
    """The pixel metrics of sorted scores, one block of distinct thresholds at a time (highest first).

    A block: the next ``_BLOCK`` normal and defect scores, cut at the higher of their lowest (a tie never
    splits); its thresholds are the distinct scores at or above the cut, and the counts at or above each
    are found by binary search in the sorted scores, so a long run of equal scores costs no memory. The
    weight sums of AUPRO (``1 / region size`` per defect pixel at or above) are running sums over the
    defect pixels in the order of the packed keys, descending, the order ``binary_curve`` summed them in.
    Temporaries: a few arrays of at most 2 * ``_BLOCK`` elements."""
    n0, n1 = neg.size, pos.n
    sums = CurveSums(n1, n0, n_regions, limit)
    r0, r1 = n0, n1  # not swept yet: neg[:r0] and the positives' sorted positions [0, r1)
    run = 0.0  # the weights of the defect pixels swept so far
    while r0 or r1:
        w0, w1 = neg[max(r0 - _BLOCK, 0) : r0], pos.scores(max(r1 - _BLOCK, 0), r1)
        cut = None
        if r0 > _BLOCK:
            cut = w0[0]
        if r1 > _BLOCK:
            cut = w1[0] if cut is None else max(cut, w1[0])
        if cut is not None:
            w0, w1 = w0[np.searchsorted(w0, cut) :], w1[np.searchsorted(w1, cut) :]
        t = np.concatenate((w0, w1))
        t.sort(kind="stable")  # two sorted runs: one merge
        t = t[np.append(t[1:] != t[:-1], True)] + t.dtype.type(0)  # distinct, ascending; -0.0 as 0.0
        first = int(np.searchsorted(neg[:r0], t[0]))
        below0 = first + np.searchsorted(neg[first:r0], t)
        below1 = pos.below(t, r1)
        need = r1 - below1  # per threshold: the block's defect pixels at or above it (descending)
        region_sums = np.empty(t.size)
        a, m = 0, int(need[0])
        while True:  # the running weight sum, _BLOCK defect pixels at a time (a long tie included)
            b = min(a + _BLOCK, m)
            cs = np.cumsum(np.concatenate(([run], inv_sizes[pos.ids(r1 - b, r1 - a)[::-1]])))
            sel = (need >= a) & (need <= b)
            region_sums[sel] = cs[need[sel] - a]
            run = float(cs[-1])
            if b == m:
                break
            a = b
        sums.add(t[::-1], (n1 - below1)[::-1], (n0 - below0)[::-1], region_sums[::-1])
        r0, r1 = int(below0[0]), int(below1[0])
    return sums.values("pixel")


def _exact(maps: np.ndarray, masks: np.ndarray, limit: float, what: str) -> dict[str, float]:
    maps, masks = _check_maps(maps, masks, what)
    if maps.size == 0:
        raise DetectorError(f"{what}: no scores to evaluate; the test split is empty")
    n_pos = int(np.count_nonzero(masks))
    scores = _PixelScores(np.float32 if maps.dtype in (np.float16, np.float32) else np.float64,
                          maps.size - n_pos, n_pos)
    scores.add(maps, masks)
    return scores.metrics(limit)


def aupro(maps: np.ndarray, masks: np.ndarray, limit: float = AUPRO_LIMIT) -> float:
    """AUPRO of (N, H, W) maps against (N, H, W) binary masks, normalised to [0, 1]."""
    return _exact(maps, masks, limit, "aupro")["aupro"]


def _pixel_values(c: Curve, region_sums: np.ndarray, n_regions: int, limit: float) -> dict[str, float]:
    """The pixel metrics of a whole curve and its per-threshold region weight sums (``CurveSums.add``)."""
    sums = CurveSums(int(c.tps[-1]), int(c.fps[-1]), n_regions, limit)
    sums.add(c.thresholds, c.tps, c.fps, region_sums)
    return sums.values("pixel")


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, limit: float = AUPRO_LIMIT) -> dict[str, float]:
    """Pixel AUROC, AP, F1-max (+ threshold) and AUPRO of (N, H, W) maps, exact (no binning).

    The maps are not copied whole: their pixels go into a ``_PixelScores`` (4 bytes per normal pixel, 8
    per defect pixel, float32 maps) sorted in place, then ``_sweep`` reads every metric off it with
    temporaries of a few MiB. The curve is the one ``binary_curve`` gives for the pixels (thresholds,
    counts, AUPRO weight sums, all bit for bit) and so are F1-max and its threshold. AUROC, AP and AUPRO
    add the same terms, grouped by block: a block's pairwise sum, block sums added exactly. Every term is
    >= 0 and each total <= 1, so either grouping is within about log2(terms) * 2^-53 < 5e-15 of the exact
    sum, and they agree to 1e-14; with at most ``_BLOCK`` distinct scores (one block) they are identical.
    """
    return _exact(maps, masks, limit, "pixel metrics")


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
    bound; they stay within 1e-3 in the tests and within 1.1e-4 on bench/bench_metrics.py (192 maps of
    400 px). Image metrics are not affected (one exact float per image).
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
    """The exact fallback (``--exact-metrics``): every pixel's float32 score kept, then the exact metrics of
    ``pixel_metrics``. Not the maps: per image as it comes, its normal pixels' scores and its defect
    pixels' scores packed with their region (``_PixelScores``). Held: 4 bytes per pixel announced (the
    buffer is reserved at the first batch, as the maps were) and 8 per defect pixel; the metrics add 8 per
    defect pixel (joining the per-image parts) and the sweep's few MiB. 4.3 bytes per pixel at the peak on
    ``bench/bench_metrics.py`` (192 maps of 400 px; the code before kept every map and mask: 41)."""

    def __init__(self, n_images: int) -> None:
        self.n_images = n_images
        self.filled = 0
        self.shape: tuple[int, ...] | None = None
        self.pixels: _PixelScores | None = None

    def add(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Keep the pixels of one batch of (B, H, W) maps against their masks."""
        maps, masks = _check_maps(maps, masks, "pixel metrics")
        if self.pixels is None:  # every pixel announced may be normal
            self.shape = maps.shape[1:]
            self.pixels = _PixelScores(np.float32, self.n_images * math.prod(self.shape))
        end = self.filled + len(maps)
        if end > self.n_images or maps.shape[1:] != self.shape:
            raise DetectorError(f"pixel metrics: batch {maps.shape} does not fit the {self.n_images} maps of "
                                f"{self.shape} announced")
        self.pixels.add(maps, masks)
        self.filled = end

    @property
    def nbytes(self) -> int:
        return 0 if self.pixels is None else self.pixels.nbytes

    def metrics(self, limit: float = AUPRO_LIMIT) -> dict[str, float]:
        if self.pixels is None or not self.filled:
            raise DetectorError("pixel metrics: no pixels were added; the test split is empty")
        return self.pixels.metrics(limit)

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
