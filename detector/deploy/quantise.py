"""INT8 for a CPU box: the OpenVINO export quantised after training with NNCF, and the drift check it must pass.

Why a check: a few-shot detector has no validation set, and post-training quantisation moves every activation
onto an 8-bit grid; how far the maps move depends on the class. So the int8 graph is compared with the fp32
graph it came from, on images of the class that calibration did not see, and the export is refused when it
moved more than ``DriftLimits`` allow (the figures are written into ``export.json`` either way).

Calibration (NNCF's post-training quantisation, ``model_type=TRANSFORMER``: the ViT's softmax and layer norms
stay in floating point) reads the class's normal training images from ``--data``. Three quarters calibrate,
the rest check the drift (at least one of each). NNCF estimates each activation's range from what it sees; a
few-shot class may have only a handful of images, so they are repeated under flips and quarter turns
(``augmented``) up to ``CALIBRATION_IMAGES``: these keep the class's colours and textures, the statistics that
set the ranges, while moving where parts appear, as the test images' defects and poses will. With test images
in ``--data`` the check also scores them with both graphs: the change of image AUROC, pixel AUROC and AUPRO.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from detector.errors import DetectorError
from detector.eval import metrics as M
from detector.run.evaluate import eval_mask
from detector.run.runtime import INPUT_NAME, OUTPUT_NAMES, graph_input
from detector.store.data import class_samples, image_level_only, load_images, test_split

CALIBRATION_IMAGES = 32  # NNCF's statistics saturate well before its default 300 on one class's images
CHECK_SHARE = 0.25  # of the normal training images, kept out of calibration to measure the drift on
NNCF_MISSING = ("INT8 export needs NNCF: pip install nncf (or the project's extra: "
                "pip install 'finegrained-ad[int8]')")


@dataclass(frozen=True)
class DriftLimits:
    """How far the int8 graph may move from the fp32 one before the export is refused (defaults: measured,
    docs/ARCHITECTURE.md and bench/bench_int8.py; ``--max-drift KEY=VALUE`` overrides one)."""

    map_mean: float = 0.02  # mean |int8 - fp32| over every pixel of the held-out normal images' maps ([0, 1])
    score_spearman: float = 0.9  # at least this rank correlation of the held-out images' scores (1 = same order)
    auroc_points: float = 1.0  # at most this drop of image or pixel AUROC, in points (test images of --data)

    @classmethod
    def parse(cls, items: list[str] | None) -> DriftLimits:
        """``["map_mean=0.05", ...]`` over the defaults; a key or value it does not know is one clear line."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for item in items or []:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or key not in known:
                raise DetectorError(f"--max-drift {item!r}: use KEY=VALUE with KEY one of {', '.join(sorted(known))}")
            try:
                values[key] = float(text)
            except ValueError:
                raise DetectorError(f"--max-drift {item!r}: {text!r} is not a number") from None
            low = -1.0 if key == "score_spearman" else 0.0  # a rank correlation runs from -1 to 1
            if not math.isfinite(values[key]) or values[key] < low:
                raise DetectorError(f"--max-drift {item!r}: give a finite number, {low:g} or more")
        return cls(**values)


@dataclass(frozen=True)
class Calibration:
    """Where the class's images come from (``--data``, its layout and class) and how far int8 may drift."""

    data: str
    class_name: str
    layout: str = "auto"
    limits: DriftLimits = DriftLimits()


@dataclass
class ClassImages:
    """The class's images at the graph's input size: calibration, held-out normals, and test images if any."""

    calibration: np.ndarray  # (N, S, S, 3) uint8, augmented up to CALIBRATION_IMAGES
    check: np.ndarray  # (M, S, S, 3) uint8, normal training images calibration never saw
    test: np.ndarray | None  # (T, S, S, 3) uint8
    test_samples: list[Any]
    image_level: bool = False  # the test split has no masks: image metrics only (as `detector eval`)

    @property
    def test_labels(self) -> np.ndarray | None:
        """(T,) 0/1 of the test samples (None without a test split)."""
        return np.array([s.label for s in self.test_samples]) if self.test_samples else None


