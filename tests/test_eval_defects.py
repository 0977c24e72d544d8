"""Named defects through `detector eval`: an oracle whose token matching and features are constructed so
the right names are known (left/right half components, state axis = the defect folder); the per-type
table against metrics computed by hand; defects.json and the report's explorer."""
import json
import re

import numpy as np
import pytest
from test_evaluate import OracleModel, _key, mvtec_test_samples

from detector.eval import metrics as M
from detector.eval import report
from detector.run import evaluate as E

STATES = ["color spot", "missing part"]
GROUPS = ["image", "background", "left part", "right part"]


class NamingOracle(OracleModel):
    """The ground truth as map; tokens on an 8 x 8 grid matched to "left part" / "right part" by the half of
    the image they lie in (swapped with ``swap``), each token's feature the axis of the image's defect state
    (the other state's axis with ``wrong_state``)."""

    def __init__(self, samples, swap=False, wrong_state=False):
        super().__init__(samples)
        self.state_of = {_key(np.asarray(__import__("fsad_data").load_rgb(s.image_path))): s.defect_type
                         for s in samples}
        self.swap, self.wrong_state = swap, wrong_state
        self.tau = 100.0
        self.meta = {"object_name": "pill box",
                     "record": {"defect_states": STATES, "defect_vocab": "dataset"}}

    def abnormal_text_features(self):
        e = np.eye(4, dtype=np.float32)
        out = {}
        for g in GROUPS:
            out[g] = ([f"a {g}"], [f"a {g} with a color spot", f"a {g} with a missing part"], e[[0, 1]])
        return out

    def predict(self, images, resolution=256, branch="fused", batch_size=8, tokens=False):
        pred = super().predict(images, resolution, branch, batch_size)
        if not tokens:
            return pred
        groups = np.zeros((len(images), 8, 8), np.int64)
        groups[:, :, :4], groups[:, :, 4:] = (3, 2) if self.swap else (2, 3)
        feats = np.zeros((len(images), 8, 8, 4), np.float32)
        for i, img in enumerate(images):
            state = self.state_of[_key(img)].replace("_", " ")
            axis = STATES.index(state) if state in STATES else 2
            feats[i, :, :, (1 - axis) if (self.wrong_state and axis < 2) else axis] = 1.0
        pred.token_groups, pred.tokens = groups, feats
        return pred


@pytest.fixture(scope="module")
def samples(demo_root):
    return mvtec_test_samples(demo_root, "pill_box")


@pytest.fixture(scope="module")
def captions(samples, tmp_path_factory):
    """A caption dataset holding only what naming reads: per test image a left and a right component box."""
    import datasets

    rows = [{"id": s.id, "class_name": "pill_box", "width": 256, "height": 256,
             "regions": [{"kind": "foreground", "name": "pill box", "location": "center", "orientation": "none",
                          "box": [0, 0, 256, 256], "area": 1.0},
                         {"kind": "component", "name": "left part", "location": "left", "orientation": "none",
                          "box": [0, 0, 128, 256], "area": 0.5},
                         {"kind": "component", "name": "right part", "location": "right", "orientation": "none",
                          "box": [128, 0, 256, 256], "area": 0.5}]} for s in samples]
    out = tmp_path_factory.mktemp("caps")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(str(out / "images"))
    return str(out)


def _eval(model, samples, out, captions):
    return E.evaluate_model(model, samples, out, E.EvalSettings(class_name="pill_box", resolution=64, batch_size=5,
                            captions=captions, min_area=0.0))


