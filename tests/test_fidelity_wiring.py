"""Training wires every method option of the recipe into the computation (not only into the record)."""
import math

import pytest
from detector_fixtures import RECORD, make_image

from detector.method import losses, regions
from detector.recipes import build_train_config
from detector.run.train import train_model

SHOTS = [make_image(), make_image((20, 20, 12))]
IMAGE_TEXTS = {"level": "image", "group": "image", "normal": ["a photo of a grey widget", "a flawless widget"],
               "abnormal": ["a photo of a grey widget with a crack", "a cracked widget"]}
CAP_TEXTS = {"level": "component", "group": "cap", "normal": ["a round cap on the top"],  # one text per state
             "abnormal": ["a round cap with a crack on the bottom", "a round cap with a dent on the left",
                          "a round cap with a scratch on the right"]}
WIDGET = {**RECORD, "defect_states": ["crack"],
          "texts": [IMAGE_TEXTS, *(CAP_TEXTS if e["group"] == "cap" else e for e in RECORD["texts"][1:])]}
NAMES = ["good/000.png", "good/001.png"]


@pytest.mark.parametrize("recipe", ["paper", "ours"])
def test_recipe_options_reach_losses_regions_prompts_backbone_and_model(tiny_clip_name, monkeypatch, recipe):
    cfg = build_train_config(recipe, None, class_name="widget", backbone=tiny_clip_name, pretrained="none",
                             epochs=1, image_epochs=1, shots=2)
    seen: dict = {}
    real_pixel, real_image, real_regions = losses.mlsa_loss, losses.image_loss, regions.region_weights

    def pixel(*a, **k):
        seen["pixel"] = (a[4:], k)
        return real_pixel(*a, **k)

    def image(*a, **k):
        seen["image"] = (a[3:], k)
        return real_image(*a, **k)

    def region(*a, **k):
        seen["regions"] = a[4]
        return real_regions(*a, **k)

    monkeypatch.setattr(losses, "mlsa_loss", pixel)
    monkeypatch.setattr(losses, "image_loss", image)
    import detector.method.fit as fit_module

    monkeypatch.setattr(fit_module, "region_weights", region)  # fit imports it by name
    monkeypatch.setattr(regions, "region_weights", region)
    m = train_model(cfg, progress=False, shot_images=SHOTS, shot_names=NAMES, record=WIDGET)
    p_args, p_kw = seen["pixel"]
    assert (p_args[0], p_args[1]) == (cfg.lambda1, cfg.lambda_comp)
    assert p_kw == {"weighting": cfg.region_weighting, "triplet_distance": cfg.triplet_distance,
                    "composition_form": cfg.composition}
    i_args, i_kw = seen["image"]
    assert (i_args[0], i_args[1]) == (cfg.lambda1, cfg.image_lambda_comp)
    assert i_kw == {"groups": cfg.image_groups, "triplet_distance": cfg.triplet_distance,
                    "composition_form": cfg.composition}
    rc = seen["regions"]
    assert (rc.assign, rc.scale_distance, rc.match, rc.knn) == (
        cfg.region_assign, cfg.region_scale_distance, cfg.region_match, cfg.region_knn)
    for prompts in (m.pixel_prompts, m.image_prompts):
        c = prompts.config
        assert (c.gate_mode, c.prototype, c.period) == (cfg.gate_mode, cfg.prototype, cfg.period)
    image_group = m.pixel_prompts.groups[0]  # extra_texts: the caption only (paper) or every sentence (ours)
    n = 2 if cfg.extra_texts else 1
    assert (len(image_group.normal), len(image_group.abnormal)) == (n, n)
    for prompts in (m.pixel_prompts, m.image_prompts):  # component_texts: one seeded draw (paper) or all (ours)
        cap = next(g for g in prompts.groups if g.name == "cap")
        assert len(cap.abnormal) == (1 if recipe == "paper" else 3) and set(cap.abnormal) <= set(CAP_TEXTS["abnormal"])
    depth = m.backbone.depth
    assert m.backbone.vv_blocks == (depth if recipe == "paper" else depth // 2)
    stored = math.log(1 / 0.07)  # open_clip's init of logit_scale (random weights)
    assert m.tau == pytest.approx(stored if recipe == "paper" else math.exp(stored), rel=1e-5)
    assert (m.image_score_group, m.image_visual_max) == (cfg.image_score_group, cfg.image_visual_max)
    assert m.meta["method"]["recipe"] == recipe and m.meta["backbone"]["vv_blocks"] == m.backbone.vv_blocks
