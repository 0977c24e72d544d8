"""HTML report: self-contained, images embedded, table values equal to the numbers given."""
import base64
import io
import json
import re

import numpy as np
from PIL import Image

from detector import report


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
    assert report.panel(img, amap, mask).shape == (16, 36 + 4 + 56, 3)


def test_normalise_constant_map_is_zero():
    assert report.normalise_map(np.full((3, 3), 0.4)).max() == 0
    assert report.normalise_map(np.array([0.0, 0.5, 1.0]), 0, 2).tolist() == [0, 64, 128]


def test_panel_has_a_colour_bar_on_the_figure_scale():
    img = np.full((64, 64, 3), 200, np.uint8)
    amap = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    pic = report.panel(img, amap, None, vmin=0.25, vmax=0.75)
    bar = pic[:, 64 + 4 + 64 + 4 :][:, :12]
    np.testing.assert_array_equal(bar[0, 0], report.heat_map(np.array([[1.0]]), 0, 1)[0, 0])  # top: vmax, red
    np.testing.assert_array_equal(bar[-1, 0], report.heat_map(np.array([[0.0]]), 0, 1)[0, 0])  # bottom: blue
    assert bar[0, 0, 0] > 100 and bar[-1, 0, 2] > 100  # RGB order
    # the values are written beside the bar: the label column differs from a bare one
    labels = pic[:, -44:]
    assert (labels < 128).any() and not np.array_equal(labels, np.full_like(labels, 255))
    # the overlay uses the scale given, not the map's own range
    np.testing.assert_array_equal(pic[:, 68:132], report.overlay(img, amap, None, 0.25, 0.75))
    other = report.panel(img, amap, None, vmin=0.0, vmax=1.0)
    assert not np.array_equal(other[:, -44:], labels)  # different scale, different labels
