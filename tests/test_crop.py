"""MFSC stage 1: regions of drawn scenes whose truth is known by construction."""
import cv2
import numpy as np
import pytest

from mfsc_builder.crop import CropConfig, ImageRegions, Region, crop_regions, location_word, orientation_of
from mfsc_builder.errors import BuildError


def _scene():
    img = np.full((120, 180, 3), 250, np.uint8)
    cv2.circle(img, (30, 20), 15, (220, 20, 20), -1)              # red disc, top left cell
    cv2.rectangle(img, (120, 85), (170, 105), (20, 20, 220), -1)  # blue box, bottom right cell
    return img


def test_location_words_on_thirds():
    assert location_word(10, 10, 90, 90) == "top left"
    assert location_word(45, 45, 90, 90) == "center"
    assert location_word(80, 45, 90, 90) == "right"
    assert location_word(45, 89, 90, 90) == "bottom"


def test_orientation():
    m = np.zeros((50, 50), bool)
    m[20:24, 5:45] = True
    assert orientation_of(m) == "horizontal"
    assert orientation_of(m.T) == "vertical"
    assert orientation_of(np.eye(50, dtype=bool) | np.eye(50, k=1, dtype=bool)) == "diagonal"
    d = np.zeros((50, 50), np.uint8)
    cv2.circle(d, (25, 25), 10, 1, -1)
    assert orientation_of(d > 0) == "none"


def test_two_objects_on_plain_background():
    img = _scene()
    r = crop_regions(img)
    assert not r.textured
    truth = np.any(img != 250, axis=2)
    assert (r.foreground.mask == truth).mean() > 0.995
    assert len(r.components) == 2
    by_loc = {c.location: c for c in r.components}
    assert set(by_loc) == {"top left", "bottom right"}
    box = by_loc["bottom right"]
    assert box.box == (120, 85, 171, 106)
    assert box.area == pytest.approx(51 * 21 / (120 * 180), rel=0.02)
    assert box.orientation == "horizontal"
    assert by_loc["top left"].orientation == "none"
    assert (box.crop(img) == (20, 20, 220)).all()
    assert r.background.area == pytest.approx(1 - r.foreground.area)


def test_two_colour_object_splits_into_components():
    img = np.full((100, 100, 3), 0, np.uint8)
    cv2.circle(img, (50, 50), 40, (200, 200, 200), -1)   # gray disc
    cv2.circle(img, (50, 50), 12, (230, 200, 0), -1)     # yellow centre
    r = crop_regions(img)
    assert r.foreground.location == "center" and r.foreground.area == pytest.approx(np.pi * 40**2 / 1e4, rel=0.03)
    assert len(r.components) == 2
    assert r.components[0].area > r.components[1].area
    inner = r.components[1]
    assert inner.area == pytest.approx(np.pi * 12**2 / 1e4, rel=0.08)


def test_textured_fallback():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    r = crop_regions(img)
    assert r.textured and r.foreground.mask.all() and r.background.empty
    assert len(r.components) == 1 and r.components[0].area == 1.0
    forced = crop_regions(_scene(), config=CropConfig(textured=True))
    assert forced.textured and forced.foreground.area == 1.0


def test_defect_regions_and_mask_checks():
    img = _scene()
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[10:20, 10:30] = 255
    mask[100:104, 100:102] = 1
    r = crop_regions(img, mask)
    assert [d.name for d in r.defects] == ["defect 1", "defect 2"]
    assert r.defects[0].box == (10, 10, 30, 20) and r.defects[0].location == "top left"
    assert r.defects[1].area == pytest.approx(8 / (120 * 180))
    with pytest.raises(BuildError, match="does not match"):
        crop_regions(img, np.zeros((10, 10), bool))
    with pytest.raises(BuildError, match="RGB uint8"):
        crop_regions(img.astype(np.float32))
    assert crop_regions(img, np.zeros(img.shape[:2], bool)).defects == []


def test_regions_json_round_trip():
    import json

    r = crop_regions(_scene(), np.pad(np.ones((5, 5), bool), ((0, 115), (0, 175))))
    back = ImageRegions.from_dict(json.loads(json.dumps(r.to_dict())))
    for a, b in zip(r.all(), back.all(), strict=True):
        assert isinstance(b, Region)
        assert (a.mask == b.mask).all() and a.box == b.box and a.location == b.location
        assert a.area == b.area and a.kind == b.kind and a.name == b.name


def test_sam_path_missing_is_clear_error():
    with pytest.raises(BuildError, match="SAM model folder not found"):
        crop_regions(_scene(), config=CropConfig(sam_model="/nonexistent/sam"))


def test_class_textured_decision_and_defect_on_surface():
    from mfsc_builder.crop import class_is_textured

    yy, xx = np.mgrid[:96, :96]
    plaid = np.full((96, 96, 3), (215, 195, 150), np.uint8)
    plaid[((xx % 24) < 3) | ((yy % 24) < 3)] = (120, 75, 40)
    assert class_is_textured("my_cloth", [plaid, plaid])
    assert class_is_textured("carpet", [])
    assert not class_is_textured("toy", [_scene()])
    # a dark blob on the surface must not turn the surface into an "object"
    hole = plaid.copy()
    m = (xx - 48) ** 2 + (yy - 48) ** 2 < 15**2
    hole[m] = 0
    r = crop_regions(hole, m)
    assert r.textured and len(r.defects) == 1 and r.defects[0].location == "center"


