"""Evaluation protocol on the synthetic set: oracle and fake models, outputs, thresholds, RGB path."""
import csv
import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from detector.eval.metrics import METRIC_KEYS
from detector.method.model import Prediction
from detector.run import evaluate as E
from fsad_data import Sample, load_mask, load_rgb


def mvtec_test_samples(root: Path, class_name: str) -> list[Sample]:
    """The class's test split read straight from the MVTec-AD folders (independent of read_dataset)."""
    out = []
    for p in sorted((root / class_name / "test").glob("*/*.png")):
        defect = p.parent.name
        mask = None if defect == "good" else root / class_name / "ground_truth" / defect / f"{p.stem}_mask.png"
        out.append(Sample(id=f"{class_name}/test/{defect}/{p.stem}", class_name=class_name, split="test",
                          label=int(defect != "good"), defect_type=defect, image_path=p, mask_path=mask,
                          file_name=str(p.relative_to(root / class_name))))
    return sorted(out, key=lambda s: s.id)


def _key(img: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()


class OracleModel:
    """Returns the ground truth as its map (looked up by image bytes): every metric must be perfect.

    ``transpose`` flips the map axes, the classic wiring bug, which the metrics must expose.
    """

    def __init__(self, samples, transpose=False):
        self.by_image = {}
        for s in samples:
            img = load_rgb(s.image_path)
            m = load_mask(s.mask_path) if s.mask_path else np.zeros(img.shape[:2], bool)
            self.by_image[_key(img)] = m
        self.transpose = transpose
        self.seen: list[np.ndarray] = []
        self.calls: list[dict] = []

    def predict(self, images, resolution=256, branch="fused", batch_size=8):
        self.calls.append({"n": len(images), "resolution": resolution, "branch": branch})
        maps = []
        for img in images:
            self.seen.append(img)
            m = self.by_image[_key(img)].astype(np.float32)
            m = cv2.resize(m, (resolution, resolution), interpolation=cv2.INTER_LINEAR)
            maps.append(m.T if self.transpose else m)
        maps = np.stack(maps).astype(np.float32)
        return Prediction(maps.reshape(len(images), -1).max(1), maps)


@pytest.fixture(scope="module")
def samples(demo_root):
    return mvtec_test_samples(demo_root, "pill_box")


def test_oracle_gets_perfect_metrics_and_all_outputs(tmp_path, samples):
    model = OracleModel(samples)
    res = E.evaluate_model(model, samples, tmp_path / "out", E.EvalSettings(class_name="pill_box", resolution=64,
                           batch_size=5, info={"shots": 1, "seed": 0, "meaningful": False},
                           checkpoint_sha256="ab" * 32))
    m = res.metrics
    for k in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert m[k] == pytest.approx(1.0), k
    assert [c["n"] for c in model.calls] == [5, 5, 2] and {c["resolution"] for c in model.calls} == {64}
    data = json.loads(res.metrics_path.read_text())
    assert data["resolution"] == 64 and data["branch"] == "fused" and data["n_images"] == 12
    assert data["n_anomalous"] == 6 and data["meaningful"] is False and "not meaningful" in data["note"]
    assert data["metrics"]["aupro"] == pytest.approx(1.0) and data["shots"] == 1
    row = list(csv.DictReader(res.csv_path.open()))
    assert len(row) == 1 and float(row[0]["pixel_auroc"]) == pytest.approx(1.0)
    # overlays: every image at most 8 anomalous + 4 normal, deterministic picks
    assert len(res.overlays) == 10 and all(p.exists() for p in res.overlays)
    assert E.pick_figures(samples) == E.pick_figures(list(samples))
    thr = json.loads((tmp_path / "out" / "threshold.json").read_text())  # with the evaluation, not the checkpoint
    assert thr["fused"]["pixel_threshold"] == pytest.approx(m["pixel_f1_threshold"])
    assert thr["fused"]["checkpoint_sha256"] == "ab" * 32
    # the report shows the same values as metrics.json
    html = res.report_path.read_text()
    first = html.split("</table>")[0]
    cells = [float(v) for v in re.findall(r'data-value="([^"]+)"', first)]
    assert cells == [data["metrics"][k] for k in METRIC_KEYS if data["metrics"][k] is not None]
    assert data["metrics"]["naming_accuracy"] is None  # this model exposes no token matching
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 10 + 3  # panels + curves, histograms, scale


def test_transposed_maps_are_caught(tmp_path, samples):
    good = E.evaluate_model(OracleModel(samples), samples, tmp_path / "a", E.EvalSettings(class_name="pill_box",
                            resolution=64, html=False)).metrics
    bad = E.evaluate_model(OracleModel(samples, transpose=True), samples, tmp_path / "b",
                           E.EvalSettings(class_name="pill_box", resolution=64, html=False)).metrics
    assert bad["aupro"] < good["aupro"] - 0.2
    assert bad["pixel_ap"] < good["pixel_ap"] - 0.2


def test_masks_are_resized_then_binarised(samples):
    s = next(x for x in samples if x.label)
    full = load_mask(s.mask_path)
    small = E.eval_mask(s, 32)
    assert small.dtype == bool and small.shape == (32, 32)
    expected = cv2.resize(full.astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR) > 0.5
    np.testing.assert_array_equal(small, expected)
    normal = next(x for x in samples if not x.label)
    assert not E.eval_mask(normal, 16).any()


def test_eval_loader_feeds_rgb_like_load_rgb(samples):
    model = OracleModel(samples[:3])
    E.collect(model, samples[:3], resolution=16, batch_size=2)
    for s, seen in zip(samples[:3], model.seen):
        ref = load_rgb(s.image_path)
        assert seen.dtype == np.uint8 and seen.shape == ref.shape
        np.testing.assert_array_equal(seen, ref)
    # the synthetic pill box has a red part at the top left: channel 0 (R) must dominate there
    img = model.seen[0]
    assert img[64, 64, 0] > 150 and img[64, 64, 2] < 100


def test_bad_model_output_and_empty_split_raise(tmp_path, samples):
    from detector.errors import DetectorError

    class Wrong:
        def predict(self, images, resolution=256, branch="fused", batch_size=8):
            return Prediction(np.zeros(len(images)), np.zeros((len(images), 8, 8), np.float32))

    with pytest.raises(DetectorError, match="maps of shape"):
        E.collect(Wrong(), samples[:2], resolution=16)
    with pytest.raises(DetectorError, match="no test images"):
        E.evaluate_model(Wrong(), [], tmp_path, E.EvalSettings(class_name="x"))


class NoisyOracle(OracleModel):
    """The oracle's map, blurred into noise: pixel metrics strictly between chance and perfect."""

    def predict(self, images, resolution=256, branch="fused", batch_size=8):
        pred = super().predict(images, resolution, branch, batch_size)
        rng = np.random.default_rng(len(self.seen))
        maps = np.stack([cv2.GaussianBlur(0.1 * m + 0.9 * rng.random(m.shape, dtype=np.float32), (0, 0), 1)
                         for m in pred.maps])
        return Prediction(pred.scores, maps.astype(np.float32))


def test_streaming_metrics_by_default_exact_on_request(tmp_path, samples):
    runs = {}
    for exact in (False, True):
        res = E.evaluate_model(NoisyOracle(samples), samples, tmp_path / str(exact), E.EvalSettings(class_name="pill_box",
                               resolution=64, batch_size=5, exact_metrics=exact))
        runs[exact] = (res.metrics, json.loads(res.metrics_path.read_text()))
    (hist, hist_json), (exact, exact_json) = runs[False], runs[True]
    assert hist_json["pixel_metrics"]["method"] == "histogram" and exact_json["pixel_metrics"] == {"method": "exact"}
    assert 0.6 < exact["pixel_auroc"] < 0.999
    bound = hist_json["pixel_metrics"]["auroc_bound"]
    assert abs(hist["pixel_auroc"] - exact["pixel_auroc"]) <= bound < 1e-3
    for k in ("pixel_ap", "pixel_f1_max", "aupro"):
        assert hist[k] == pytest.approx(exact[k], abs=1e-3), k
    for k in ("image_auroc", "image_ap", "image_f1_max", "image_f1_threshold"):
        assert hist[k] == exact[k]  # image metrics stay exact
    assert "histogram" in (tmp_path / "False" / "report.html").read_text()
    # figures and per-image map maxima do not depend on the pixel accumulator
    assert (tmp_path / "False" / "scores.csv").read_text() == (tmp_path / "True" / "scores.csv").read_text()
    for p in sorted((tmp_path / "True" / "overlays").glob("*.png")):
        assert p.read_bytes() == (tmp_path / "False" / "overlays" / p.name).read_bytes()


def test_collect_memory_is_flat_in_the_number_of_images(samples):
    import tracemalloc

    class Forgetful(OracleModel):  # the oracle without its record of the images seen
        def predict(self, images, resolution=256, branch="fused", batch_size=8):
            pred = super().predict(images, resolution, branch, batch_size)
            self.seen.clear()
            return pred

    def peak(n_copies, exact):
        model = Forgetful(samples)
        tracemalloc.start()
        col = E.collect(model, list(samples) * n_copies, resolution=128, batch_size=4, exact=exact, keep=[0, 6])
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sorted(col.kept) == [0, 6]
        return used

    per_image = 128 * 128 * 5  # float32 map + bool mask
    grow_stream = peak(5, False) - peak(1, False)
    grow_exact = peak(5, True) - peak(1, True)
    assert grow_exact > 40 * 128 * 128 * 4  # 48 more images, 4 bytes per pixel kept (the test sees the growth)
    assert grow_stream < 4 * per_image  # only per-image floats grow