def test_naming_accuracy_is_one_when_the_constructed_matching_is_right(tmp_path, samples, captions):
    res = _eval(NamingOracle(samples), samples, tmp_path / "ok", captions)
    data = json.loads(res.metrics_path.read_text())
    assert data["metrics"]["naming_accuracy"] == 1.0 and data["metrics"]["state_accuracy"] == 1.0
    assert data["naming"]["n_defect_regions"] >= 6 and data["naming"]["n_missed_regions"] == 0
    assert data["naming"]["threshold"] == pytest.approx(data["metrics"]["pixel_f1_threshold"])
    defects = json.loads((tmp_path / "ok" / "defects.json").read_text())
    by_id = {im["id"]: im for im in defects["images"]}
    spot = by_id["pill_box/test/color_spot/000"]["defects"][0]
    assert spot["state"] == "color spot" and spot["component"] in ("left part", "right part")
    assert spot["sentence"].startswith(f"color spot on the {spot['component']}, ")
    x0, y0, x1, y1 = spot["box"]
    assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256  # original pixels (images are 256 px, map 64)
    assert all(not im["defects"] for im in defects["images"] if im["label"] == 0)  # oracle: clean normals
    assert {r["truth"] for r in defects["regions"]} <= {"left part", "right part"}
    # the report: explorer with every image, each overlay listing its named defects
    html = res.report_path.read_text()
    payload = json.loads(re.search(r'id="explorer-data">(.*?)</script>', html, re.DOTALL).group(1))
    assert len(payload["images"]) == len(payload["thumbs"]) == len(samples)
    thumb = next(t for t in payload["thumbs"] if t["id"] == "pill_box/test/color_spot/000")
    assert thumb["defects"] == [spot["sentence"]]
    # both sliders start at numbers that decide every image as the evaluation's exact thresholds do
    regions = [-np.inf if im["region"] is None else im["region"] for im in payload["images"]]
    scores = [im["score"] for im in payload["images"]]
    for values, shown, exact, decide in ((regions, payload["pixel"]["reference"], data["naming"]["threshold"],
                                          report.regions_at),
                                         (scores, payload["image"]["reference"],
                                          data["metrics"]["image_f1_threshold"], report.flagged_at)):
        assert exact * 0.99 <= shown <= exact and (decide(values, shown) == decide(values, exact)).all()
    assert payload["command"].endswith("IMAGES --out predictions --resolution 64 --min-area 0")  # as evaluated
    assert "Per defect type" in html and len(html.encode()) < 2_000_000


def test_swapped_matching_and_wrong_states_score_zero(tmp_path, samples, captions):
    res = _eval(NamingOracle(samples, swap=True, wrong_state=True), samples, tmp_path / "bad", captions)
    assert res.metrics["naming_accuracy"] == 0.0 and res.metrics["state_accuracy"] == 0.0


def test_without_caption_regions_naming_accuracy_is_null_with_a_reason(tmp_path, samples):
    res = _eval(NamingOracle(samples), samples, tmp_path / "none", None)
    data = json.loads(res.metrics_path.read_text())
    assert data["metrics"]["naming_accuracy"] is None and "pass --captions" in data["naming"]["note"]
    assert (tmp_path / "none" / "defects.json").is_file()  # the defects are still named


def test_per_type_table_equals_metrics_by_hand(tmp_path, samples):
    class Noisy(OracleModel):
        """The ground truth blurred into noise that depends only on the image: maps reproducible by hand."""

        def predict(self, images, resolution=256, branch="fused", batch_size=8):
            p = super().predict(images, resolution, branch, batch_size)
            noise = np.stack([np.random.default_rng(int(_key(img)[:8], 16)).random(p.maps.shape[1:])
                              for img in images]).astype(np.float32)
            p.maps = np.clip(p.maps * 0.5 + noise * 0.6, 0, 1)
            p.scores = p.maps.reshape(len(images), -1).max(1)
            return p

    from fsad_data import load_rgb

    model = Noisy(samples)
    res = E.evaluate_model(model, samples, tmp_path / "t", E.EvalSettings(class_name="pill_box", resolution=32, html=False))
    rows = json.loads(res.metrics_path.read_text())["per_type"]
    assert [r["defect_type"] for r in rows] == ["color_spot", "missing_part"] and [r["count"] for r in rows] == [3, 3]
    pred = model.predict([load_rgb(s.image_path) for s in samples], resolution=32)
    masks = np.stack([E.eval_mask(s, 32) for s in samples])
    labels = np.array([s.label for s in samples])
    for r in rows:
        sel = np.array([s.defect_type in (r["defect_type"], "good") for s in samples])
        assert r["image_auroc"] == pytest.approx(M.auroc(pred.scores[sel], labels[sel]))
        exact = M.pixel_metrics(pred.maps[sel], masks[sel])
        assert r["pixel_auroc"] == pytest.approx(exact["pixel_auroc"], abs=1e-3)
        assert r["aupro"] == pytest.approx(exact["aupro"], abs=1e-3)


def test_a_split_without_anomalous_images_gets_its_report_without_an_image_threshold(tmp_path, samples):
    normals = [s for s in samples if not s.label]
    res = _eval(NamingOracle(samples), normals, tmp_path / "normal", None)
    data = json.loads(res.metrics_path.read_text())
    assert data["metrics"]["image_f1_threshold"] is None and "no anomalous test image" in data["naming"][
        "threshold_source"]
    html = res.report_path.read_text()
    payload = json.loads(re.search(r'id="explorer-data">(.*?)</script>', html, re.DOTALL).group(1))
    assert payload["image"]["reference"] is None and 'id="img-thr"' not in html and 'id="px-thr"' in html
    assert "No image threshold: F1-max needs anomalous images and this test split has none." in html
    regions = [-np.inf if im["region"] is None else im["region"] for im in payload["images"]]
    assert not report.regions_at(regions, payload["pixel"]["reference"]).any()  # no region on a normal image