def test_sam_components_with_tiny_random_sam(tmp_path):
    """The SAM path end to end with a tiny random SAM saved to a temporary folder (real loading path)."""
    import torch
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                                      num_pos_feats=8, mlp_dim=32),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8,
                                                     mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2,
                                                 iou_head_hidden_dim=16))
    torch.manual_seed(0)
    SamModel(cfg).save_pretrained(tmp_path)
    SamProcessor(image_processor=SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16})).save_pretrained(tmp_path)
    img = _scene()
    conf = CropConfig(sam_model=str(tmp_path), sam_points_per_side=6, sam_iou_thresh=0.0, sam_stability_thresh=0.0,
                      min_component=0.001)
    r = crop_regions(img, config=conf)
    assert 1 <= len(r.components) <= conf.max_components
    taken = np.zeros(img.shape[:2], int)
    for c in r.components:   # inside the foreground, disjoint, large enough
        assert (c.mask <= r.foreground.mask).all() and c.mask.sum() >= 0.001 * img.shape[0] * img.shape[1]
        taken += c.mask
    assert taken.max() <= 1


def _drawn(scale: int) -> tuple[np.ndarray, np.ndarray]:
    """A 300x200 scene drawn at `scale` times its size (same geometry), with a ground-truth defect."""
    s = scale
    img = np.full((200 * s, 300 * s, 3), 245, np.uint8)
    cv2.rectangle(img, (40 * s, 30 * s), (200 * s - 1, 90 * s - 1), (30, 60, 200), -1)   # blue bar, top
    cv2.circle(img, (240 * s, 150 * s), 30 * s, (210, 30, 30), -1)                       # red disc
    mask = np.zeros(img.shape[:2], bool)
    mask[50 * s: 60 * s, 100 * s: 130 * s] = True
    return img, mask


def test_large_image_is_cropped_at_work_size_with_geometry_in_original_pixels():
    """A 3000x2000 image is cropped on a 1024x683 copy: its boxes are in original pixels, within one working
    pixel of the drawn truth, and its areas, locations and orientations are those of the same scene drawn at
    300x200 (cropped at full size)."""
    small = crop_regions(*_drawn(1))
    big_img, big_mask = _drawn(10)
    big = crop_regions(big_img, big_mask)
    assert small.size == (300, 200) and big.size == (3000, 2000)
    assert big.foreground.mask.shape == (683, 1024) and small.foreground.mask.shape == (200, 300)
    for a, b in zip(small.all(), big.all(), strict=True):
        assert (a.kind, a.location, a.orientation) == (b.kind, b.location, b.orientation)
        assert b.area == pytest.approx(a.area, abs=0.005)
        assert np.abs(np.array(b.box) - 10 * np.array(a.box)).max() <= 15, (a.box, b.box)  # drawing rounding

    def truth(m: np.ndarray) -> tuple[int, int, int, int]:
        ys, xs = np.nonzero(m)
        return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1

    tol = 3000 / 1024 + 1  # one working pixel
    assert big.foreground.box == pytest.approx(truth(np.any(big_img != 245, axis=2)), abs=tol)
    assert big.components[0].box == pytest.approx(truth((big_img == (30, 60, 200)).all(axis=2)), abs=tol)
    assert big.components[1].box == pytest.approx(truth((big_img == (210, 30, 30)).all(axis=2)), abs=tol)
    assert big.defects[0].box == pytest.approx(truth(big_mask), abs=tol)
    assert big.components[0].crop(big_img).shape[:2] == pytest.approx((600, 1600), abs=2 * tol)


def test_working_copy_size_mask_coverage_and_setting():
    from mfsc_builder.crop import working_image, working_mask, working_size

    img = np.zeros((100, 150, 3), np.uint8)
    assert working_image(img, 150) is img                       # at the limit: the image itself
    assert working_size(4000, 30, 1024) == (1024, 8)          # a thin strip keeps 8 px to crop
    m = np.zeros((1000, 1000), bool)
    m[:500] = True
    m[900:902, 900:902] = True                                  # 4 px: under half of a 10x10 working pixel
    half = working_mask(m, (100, 100))
    assert half[:50].all() and not half[50:].any()
    tiny = np.zeros((1000, 1000), bool)
    tiny[900:902, 900:902] = True
    assert working_mask(tiny, (100, 100)).sum() == 1           # a lone tiny defect does not vanish
    with pytest.raises(BuildError, match="work_size"):
        CropConfig(work_size=10)


def test_a_thin_part_joins_through_a_defect():
    # a 4 px strip the colour's opening removed, cut by a defect into halves below min_px, together above it
    from mfsc_builder.crop import _thin_parts

    removed = np.zeros((60, 240), bool)
    removed[30:34, 20:220] = True
    defect = np.zeros((60, 240), bool)
    defect[24:40, 116:124] = True
    removed &= ~defect
    assert _thin_parts(removed, 500) == []
    parts = _thin_parts(removed, 500, bridge=defect)
    assert len(parts) == 1 and np.array_equal(parts[0], removed)
