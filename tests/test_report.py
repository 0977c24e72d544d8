"""HTML report: self-contained, images embedded, table values equal to the numbers given."""
import base64
import io
import json
import re

import numpy as np
from PIL import Image

from detector.eval import report


def _metrics():
    return {"image_auroc": 0.912345678, "pixel_auroc": 0.5, "aupro": float("nan"), "image_ap": 1.0}


def test_page_is_self_contained_with_embedded_images_and_exact_values(tmp_path):
    m = _metrics()
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    rep = report.Report(
        title="eval <bottle>",
        notes=["random weights: not meaningful"],
        tables=[report.Table("Metrics", ["class", *m], [["bottle", *m.values()]])],
        figures=[report.Figure("a", img), report.Figure("b & c", img[:, :10])],
    )
    path = report.write_report(tmp_path / "r.html", rep)
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "eval &lt;bottle&gt;" in text
    assert not re.search(r'(src|href)="(?!data:)', text)  # no external assets
    blobs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(blobs) == 2
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(blobs[0]))))
    np.testing.assert_array_equal(decoded, img)  # lossless, RGB order kept
    values = [float(v) for v in re.findall(r'data-value="([^"]+)"', text)]
    assert values == [m["image_auroc"], m["pixel_auroc"], m["image_ap"]]  # NaN shown as a dash
    assert ">91.23<" in text and ">–<" in text
    json.dumps(values)


def test_heat_map_colours_and_contour():
    amap = np.zeros((16, 16), np.float32)
    amap[:, 8:] = 1.0
    hm = report.heat_map(amap)
    assert hm[0, 0, 2] > 100 and hm[0, 0, 0] < 50  # low score: blue (RGB)
    assert hm[0, 15, 0] > 100 and hm[0, 15, 2] < 50  # high score: red
    mask = np.zeros((16, 16), bool)
    mask[4:12, 4:12] = True
    img = np.full((16, 16, 3), 128, np.uint8)
    ov = report.overlay(img, amap, mask)
    assert ov.shape == (16, 16, 3)
    assert tuple(ov[4, 6]) == report.CONTOUR_RGB  # outline on the region border
    assert tuple(ov[8, 8]) != report.CONTOUR_RGB  # inside stays the blend
    # a map at another resolution is resized to the image
    assert report.overlay(img, amap[::2, ::2], mask).shape == (16, 16, 3)
    bar = report.colour_bar(16, float(amap.min()), float(amap.max()))
    assert report.panel(img, amap, mask).shape == (16, 16 + 4 + 16 + 4 + bar.shape[1], 3)


def test_normalise_constant_map_is_zero():
    assert report.normalise_map(np.full((3, 3), 0.4)).max() == 0
    assert report.normalise_map(np.array([0.0, 0.5, 1.0]), 0, 2).tolist() == [0, 64, 128]


def test_panel_has_a_colour_bar_on_the_figure_scale():
    img = np.full((64, 64, 3), 200, np.uint8)
    amap = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    pic = report.panel(img, amap, None, vmin=0.25, vmax=0.75)
    bar = pic[:, 64 + 4 + 64 + 4 :][:, :14]
    np.testing.assert_array_equal(bar[0, 0], report.heat_map(np.array([[1.0]]), 0, 1)[0, 0])  # top: vmax, red
    np.testing.assert_array_equal(bar[-1, 0], report.heat_map(np.array([[0.0]]), 0, 1)[0, 0])  # bottom: blue
    assert bar[0, 0, 0] > 100 and bar[-1, 0, 2] > 100  # RGB order
    # the values are written beside the bar: the label column differs from a bare one
    labels = pic[:, 64 + 4 + 64 + 4 + 14 :]
    assert (labels < 128).any() and not np.array_equal(labels, np.full_like(labels, 255))
    # the overlay uses the scale given, not the map's own range
    np.testing.assert_array_equal(pic[:, 68:132], report.overlay(img, amap, None, 0.25, 0.75))
    other = report.panel(img, amap, None, vmin=0.0, vmax=1.0)
    assert not np.array_equal(other[:, 64 + 4 + 64 + 4 + 14 :], labels)  # different scale, different labels


def test_colour_bar_numbers_are_readable():
    """Five tick values, each written at least 8 px high (the old 0.3-scale labels were 5 px)."""
    bar = report.colour_bar(256, 0.0, 1.0)
    text = (bar[:, 14 + 5 :] < 100).any(axis=2).any(axis=1)  # rows holding dark text pixels
    runs, n = [], 0
    for dark in [*text, False]:
        if dark:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    assert len(runs) == 5 and min(runs) >= 8, runs