def augmented(images: np.ndarray, n: int) -> np.ndarray:
    """``images`` then their flips and quarter turns, in a fixed order, until ``n`` (or all eight of each)."""
    views = [lambda x: x, lambda x: x[:, ::-1], lambda x: x[::-1], lambda x: np.rot90(x, 1),
             lambda x: np.rot90(x, 2), lambda x: np.rot90(x, 3), lambda x: np.rot90(x[:, ::-1], 1),
             lambda x: np.rot90(x[:, ::-1], 3)]
    out = [np.ascontiguousarray(view(img)) for view in views for img in images]
    return np.stack(out[: max(n, len(images))])


def evenly(items: list[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items``, evenly spaced over the list (all of them when there are fewer)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def _inputs(samples: list[Any], size: int, interpolation: str, batch: int = 16) -> np.ndarray:
    """Graph inputs (N, S, S, 3) of the samples, decoded a batch at a time (a test split of full-size images is
    never held in memory whole)."""
    parts = [graph_input(load_images(samples[i : i + batch]), size, interpolation)
             for i in range(0, len(samples), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, size, size, 3), np.uint8)


def class_normals(cal: Calibration) -> tuple[list[Any], list[Any]]:
    """(the class's samples, its normal training images by id), checked before any work: the class must be in
    ``--data`` with at least two normal training images (one to calibrate, one to check the drift)."""
    samples = class_samples(cal.data, cal.class_name, cal.layout)
    normals = sorted((s for s in samples if s.split == "train" and s.label == 0), key=lambda s: s.id)
    if len(normals) < 2:
        raise DetectorError(f"{cal.data}: class {cal.class_name!r} has {len(normals)} normal training image(s); "
                            "int8 calibration needs at least 2 (one to calibrate, one to check the drift)")
    return samples, normals


def class_images(cal: Calibration, size: int, interpolation: str) -> ClassImages:
    """The class's normal training images split into calibration (at most ``CALIBRATION_IMAGES``, evenly spaced,
    augmented up to it) and check, and its test split, as graph inputs (the same Pillow resize as the runtime)."""
    samples, normals = class_normals(cal)
    n_check = max(1, round(len(normals) * CHECK_SHARE))
    check, calib = normals[:n_check], evenly(normals[n_check:], CALIBRATION_IMAGES)
    tests = test_split(samples) if any(s.split == "test" for s in samples) else []
    return ClassImages(calibration=augmented(_inputs(calib, size, interpolation), CALIBRATION_IMAGES),
                       check=_inputs(check, size, interpolation),
                       test=_inputs(tests, size, interpolation) if tests else None,
                       test_samples=tests,
                       image_level=bool(tests) and image_level_only(tests))


def require_nncf() -> Any:
    """NNCF, or one line saying how to install it (asked before any work, and again where it is used)."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # NNCF's import: "No CUDA runtime"
    try:
        import nncf  # optional extra
    except ImportError as exc:
        raise DetectorError(NNCF_MISSING) from exc
    return nncf


def quantise(ov_model: Any, calibration: np.ndarray) -> Any:
    """NNCF's post-training INT8 quantisation of an OpenVINO model on these (N, S, S, 3) uint8 images."""
    nncf = require_nncf()
    dataset = nncf.Dataset(list(calibration), lambda img: {INPUT_NAME: img[None]})
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's own progress bars: the export prints its own line
        return nncf.quantize(ov_model, dataset, subset_size=len(calibration),
                             model_type=nncf.ModelType.TRANSFORMER)


def _run(compiled: Any, images: np.ndarray, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    scores, maps = [], []
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]
    for i in range(0, len(images), batch):
        res = compiled({INPUT_NAME: images[i : i + batch]})
        scores.append(np.asarray(res[outputs[0]], np.float64))
        maps.append(np.asarray(res[outputs[1]], np.float32))
    return np.concatenate(scores), np.concatenate(maps)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, tied values sharing their average rank."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    return (starts + (counts - 1) / 2.0)[inverse]


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than two images (no order to keep);
    1.0 when both are constant, 0.0 when only one is (a graph whose scores collapsed keeps no order)."""
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if ra.std() == rb.std() == 0 else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def drift(fp32: Any, int8: Any, images: ClassImages, resolution: int) -> dict[str, Any]:
    """The int8 graph against the fp32 one (both compiled OpenVINO models): on the held-out normal images the
    map difference and the score ranks; on the test images, if any, each metric of both and its change."""
    s32, m32 = _run(fp32, images.check)
    s8, m8 = _run(int8, images.check)
    if not (np.isfinite(s8).all() and np.isfinite(m8).all()):
        raise DetectorError("int8 export refused: the quantised graph gives NaN or infinite scores or maps on the "
                            "class's normal images; use --precision fp16")
    diff = np.abs(m8.astype(np.float64) - m32)
    out: dict[str, Any] = {
        "check_images": len(images.check), "calibration_images": len(images.calibration),
        "map_mean": float(diff.mean()), "map_max": float(diff.max()),
        "score_mean": float(np.abs(s8 - s32).mean()), "score_spearman": _spearman(s32, s8),
    }
    if images.test is not None and images.test_labels is not None:
        t32, tm32 = _run(fp32, images.test)
        t8, tm8 = _run(int8, images.test)
        if images.image_level:  # no masks in this data set: image metrics only, as `detector eval` does
            fp, q = M.evaluate(t32, images.test_labels, None, None), M.evaluate(t8, images.test_labels, None, None)
        else:
            masks = np.stack([eval_mask(s, resolution) for s in images.test_samples])
            fp = M.evaluate(t32, images.test_labels, tm32, masks)
            q = M.evaluate(t8, images.test_labels, tm8, masks)
        out["test_images"] = len(images.test)
        n_bad = int(images.test_labels.sum())
        n_good = len(images.test_labels) - n_bad
        # one (good, anomalous) pair swapping order moves image AUROC by this much: below it no limit can hold
        out["image_auroc_step_points"] = 100.0 / (n_bad * n_good) if n_bad and n_good else None
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            out[key] = {"fp32": fp.get(key), "int8": q.get(key),
                        "change_points": None if fp.get(key) is None or q.get(key) is None
                        or not (math.isfinite(fp[key]) and math.isfinite(q[key])) else 100 * (q[key] - fp[key])}
    return out


def exceeded(figures: dict[str, Any], limits: DriftLimits, meaningful: bool = True) -> list[str]:
    """The limits the figures break, each as a short phrase (empty: the int8 export may be written). The AUROC
    limits hold only for ``meaningful`` weights (random ones score by chance; their changes are recorded, not
    judged), and image AUROC's never below one image pair's step (a small test set moves in those steps)."""
    broken = []
    if figures["map_mean"] > limits.map_mean:
        broken.append(f"mean map change {figures['map_mean']:.4f} > map_mean={limits.map_mean:g}")
    if figures["score_spearman"] is not None and figures["score_spearman"] < limits.score_spearman:
        broken.append(f"score rank correlation {figures['score_spearman']:.3f} < score_spearman="
                      f"{limits.score_spearman:g}")
    for key in ("image_auroc", "pixel_auroc") if meaningful else ():
        change = (figures.get(key) or {}).get("change_points")
        allowed = limits.auroc_points
        if key == "image_auroc" and figures.get("image_auroc_step_points"):
            allowed = max(allowed, figures["image_auroc_step_points"])
        if change is not None and -change > allowed:
            broken.append(f"{key.replace('_', ' ')} {change:+.2f} points < -{allowed:g}")
    return broken


def check_drift(figures: dict[str, Any], limits: DriftLimits, meaningful: bool = True) -> None:
    """One line refusing the export when the int8 graph drifted past ``limits``, with what to do instead."""
    broken = exceeded(figures, limits, meaningful)
    if broken:
        raise DetectorError(
            f"int8 export refused: {'; '.join(broken)} (on {figures['check_images']} held-out normal image(s)"
            f"{', ' + str(figures['test_images']) + ' test image(s)' if 'test_images' in figures else ''}). "
            "Use --precision fp16 (no calibration, near fp32), or allow it with --max-drift KEY=VALUE "
            f"(now {', '.join(f'{k}={v:g}' for k, v in asdict(limits).items())})")


def drift_line(figures: dict[str, Any]) -> str:
    """The drift figures in one line, as the export prints them."""
    parts = [f"mean map change {figures['map_mean']:.4f} (max {figures['map_max']:.4f})",
             (f"score rank correlation {_number(figures['score_spearman'], '.3f')} on {figures['check_images']} "
              "held-out normal image(s)")]
    for key in ("image_auroc", "pixel_auroc", "aupro"):
        change = (figures.get(key) or {}).get("change_points")
        if change is not None:
            parts.append(f"{key.replace('_', ' ')} {change:+.2f} points")
    return "int8 drift from fp32: " + ", ".join(parts)


def _number(value: float | None, form: str) -> str:
    return "n/a (one image)" if value is None else format(value, form)
