"""Metrics against scikit-learn, hand-computed cases and a slow reimplementation of the MVTec AUPRO."""
from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score

from detector.errors import DetectorError
from detector.eval import metrics


def _random_case(seed: int, n: int = 300, ties: bool = True):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < rng.uniform(0.1, 0.6)
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if ties:
        scores = np.round(scores, 1)  # many equal scores, across both classes
    return scores.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [True, False])
def test_image_metrics_match_sklearn(seed, ties):
    scores, labels = _random_case(seed, ties=ties)
    got = metrics.image_metrics(scores, labels)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    p, r, _ = precision_recall_curve(labels, scores)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
    assert got["image_f1_max"] == pytest.approx(f1.max(), abs=1e-12)
    # the threshold reproduces the F1-max with "score >= threshold"
    pred = scores >= got["image_f1_threshold"]
    assert f1_score(labels, pred) == pytest.approx(got["image_f1_max"], abs=1e-12)


def test_hand_computed_small_case():
    # scores 0.8(+) 0.6(-) 0.6(+) 0.2(-): the tie at 0.6 is one step
    scores = np.array([0.8, 0.6, 0.6, 0.2])
    labels = np.array([1, 0, 1, 0])
    # ROC points (0,0) (0,.5) (.5,1) (1,1): the tie is a diagonal, area .5 * (.5 + 1) / 2 + .5
    assert metrics.auroc(scores, labels) == pytest.approx(0.875)
    # AP: recall .5 at precision 1, recall 1 at precision 2/3 -> .5 + .5 * 2/3
    assert metrics.average_precision(scores, labels) == pytest.approx(0.5 + 1 / 3)
    f1, thr = metrics.f1_max(scores, labels)
    assert (f1, thr) == (pytest.approx(0.8), 0.6)  # P=2/3, R=1


def test_constant_detector_ap_is_positive_rate():
    rng = np.random.default_rng(3)
    labels = rng.random(1000) < 0.23
    scores = np.full(1000, 0.7)
    assert metrics.average_precision(scores, labels) == pytest.approx(labels.mean())
    assert metrics.auroc(scores, labels) == pytest.approx(0.5)
    maps = np.full((3, 8, 8), 0.5, np.float32)
    masks = np.zeros((3, 8, 8), bool)
    masks[0, 2:5, 2:5] = True
    got = metrics.pixel_metrics(maps, masks)
    assert got["pixel_ap"] == pytest.approx(masks.mean())
    assert got["pixel_auroc"] == pytest.approx(0.5)


def test_undefined_metrics_are_nan_and_bad_input_raises():
    assert np.isnan(metrics.auroc(np.arange(4.0), np.zeros(4)))
    assert np.isnan(metrics.average_precision(np.arange(4.0), np.zeros(4)))
    with pytest.raises(DetectorError):
        metrics.auroc(np.array([0.1, np.nan]), np.array([0, 1]))
    with pytest.raises(DetectorError):
        metrics.auroc(np.arange(3.0), np.arange(4))
    with pytest.raises(DetectorError):
        metrics.pixel_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), bool))


# ---- AUPRO --------------------------------------------------------------------------------------


def _reference_trapezoid(x, y, x_max):
    """Independent restatement of the reference integration: cut at x_max, interpolate the last piece."""
    x, y = list(x), list(y)
    correction = 0.0
    if x_max not in x:
        ins = bisect(x, x_max)
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (x_max - x[ins - 1])
    keep = [i for i in range(len(x)) if x[i] <= x_max]
    xs, ys = [x[i] for i in keep], [y[i] for i in keep]
    return sum(0.5 * (ys[i] + ys[i + 1]) * (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)) + correction


def _slow_aupro(maps, masks, limit=0.3):
    """Threshold sweep over every distinct score: binarise, measure FPR and mean region overlap."""
    regions = []
    for m in masks:
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        regions.append([lab == k for k in range(1, n + 1)])
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        overlaps = [(pred[i] & r).sum() / r.sum() for i in range(len(maps)) for r in regions[i]]
        pros.append(float(np.mean(overlaps)))
    fprs.append(1.0)
    pros.append(1.0)
    return _reference_trapezoid(fprs, pros, limit) / limit