def test_curve_points_equal_scikit_learn():
    from sklearn.metrics import precision_recall_curve, roc_curve

    from detector.eval.metrics import binary_curve

    rng = np.random.default_rng(1)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + labels * 0.4, 2)  # ties on purpose
    pts = report.curve_points(binary_curve(scores, labels))
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(pts["fpr"], fpr)
    np.testing.assert_allclose(pts["tpr"], tpr)
    prec, rec, _ = precision_recall_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(pts["precision"], prec[:-1][::-1])
    np.testing.assert_allclose(pts["recall"], rec[:-1][::-1])


def test_plots_are_real_pngs():
    from detector.eval.metrics import binary_curve

    rng = np.random.default_rng(2)
    labels = rng.random(50) < 0.5
    scores = rng.random(50) + labels
    c = binary_curve(scores, labels)
    for png, min_w in ((report.curves_plot({"image": c, "pixel": c}, {"image_auroc": 0.9}), 700),
                       (report.histograms_plot([{"title": "image", "normal": scores[~labels],
                                                 "anomalous": scores[labels], "threshold": 1.0},
                                                {"title": "pixels", "edges": [0, 0.5, 1], "normal_counts": [5, 1],
                                                 "anomalous_counts": [1, 4], "threshold": 0.5}]), 700),
                       (report.bars_plot("image AUROC", ["a", "b"], {"1-shot": ([80.0, 90.0], [1.0, 2.0])},
                                         {"1-shot": 91.0}), 500),
                       (report.colour_scale_plot(0.1, 0.9), 500)):
        pic = np.asarray(Image.open(io.BytesIO(png)))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and pic.shape[1] >= min_w and pic.std() > 10


def _explorer_data(page):
    return json.loads(re.search(r'id="explorer-data">(.*?)</script>', page, re.DOTALL).group(1))


def test_explorer_embeds_data_and_caps_overlays_by_budget():
    rows = [{"id": f"c/test/good/{i}", "label": i % 2, "defect_type": "good", "score": 0.2 + 0.1 * i,
             "region": 0.1 * i} for i in range(6)]
    rows[0]["region"] = float("-inf")
    rows[1]["score"] = float("nan")
    rng = np.random.default_rng(0)
    thumbs = [report.Thumb(r["id"], r["id"], rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                           report.quantise_map(rng.random((64, 64)), 0, 1, 32), ["a line </script>"]) for r in rows]
    page = report.threshold_explorer(rows, 0.5, 0.25, 0.0, 1.0, thumbs)
    data = _explorer_data(page)
    assert len(data["thumbs"]) == 6 and data["images"][0]["region"] is None and data["images"][1]["score"] is None
    assert data["image"]["reference"] == 0.499 and data["pixel"]["reference"] == 0.249  # decide as 0.5 / 0.25
    assert 'id="img-thr"' in page and 'id="px-thr"' in page and "no-image-threshold" not in page
    assert data["thumbs"][0]["mw"] == 32 and len(base64.b64decode(data["thumbs"][0]["map"])) == 32 * 32
    assert data["thumbs"][0]["defects"] == ["a line </script>"]  # escaped inside the script element
    small = report.threshold_explorer(rows, 0.5, 0.25, 0.0, 1.0, thumbs, budget_bytes=12_000)
    kept = len(_explorer_data(small)["thumbs"])
    assert 0 < kept < 6 and f"{kept} of 6 overlays embedded ({6 - kept} left out" in small
    # no image threshold (no anomalous image): said on the page, the pixel slider stays
    alone = report.threshold_explorer(rows, None, 0.25, 0.0, 1.0, thumbs, no_image="no anomalous image")
    assert _explorer_data(alone)["image"]["reference"] is None and 'id="img-thr"' not in alone
    assert "No image threshold: no anomalous image." in alone and 'id="px-thr"' in alone


def test_the_explorers_python_restatements():
    assert report.flagged_at([0.2, 0.3, float("nan")], 0.3).tolist() == [False, True, False]
    assert report.regions_at([0.2, 0.3, float("-inf")], 0.3).tolist() == [False, True, False]
    assert report.slider_value(0.123456789) == 0.123457
    scores = np.array([0.1, 0.4, 0.72345674, 0.9])
    for exact in scores[1:]:  # an F1-max threshold is one of the scores: the page's number decides alike
        shown = report.page_threshold(exact, scores)
        assert shown < exact and (report.flagged_at(scores, shown) == report.flagged_at(scores, exact)).all()
    assert report.page_threshold(0.72345674, scores) == 0.72
    assert report.page_threshold(0.5, [0.49999, 0.5]) == 0.499997  # close neighbours: more digits
    assert [report.js_number(x) for x in (0.5, 3.0, 1e-6, 1.5e-7, 1e21, 1e20, -0.25)] == [
        "0.5", "3", "0.000001", "1.5e-7", "1e+21", "100000000000000000000", "-0.25"]  # JavaScript's String(x)
    assert report.predict_command("detector predict X", 0.25, None) == "detector predict X --threshold 0.25"
    assert report.predict_command("p", 1e-7, 0.5) == "p --threshold 1e-7 --image-threshold 0.5"
