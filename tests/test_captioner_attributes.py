"""The offline attribute captioner must be right on drawn scenes (truth known by construction)."""
import cv2
import numpy as np
import pytest

from mfsc_builder.captioners import Captioner, CaptionRequest, make_captioner
from mfsc_builder.captioners.attributes import colour_name, plural, shape_name, texture_name
from mfsc_builder.crop import crop_regions
from mfsc_builder.errors import BuildError

FULL = np.ones((96, 96), bool)


@pytest.mark.parametrize("rgb,name", [
    ((210, 30, 30), "red"), ((30, 60, 215), "blue"), ((40, 170, 50), "green"), ((240, 215, 30), "yellow"),
    ((250, 250, 250), "white"), ((10, 10, 10), "black"), ((128, 128, 128), "grey"), ((245, 135, 20), "orange"),
    ((130, 80, 40), "brown"), ((125, 45, 160), "purple"), ((200, 35, 25), "red"), ((50, 100, 220), "blue"),
])
def test_colour_names(rgb, name):
    img = np.full((8, 8, 3), rgb, np.uint8)
    assert colour_name(img, np.ones((8, 8), bool)) == name


def _textures():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    flat = np.full((96, 96, 3), (90, 140, 60), np.uint8)
    shade = np.repeat(np.repeat(np.linspace(90, 150, 96).astype(np.uint8)[None, :, None], 96, 0), 3, 2)
    stripes = np.where(((xx // 4) % 2 == 0)[..., None], 220, 40).astype(np.uint8).repeat(3, 2)
    diag = np.where((((xx + yy) // 5) % 2 == 0)[..., None], 200, 60).astype(np.uint8).repeat(3, 2)
    noise = rng.integers(40, 220, (96, 96, 1), dtype=np.uint8).repeat(3, 2)
    checker = np.where((((xx // 8) + (yy // 8)) % 2 == 0)[..., None], 210, 50).astype(np.uint8).repeat(3, 2)
    return [("smooth", flat), ("smooth", shade), ("striped", stripes), ("striped", stripes.transpose(1, 0, 2)),
            ("striped", diag), ("granular", noise), ("textured", checker)]


@pytest.mark.parametrize("i", range(7))
def test_texture_names(i):
    name, img = _textures()[i]
    assert texture_name(np.ascontiguousarray(img), FULL) == name


def _draw(kind):
    m = np.zeros((96, 96), np.uint8)
    if kind == "circle":
        cv2.circle(m, (48, 48), 30, 1, -1)
    elif kind == "small circle":
        cv2.circle(m, (48, 48), 6, 1, -1)
    elif kind == "square":
        cv2.rectangle(m, (20, 20), (70, 70), 1, -1)
    elif kind == "rotated square":
        cv2.fillPoly(m, [np.array([[48, 10], [86, 48], [48, 86], [10, 48]])], 1)
    elif kind == "bar":
        cv2.rectangle(m, (10, 40), (85, 52), 1, -1)
    elif kind == "star":
        cv2.fillPoly(m, [np.array([[48, 5], [58, 38], [90, 40], [62, 58], [75, 90], [48, 70], [20, 90], [34, 58],
                                   [5, 40], [38, 38]])], 1)
    return m > 0


@pytest.mark.parametrize("kind,name", [("circle", "circular"), ("small circle", "circular"),
                                       ("square", "rectangular"), ("rotated square", "rectangular"),
                                       ("bar", "elongated"), ("star", "irregular")])
def test_shape_names(kind, name):
    assert shape_name(_draw(kind)) == name


def test_plural():
    assert plural("round part", 2) == "round parts" and plural("brush", 3) == "brushes"
    assert plural("battery", 2) == "batteries" and plural("key", 2) == "keys" and plural("cap", 1) == "cap"


def _scene():
    img = np.full((120, 180, 3), 250, np.uint8)
    cv2.circle(img, (30, 20), 15, (210, 30, 30), -1)       # top left
    cv2.circle(img, (150, 20), 15, (210, 30, 30), -1)      # top right
    cv2.rectangle(img, (60, 45), (120, 110), (30, 60, 215), -1)  # blue body, bottom centre
    cv2.rectangle(img, (5, 100), (45, 106), (40, 170, 50), -1)   # green bar, bottom left
    return img


def test_scene_fields_are_right():
    cap = make_captioner("attributes")
    assert isinstance(cap, Captioner) and cap.propose_defects("toy", _scene()) is None
    img = _scene()
    res = cap.caption([CaptionRequest("s/1", "toy", img, crop_regions(img))])[0]
    f = res.fields
    assert res.provenance.backend == "attributes" and res.provenance.status == "ok"
    assert f.image_view.foreground == "toy" and f.image_view.background == "plain white"
    assert f.foreground_view.count == 4
    comps = {c.name: c for c in f.components}
    assert set(comps) == {"toy body", "red round part", "green strip"}
    body, red, bar = comps["toy body"], comps["red round part"], comps["green strip"]
    assert (body.colour, body.shape, body.texture, body.count, body.location) == (
        "blue", "rectangular", "smooth", 1, "center")
    assert (red.colour, red.shape, red.count, red.location) == ("red", "circular", 2, "top left and top right")
    assert red.sentence == "two smooth red round parts at the top left and top right"
    assert (bar.colour, bar.shape, bar.direction, bar.location) == ("green", "elongated", "horizontal",
                                                                    "bottom left")
    assert body.area == pytest.approx(61 * 66 / (120 * 180), rel=0.02)
    assert "the red round parts are above the toy body" in f.foreground_view.relation
    assert "the green strip is left of the toy body" in f.foreground_view.relation
    assert f.defect is None
    assert sorted(f.region_names) == sorted(["toy body", "red round part", "red round part", "green strip"])
    assert f.caption.startswith("a toy made of ") and f.caption.endswith("on a plain white background")


def test_defect_view():
    img = _scene()
    mask = np.zeros(img.shape[:2], bool)
    mask[60:70, 70:80] = True
    img[mask] = (10, 10, 10)
    f = make_captioner("attributes").caption(
        [CaptionRequest("s/2", "toy", img, crop_regions(img, mask), True, "hole")])[0].fields
    assert f.defect.type == "hole" and f.defect.colour == "black" and f.defect.location == "center"
    assert f.defect.size == "small"
    assert f.defect.sentence == "a small black hole area at the center of the toy"
    # defect pixels are not a component
    assert {c.name for c in f.components} == {"toy body", "red round part", "green strip"}


def test_textured_image():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 1), dtype=np.uint8).repeat(3, 2)
    f = make_captioner("attributes").caption([CaptionRequest("c/1", "carpet", img, crop_regions(img))])[0].fields
    assert f.image_view.background == "none"
    assert [c.name for c in f.components] == ["carpet surface"]
    assert f.components[0].texture == "granular"


def test_unknown_spec():
    with pytest.raises(BuildError, match="unknown captioner"):
        make_captioner("florence")


@pytest.mark.parametrize("cls", ["pill_box", "hex_nut", "fabric"])
def test_synthetic_truth(demo_root, cls):
    """On the project's synthetic set, the fields must match each class's truth.json (normal images)."""
    import json

    from fsad_data.images import load_rgb

    truth = json.loads((demo_root / cls / "truth.json").read_text())
    cap = make_captioner("attributes")
    for path in sorted((demo_root / cls / "train" / "good").glob("*.png"))[:3]:
        img = load_rgb(path)
        f = cap.caption([CaptionRequest(path.name, truth["foreground"], img, crop_regions(img))])[0].fields
        assert f.image_view.foreground == truth["foreground"]
        if truth["kind"] == "texture":
            assert f.image_view.background == "none"
            assert [c.colour for c in f.components] == [truth["foreground_colour"]]
            assert f.components[0].texture == truth["texture"]
            continue
        assert f.image_view.background == f"plain {truth['background']}"
        assert f.components[0].colour == truth["foreground_colour"]  # the body comes first
        found = sorted((c.colour, c.location, c.shape) for c in f.components[1:])
        want = sorted((t["colour"], t["location"], "circular") for t in truth["components"])
        assert found == want
        assert f.foreground_view.count == 1 + truth["component_count"]