def test_aupro_hand_computed_with_interpolation_and_ties():
    # image A: region of 2 pixels (0.9, 0.5); image B: region of 1 pixel (0.2); 5 normal pixels.
    maps = np.array([[[0.9, 0.5, 0.5, 0.1]], [[0.6, 0.4, 0.5, 0.2]]])
    masks = np.array([[[1, 1, 0, 0]], [[0, 0, 0, 1]]], bool)
    # curve (0,0) (0,.25) (.2,.25) (.6,.5) ...: .25*.2 + .5*(.25 + .3125)*.1, divided by .3
    expected = (0.05 + 0.028125) / 0.3
    assert metrics.aupro(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert _slow_aupro(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_aupro_uses_8_connectivity_like_the_reference():
    # a diagonal neighbour joins the region: one region of 3 pixels (two with 4-connectivity)
    maps = np.full((1, 3, 3), 0.1)
    masks = np.zeros((1, 3, 3), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 1, 1], maps[0, 1, 2] = 0.9, 0.85, 0.5, 0.4
    # curve (0,0) (0,1/3) (1/6,1/3) (1/6,2/3) (1/6,1) (1,1): 1/18 + (0.3 - 1/6), over 0.3
    assert metrics.aupro(maps, masks) == pytest.approx(17 / 27, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_aupro_and_pixel_metrics_match_references(seed):
    rng = np.random.default_rng(seed)
    n, h, w = 5, 12, 14
    masks = np.zeros((n, h, w), bool)
    for i in range(n - 1):  # the last image stays normal
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
            masks[i, y : y + rng.integers(1, 4), x : x + rng.integers(1, 4)] = True
    maps = rng.random((n, h, w)) + masks * rng.uniform(0, 1)
    maps = np.round(maps, 1).astype(np.float32)  # heavy ties
    got = metrics.pixel_metrics(maps, masks)
    assert got["aupro"] == pytest.approx(_slow_aupro(maps, masks), abs=1e-9)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    p, r, _ = precision_recall_curve(masks.ravel(), maps.ravel())
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0)
    assert got["pixel_f1_max"] == pytest.approx(f1.max(), abs=1e-12)
    assert got["aupro"] == pytest.approx(metrics.aupro(maps, masks), abs=1e-15)


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1:3, 1:4] = True
    perfect = masks.astype(np.float32)
    assert metrics.aupro(perfect, masks) == pytest.approx(1.0)
    assert metrics.aupro(1 - perfect, masks) == pytest.approx(0.0)


def test_evaluate_returns_every_metric():
    scores, labels = _random_case(0, n=20)
    maps = np.random.default_rng(0).random((20, 8, 8)).astype(np.float32)
    masks = np.zeros((20, 8, 8), bool)
    masks[labels, 2:4, 2:4] = True
    out = metrics.evaluate(scores, labels, maps, masks)
    assert set(out) == {"image_auroc", "image_ap", "image_f1_max", "image_f1_threshold", "pixel_auroc",
                        "pixel_ap", "pixel_f1_max", "pixel_f1_threshold", "aupro"}
    assert all(np.isfinite(v) for v in out.values())
    assert set(metrics.evaluate(scores, labels, None, None)) == {
        "image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"}
    # the one table names exactly the reported keys (thresholds are not metrics), each once, AUPRO with its limit
    # plus the two naming figures, which detector.eval.defects computes (not metrics.evaluate)
    assert set(metrics.METRIC_KEYS) == set(out) - {"image_f1_threshold", "pixel_f1_threshold"} | {
        "naming_accuracy", "state_accuracy"}
    assert len(set(metrics.METRIC_KEYS)) == len(metrics.METRICS) == len({m.title for m in metrics.METRICS})
    assert metrics.METRIC["aupro"].title == f"AUPRO@{metrics.AUPRO_LIMIT}"


def test_packed_float32_sort_matches_argsort_with_negatives_zeros_and_ties():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=5000), 2).astype(np.float32)
    scores[:10] = -0.0
    scores[10:20] = 0.0
    scores[20:25] = np.float32(-3.4e38)
    scores[25:30] = np.float32(3.4e38)
    payload = rng.integers(0, 1000, 5000).astype(np.uint32)
    got_s, got_p = metrics.sort_descending(scores, payload)
    ref_s, ref_p = metrics.sort_descending(scores.astype(np.float64), payload)  # argsort path
    np.testing.assert_array_equal(got_s, ref_s.astype(np.float32))
    assert not np.any(np.diff(got_s) > 0)
    # payloads agree as multisets within each run of equal scores
    assert sorted(zip(got_s.tolist(), got_p.tolist())) == sorted(zip(ref_s.tolist(), ref_p.tolist()))
    labels = payload[30:] > 500
    for dtype in (np.float16, np.float32, np.float64):
        s = scores[30:].astype(dtype)
        assert metrics.auroc(s, labels) == pytest.approx(roc_auc_score(labels, s.astype(np.float64)), abs=1e-12)
        assert metrics.average_precision(s, labels) == pytest.approx(
            average_precision_score(labels, s.astype(np.float64)), abs=1e-12)


