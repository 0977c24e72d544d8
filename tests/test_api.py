"""The Python API as a user calls it: `from detector import Detector`, load a folder or a Hub id, predict."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from detector_fixtures import hub_snapshot, make_image
from PIL import Image


@pytest.fixture(scope="module")
def ckpt(widget_checkpoint):
    return widget_checkpoint


def _reference(ckpt, arrays, resolution=256):
    from detector.store.saved_detector import load_detector

    return load_detector(ckpt).predict(arrays, resolution=resolution)


def test_import_detector_is_cheap():
    code = ("import sys\nfrom detector import Detector, DetectorResult\n"
            "print('HEAVY', [m for m in ('torch', 'open_clip', 'transformers', 'datasets') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_predict_paths_pil_and_arrays_like_the_model(ckpt, tmp_path):
    from detector import Detector

    a = make_image((10, 10, 20))
    b = make_image(None, size=96)  # another size: the map follows the image
    Image.fromarray(a).save(tmp_path / "a.png")
    det = Detector.load(ckpt)
    assert det.class_name == "widget" and det.resolution == 256
    results = det.predict([tmp_path / "a.png", Image.fromarray(b), a[:, :, 0]])  # path, PIL, gray array
    ref = _reference(ckpt, [a, b, np.repeat(a[:, :, :1], 3, axis=2)])
    assert [r.map.shape for r in results] == [(64, 64), (96, 96), (64, 64)]
    for r, score, amap in zip(results, ref.scores, ref.maps):
        assert r.score == pytest.approx(float(score), abs=1e-6)
        assert r.mask is None and r.anomalous is None and r.defects is None
        assert r.map.dtype == np.float32
    from detector.eval.postprocess import map_to_image_size

    np.testing.assert_allclose(results[1].map, map_to_image_size(ref.maps[1], 96, 96), atol=1e-6)
    np.testing.assert_allclose(results[0].map, ref.maps[0][::4, ::4], atol=0.05)  # 256 -> 64 bilinear
    one = det.predict(a)  # a single image is a list of one
    assert len(one) == 1 and one[0].score == pytest.approx(results[0].score, abs=1e-6)
    batch = det.predict(np.stack([a, a]), batch_size=1)  # a 4-D array is a batch
    assert [r.score for r in batch] == pytest.approx([results[0].score] * 2, abs=1e-6)


def test_thresholds_number_auto_and_none(ckpt, tmp_path):
    from detector import Detector

    folder = shutil.copytree(ckpt, tmp_path / "ckpt")
    a = make_image((10, 10, 20))
    det = Detector.load(folder)
    r = det.predict([a])[0]
    t = float(np.median(r.map))
    masked = det.predict([a], threshold=t)[0]
    np.testing.assert_array_equal(masked.mask, r.map >= t)
    assert masked.anomalous is None and 0 < masked.mask.mean() < 1
    assert det.predict([a], threshold="auto")[0].mask is None  # no eval run: no stored threshold
    # named defects at the threshold: one per region of the mask of at least min_area, boxes in image pixels
    from detector.eval.metrics import components

    _, sizes = components(masked.mask)
    big = [k for k in range(1, len(sizes)) if sizes[k] >= det.min_area * masked.mask.size]
    assert len(masked.defects) == len(big) > 0 and r.defects is None
    for d in masked.defects:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and d["component"] == "object"
        assert d["sentence"].startswith(f"{d['state']} on the widget" if d["state"] != "unknown" else "unknown")
    (folder / "threshold.json").write_text(json.dumps({"fused": {
        "pixel_threshold": t, "image_threshold": r.score + 1.0, "resolution": 128}}))
    det = Detector.load(folder)
    assert det.resolution == 128
    auto = det.predict([a])[0]
    assert auto.anomalous is False and auto.mask is not None
    np.testing.assert_array_equal(auto.mask, auto.map >= t)
    assert det.predict([a], resolution=64)[0].mask is None  # auto thresholds hold only at their resolution


@pytest.mark.parametrize("bad, words", [
    (np.zeros((8, 8, 3), np.float32), "dtype float32"),
    (np.zeros((8, 8, 2), np.uint8), "shape (8, 8, 2)"),
    (12, "a int"),
])
def test_bad_images_are_clear_errors(ckpt, bad, words):
    from detector import Detector
    from detector.errors import DetectorError

    with pytest.raises(DetectorError, match=f"image 0: .*{re.escape(words)}"):
        Detector.load(ckpt).predict([bad])


def test_load_from_a_hub_snapshot_offline(ckpt, tmp_path, monkeypatch):
    """A local folder laid out as the Hub cache (models--org--name/snapshots/REV, refs/main), HF_HUB_OFFLINE=1."""
    from detector import Detector
    from detector.errors import DetectorError

    hub_snapshot(ckpt, tmp_path / "hub", "org/widget-detector", monkeypatch)
    det = Detector.load("org/widget-detector")
    a = make_image((10, 10, 20))
    assert det.predict([a])[0].score == pytest.approx(float(_reference(ckpt, [a]).scores[0]), abs=1e-6)
    with pytest.raises(DetectorError, match="could not be fetched from the Hub"):
        Detector.load("org/not-cached")
    with pytest.raises(DetectorError, match="not found: pass a checkpoint folder"):
        Detector.load(tmp_path / "no" / "such" / "folder")


def test_named_defects_with_a_threshold_are_those_of_detector_defects(ckpt):
    from detector import Detector
    from detector.eval import defects as D
    from detector.store.saved_detector import load_detector

    a = make_image((10, 10, 20))
    det = Detector.load(ckpt)
    r = det.predict([a])[0]
    t = float(np.quantile(r.map, 0.8))
    got = det.predict([a], threshold=t)[0]
    model = load_detector(ckpt)
    pred = model.predict([a], tokens=True)
    bank = D.model_state_bank(model)
    ref, _ = D.name_regions(pred.maps[0], D.token_evidence(pred.tokens[0], pred.token_groups[0], bank), bank,
                            D.NamingConfig(threshold=t), image_size=a.shape[:2],
                            object_name=str(model.meta.get("object_name") or ""), tau=float(model.tau))
    # the API names regions on the map at the image's own size (boxes in its pixels), this reference at the
    # model's resolution: the same regions, named the same, with areas equal up to the resampling
    want = [d.to_dict() for d in ref]
    assert got.defects and len(got.defects) == len(want)  # the top fifth is one region at least
    for g, w in zip(got.defects, want):
        assert (g["component"], g["group"], g["location"], g["state"]) == (w["component"], w["group"],
                                                                            w["location"], w["state"])
        assert g["area"] == pytest.approx(w["area"], abs=0.01) and g["peak"] == pytest.approx(w["peak"], abs=0.01)
        assert all(0 <= v <= 40 for v in g["box"])  # inside the 40 x 40 image
    assert {"box", "component", "state", "sentence"} <= set(got.defects[0])
    assert r.defects is None  # no threshold: no regions to name