# ---- streaming pixel metrics (PixelHistogram) -------------------------------------------------------


def _smooth_case(seed: int, n: int = 10, size: int = 48):
    """Detector-like maps in [0, 1]: blurred noise, raised on blob defects (several regions, some normal images)."""
    import cv2

    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(n // 2):
        for _ in range(rng.integers(1, 4)):
            c = tuple(int(v) for v in rng.integers(4, size - 4, 2))
            cv2.circle(masks[i].view(np.uint8), c, int(rng.integers(1, 6)), 1, -1)
    maps = rng.random((n, size, size), dtype=np.float32)
    for i in range(n):
        maps[i] = cv2.GaussianBlur(maps[i], (0, 0), 2)
    maps = np.clip(maps + masks * np.float32(rng.uniform(0.02, 0.2)), 0, 1)
    return maps, masks


def _held_bytes(acc) -> int:
    """Bytes of every array the accumulator holds (lists of arrays included), whatever it reports."""
    total = 0
    for v in vars(acc).values():
        for a in v if isinstance(v, list | tuple) else [v]:
            total += a.nbytes if isinstance(a, np.ndarray) else 0
    return total


def _accumulate(maps, masks, splits):
    acc = metrics.PixelHistogram()
    for a, b in zip([0, *splits], [*splits, len(maps)]):
        acc.add(maps[a:b], masks[a:b])
    return acc


@pytest.mark.parametrize("seed", range(4))
def test_histogram_equals_exact_metrics_on_the_quantised_maps(seed):
    maps, masks = _smooth_case(seed, n=6, size=24)
    got = _accumulate(maps, masks, [3, 4]).metrics()
    quantised = metrics.PixelHistogram.quantise(maps).astype(np.float32) / np.float32(metrics.LEVELS)
    ref = metrics.pixel_metrics(quantised, masks)
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k
    assert got["aupro"] == pytest.approx(_slow_aupro(quantised, masks), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_histogram_is_close_to_the_float_maps(seed):
    # documented tolerance: pixel AUROC within the recorded bound; AP, F1-max, AUPRO within 1e-3
    maps, masks = _smooth_case(seed)
    acc = _accumulate(maps, masks, [5])
    got, exact, rec = acc.metrics(), metrics.pixel_metrics(maps, masks), acc.record()
    assert rec["method"] == "histogram" and rec["levels"] == 65536 and rec["clamped_pixels"] == 0
    assert 0 <= rec["auroc_bound"] < 1e-3
    assert abs(got["pixel_auroc"] - exact["pixel_auroc"]) <= rec["auroc_bound"] + 1e-15
    for k in ("pixel_ap", "pixel_f1_max", "aupro"):
        assert got[k] == pytest.approx(exact[k], abs=1e-3), k
    # the threshold is a level's lower edge: on the float maps it selects exactly the pixels counted
    pred = maps >= got["pixel_f1_threshold"]
    p, r = (pred & masks).sum() / pred.sum(), (pred & masks).sum() / masks.sum()
    assert 2 * p * r / (p + r) == pytest.approx(got["pixel_f1_max"], abs=1e-12)


def test_histogram_batches_in_any_split_give_identical_results():
    maps, masks = _smooth_case(5, n=9)
    whole = _accumulate(maps, masks, []).metrics()
    for splits in ([1, 2, 3, 4, 5, 6, 7, 8], [4], [2, 7], [8]):
        assert _accumulate(maps, masks, splits).metrics() == whole  # bit-identical
    order = np.random.default_rng(0).permutation(len(maps))
    shuffled = _accumulate(maps[order], masks[order], [3]).metrics()
    for k in whole:
        assert shuffled[k] == pytest.approx(whole[k], abs=1e-12)


def test_histogram_memory_does_not_grow_with_images():
    maps, masks = _smooth_case(1, n=8)
    acc = metrics.PixelHistogram()
    acc.add(maps[:1], masks[:1])
    start = _held_bytes(acc)
    assert start == acc.nbytes
    for _ in range(20):  # normal images
        acc.add(maps[6:], masks[6:])
    assert _held_bytes(acc) == start
    for _ in range(5):  # defect images: the region weights are per level, not per pixel
        acc.add(maps[:4], masks[:4])
    assert _held_bytes(acc) == start == acc.nbytes
    exact = metrics.PixelMaps(40)
    exact.add(maps, masks)
    # the fallback: 4 bytes per pixel announced (a normal pixel's score), 8 per defect pixel (score + region)
    assert exact.nbytes == 40 * maps[0].size * 4 + int(masks.sum()) * 8


def test_histogram_clamps_counts_and_rejects_nan():
    maps = np.array([[[-0.25, 0.0, 0.5, 1.0, 1.5, 0.75]]], np.float32)
    masks = np.array([[[0, 0, 1, 1, 1, 0]]], bool)
    acc = metrics.PixelHistogram()
    acc.add(maps, masks)
    assert acc.record()["clamped_pixels"] == 2
    np.testing.assert_array_equal(metrics.PixelHistogram.quantise(maps), [[[0, 0, 32768, 65535, 65535, 49152]]])
    assert acc.metrics()["pixel_auroc"] == pytest.approx(
        roc_auc_score(masks.ravel(), np.clip(maps, 0, 1).ravel()), abs=1e-12)
    with pytest.raises(DetectorError, match="NaN"):
        acc.add(np.full((1, 2, 2), np.nan, np.float32), np.zeros((1, 2, 2), bool))
    with pytest.raises(DetectorError, match="no pixels"):
        metrics.PixelHistogram().metrics()
    with pytest.raises(DetectorError, match="resize the masks"):
        acc.add(np.zeros((1, 4, 4)), np.zeros((1, 4, 5), bool))


def test_exact_fallback_equals_pixel_metrics():
    maps, masks = _smooth_case(2, n=7)
    exact = metrics.PixelMaps(7)
    exact.add(maps[:3], masks[:3])
    exact.add(maps[3:], masks[3:])
    assert exact.metrics() == metrics.pixel_metrics(maps, masks)
    assert exact.record() == {"method": "exact"}
    with pytest.raises(DetectorError, match="does not fit"):
        exact.add(maps[:1], masks[:1])


# ---- the exact pixel sweep (issue 22): the previous code's results in bounded memory -------------------------


def _previous_pixel_metrics(maps, masks, limit=0.3):
    """The previous exact pixel metrics, restated from detector/eval/metrics.py before issue 22: every pixel
    sorted at once carrying its region id (``binary_curve``), the metrics read off the whole curve."""
    masks = np.asarray(masks, bool)
    ids, inv, offset = np.zeros(masks.shape, np.uint32), [np.zeros(1)], 0
    for i, m in enumerate(masks):  # region_ids
        if m.any():
            lab, sizes = metrics.components(m)
            ids[i] = np.where(lab > 0, lab + offset, 0)
            inv.append(1.0 / sizes[1:].astype(np.float64))
            offset += sizes.size - 1
    inv = np.concatenate(inv)
    c = metrics.binary_curve(maps, masks, payload=ids)
    nan = float("nan")
    pos, neg = int(c.tps[-1]), int(c.fps[-1])
    out = {"pixel_auroc": nan, "pixel_ap": nan, "pixel_f1_max": nan, "pixel_f1_threshold": nan, "aupro": nan}
    if pos and neg:  # auroc_from_curve
        out["pixel_auroc"] = float(np.trapezoid(np.concatenate(([0.0], c.tps / pos)),
                                                np.concatenate(([0.0], c.fps / neg))))
    if pos:  # ap_from_curve, f1max_from_curve
        precision, recall = c.tps / (c.tps + c.fps), c.tps / pos
        out["pixel_ap"] = float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        best = int(np.argmax(f1))
        out["pixel_f1_max"], out["pixel_f1_threshold"] = float(f1[best]), float(c.thresholds[best])
    if inv.size > 1 and neg:  # aupro_from_sums, integrate_to
        x = np.concatenate(([0.0], np.minimum(c.fps / neg, 1.0), [1.0]))
        y = np.concatenate(([0.0], np.minimum(np.cumsum(inv[c.payload])[c.ends] / (inv.size - 1), 1.0), [1.0]))
        inside = x <= limit
        area = float(np.trapezoid(y[inside], x[inside]))
        last = int(np.flatnonzero(inside)[-1])
        if x[last] < limit and last + 1 < x.size:
            x0, x1, y0, y1 = x[last], x[last + 1], y[last], y[last + 1]
            area += float(0.5 * (y0 + (y0 + (y1 - y0) * (limit - x0) / (x1 - x0))) * (limit - x0))
        out["aupro"] = float(area / limit)
    return out


def _sweep_cases():
    """Detector-like maps, heavy ties across both classes, one long tie, signed zeros, odd edge cases."""
    maps, masks = _smooth_case(11, n=6, size=28)
    yield "smooth", maps, masks
    yield "ties", np.round(maps * 20).astype(np.float32) / 20, masks
    tie = maps.copy()
    tie[:, 4:22] = 0.5  # a run of equal scores, defect pixels among them, far longer than a block
    yield "long tie", tie, masks
    zeros = maps - np.float32(0.5)
    zeros[:, :6] = -0.0
    zeros[:, 6:12] = 0.0
    yield "signed zeros", zeros, masks
    yield "constant", np.full(maps.shape, 0.25, np.float32), masks
    yield "oracle", masks.astype(np.float32), masks
    yield "no defect", maps, np.zeros_like(masks)
    yield "all defect", maps[:2], np.ones_like(masks[:2])
    yield "float64", np.exp(maps.astype(np.float64)), masks


def _same(a, b):
    return a == b or (np.isnan(a) and np.isnan(b))


@pytest.mark.parametrize("block", [None, 16, 200])
def test_exact_sweep_gives_the_previous_results(monkeypatch, block):
    # one block (the default here): bit for bit. Several: the same curve and terms grouped by block, so
    # F1-max and its threshold stay bit for bit and the sums agree to float rounding (1e-14)
    if block:
        monkeypatch.setattr(metrics, "_BLOCK", block)
    for name, maps, masks in _sweep_cases():
        got, ref = metrics.pixel_metrics(maps, masks), _previous_pixel_metrics(maps, masks)
        assert list(got) == list(ref), name
        for k in ("pixel_f1_max", "pixel_f1_threshold"):
            assert _same(got[k], ref[k]), (name, k, got[k], ref[k])
        for k in ("pixel_auroc", "pixel_ap", "aupro"):
            assert _same(got[k], ref[k]) or abs(got[k] - ref[k]) <= 1e-14, (name, k, got[k], ref[k])
            if block is None and name != "float64":  # float64 ties: the old argsort's order was unspecified
                assert _same(got[k], ref[k]), (name, k, got[k], ref[k])
        if block is None and name in ("smooth", "ties", "long tie"):
            assert got["aupro"] == pytest.approx(_slow_aupro(maps, masks), abs=1e-12)
            assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
            assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
        acc = metrics.PixelMaps(len(maps))  # the streaming fallback, in uneven batches: the same numbers
        for a, b in ((0, 1), (1, 4), (4, len(maps))):
            acc.add(maps[a:b], masks[a:b])
        if maps.dtype == np.float32:
            assert all(_same(acc.metrics()[k], got[k]) for k in got), name


def test_exact_sweep_threshold_zero_is_positive_zero():
    # -0.0 and 0.0 are one threshold, reported as 0.0 (as the packed sort did), never as -0.0
    maps = np.array([[[-0.0, 0.0, -0.0, -1.0, -1.0, -2.0]]], np.float32)
    masks = np.array([[[1, 1, 1, 0, 0, 0]]], bool)
    for block in (2, 1 << 15):
        metrics._BLOCK, saved = block, metrics._BLOCK
        try:
            got = metrics.pixel_metrics(maps, masks)
        finally:
            metrics._BLOCK = saved
        assert got["pixel_f1_max"] == 1.0 and got["pixel_f1_threshold"] == 0.0
        assert np.copysign(1.0, got["pixel_f1_threshold"]) == 1.0


@pytest.mark.parametrize("seed", range(3))
def test_exact_sweep_matches_sklearn_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(6, 30, 30)).astype(np.float32)
    masks = rng.random((6, 30, 30)) < rng.uniform(0.05, 0.5)
    maps += masks * np.float32(rng.uniform(0, 1.5))
    for block in (7, 1 << 15):
        metrics._BLOCK, saved = block, metrics._BLOCK
        try:
            got = metrics.pixel_metrics(maps, masks)
        finally:
            metrics._BLOCK = saved
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
        assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


def _traced_peak(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_exact_pixel_metrics_memory_is_bounded():
    # the previous code sorted every pixel at once with full-size temporaries: 46 (pixel_metrics) and
    # 51 (PixelMaps, which kept every map and mask) bytes per pixel here. Now the normal pixels' scores
    # (4 B), the defect pixels packed with their region (8 B) and the sweep's few MiB: 6.7 B/px at this size
    maps, masks = _smooth_case(3, n=48, size=256)  # 3.1 M pixels
    n = maps.size

    def streamed():
        acc = metrics.PixelMaps(len(maps))
        for start in range(0, len(maps), 8):
            acc.add(maps[start : start + 8], masks[start : start + 8])
        return acc.metrics()

    assert _traced_peak(lambda: metrics.pixel_metrics(maps, masks)) < 8 * n
    assert _traced_peak(streamed) < 8 * n
