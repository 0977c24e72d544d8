"""Named defects: regions, component vote, location, state, sentence and naming accuracy on constructed
features whose right answer is known; the model's hooks on a tiny CLIP."""
import numpy as np
import pytest
from detector_fixtures import make_image

from detector.errors import DetectorError
from detector.eval.defects import (
    NamingConfig,
    TokenEvidence,
    naming_rows,
    naming_summary,
    normalise_state,
    state_bank,
    state_of_text,
    token_evidence,
    truth_component,
)
from detector.eval.defects import name_regions as _name

E = np.eye(6, dtype=np.float32)
NAMES = ["image", "background", "cap", "leg"]
STATES = ["scratch", "hole", "missing part"]
TEXTS = {  # (normal, abnormal, abnormal features): each state's text along its own axis
    "image": (["a photo of a widget"], ["a widget with a scratch", "a widget with a hole"], E[[0, 1]]),
    "background": (["a white background"], ["a white background with a hole"], E[[1]]),
    "cap": (["a round cap at the top"],
            ["a round cap with a scratch, at the top", "a round cap with a hole, at the top",
             "a round cap at the bottom"], E[[0, 1, 5]]),
    "leg": (["a thin leg"], ["a thin leg with a missing part", "a thin leg with a scratch"], E[[2, 0]]),
}


def _bank():
    return state_bank(NAMES, TEXTS, STATES)


def test_state_of_text_longest_whole_words_and_not_in_normal_texts():
    assert state_of_text("a cap with a missing part", ["a cap"], ["part", "missing part"]) == "missing part"
    assert state_of_text("a hole plate with a scratch", ["a hole plate"], STATES) == "scratch"  # hole is normal
    assert state_of_text("a round cap at the bottom", ["a round cap at the top"], STATES) is None
    assert state_of_text("a cap with scratches", ["a cap"], ["scratch"]) is None  # whole words only
    assert normalise_state("color_spot") == normalise_state("A color-spot") == "color spot"


def test_state_bank_groups_texts_by_state():
    bank = _bank()
    assert bank.states == [["scratch", "hole"], ["hole"], ["scratch", "hole"], ["missing part", "scratch"]]
    assert bank.offsets == [0, 2, 3, 5, 7]
    assert np.allclose(bank.prototypes[bank.rows(3)], E[[2, 0]])  # the location-swap text names no state
    with pytest.raises(DetectorError):
        state_bank(["cap"], {"cap": (["n"], ["a", "b"], E[:1])}, STATES)


def _scene():
    """A 32 x 32 map on a 4 x 4 token grid (8 px cells): tokens of row 3 are "cap" with scratch features,
    column 3 of rows 0-1 are "leg" with missing-part features, everything else "image"."""
    groups = np.zeros((4, 4), int)
    feats = np.tile(E[3], (4, 4, 1))  # a neutral direction: no state
    groups[3, :] = 2
    feats[3, :] = E[0]
    groups[0:2, 3] = 3
    feats[0:2, 3] = E[2]
    amap = np.full((32, 32), 0.1, np.float32)
    amap[26:32, 2:12] = 0.9  # on the cap tokens, bottom left
    amap[3:13, 26:30] = 0.7  # on the leg tokens, top right
    amap[14, 14] = 0.95  # one pixel: below min_area
    return amap, groups, feats


def test_regions_are_named_with_component_location_state_and_sentence():
    amap, groups, feats = _scene()
    bank = _bank()
    ev = token_evidence(feats, groups, bank)
    defects, labels = _name(amap, ev, bank, NamingConfig(threshold=0.5, min_area=0.01), image_size=(64, 128),
                            object_name="widget", tau=100.0)
    assert [d.component for d in defects] == ["leg", "cap"]  # label order: top to bottom scan
    leg, cap = defects
    assert cap.state == "scratch" and cap.location == "bottom left" and cap.vote_share == pytest.approx(1.0)
    assert cap.box == [8, 52, 48, 64]  # columns 2..11 x 4, rows 26..31 x 2 in a 64 x 128 original
    assert cap.area == pytest.approx(60 / 1024) and cap.peak == pytest.approx(0.9) and cap.mean == pytest.approx(0.9)
    assert cap.state_margin > 0.99 and cap.candidates[0][0] == "scratch"
    assert cap.sentence == "scratch on the cap, bottom left, 5.9% of the image, score 0.90"
    assert leg.state == "missing part" and leg.location == "top right"
    assert labels.max() == 2 and int((labels == 2).sum()) == 60 and labels[14, 14] == 0
    assert set(cap.to_dict()) >= {"box", "area", "peak", "mean", "component", "vote_share", "location", "state",
                                  "state_margin", "sentence"} and "mask" not in cap.to_dict()


def test_vote_is_score_weighted_and_image_group_reads_object():
    bank = _bank()
    groups = np.zeros((2, 2), int)
    groups[0, 0], groups[0, 1] = 2, 3  # left token cap, right token leg
    feats = np.tile(E[3], (2, 2, 1))
    amap = np.zeros((8, 8), np.float32)
    amap[0:4, 2:4] = 0.6  # 8 pixels on the cap token
    amap[0:4, 4:6] = 0.9  # 8 pixels on the leg token: more weight, same count
    (d,), _ = _name(amap, token_evidence(feats, groups, bank), bank, NamingConfig(0.5, 0.0), tau=100.0)
    assert d.component == "leg" and d.vote_share == pytest.approx(0.9 / 1.5)
    assert d.state == "unknown" and d.sentence.startswith("unknown defect on the leg")  # neutral tokens
    amap[:] = 0.0
    amap[6:8, 0:2] = 0.8  # on an "image" token
    (d,), _ = _name(amap, token_evidence(feats, groups, bank), bank, NamingConfig(0.5, 0.0), object_name="widget")
    assert d.component == "object" and d.group == "image" and " on the widget, bottom left," in d.sentence


def test_ambiguous_state_is_unknown_and_margin_threshold_applies():
    bank = _bank()
    groups = np.full((1, 1), 2)
    amap = np.full((4, 4), 0.8, np.float32)
    mixed = np.array([[(E[0] + E[1]) / np.sqrt(2)]])  # as close to scratch as to hole
    (d,), _ = _name(amap, token_evidence(mixed, groups, bank), bank, NamingConfig(0.5), tau=100.0)
    assert d.state == "unknown" and d.state_margin < 1e-3
    lean = np.array([[(0.75 * E[0] + 0.66 * E[1])]])
    lean /= np.linalg.norm(lean)
    (d,), _ = _name(amap, token_evidence(lean, groups, bank), bank, NamingConfig(0.5, min_margin=0.0), tau=100.0)
    assert d.state == "scratch" and 0 < d.state_margin < 1
    (d,), _ = _name(amap, token_evidence(lean, groups, bank), bank, NamingConfig(0.5, min_margin=0.9999), tau=100.0)
    assert d.state == "unknown"


def test_no_region_above_the_threshold_and_config_errors():
    bank = _bank()
    ev = TokenEvidence(np.zeros((2, 2), np.int16), np.zeros((2, 2, bank.prototypes.shape[0]), np.float16))
    defects, labels = _name(np.zeros((8, 8), np.float32), ev, bank, NamingConfig(0.5))
    assert defects == [] and not labels.any()
    for bad in ({"threshold": float("nan")}, {"threshold": 0.5, "min_area": 1.5}, {"threshold": 0.5, "min_margin": -1}):
        with pytest.raises(DetectorError):
            NamingConfig(**bad)


CAPTION_REGIONS = [
    {"kind": "foreground", "name": "widget", "box": [0, 0, 100, 60], "area": 0.5},
    {"kind": "background", "name": "background", "box": [0, 0, 200, 100], "area": 0.5},
    {"kind": "component", "name": "body", "box": [0, 0, 100, 60], "area": 0.3},
    {"kind": "component", "name": "cap", "box": [40, 0, 80, 20], "area": 0.04},
    {"kind": "component", "name": "leg", "box": [0, 40, 40, 60], "area": 0.04},
]


def test_truth_component_most_overlap_smaller_on_ties_then_object_or_background():
    def region(x0, y0, x1, y1):  # in original pixels of a 200 x 100 image, map at 50 x 100 (half size)
        m = np.zeros((50, 100), bool)
        m[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] = True
        return m

    size = (100, 200)
    assert truth_component(region(50, 4, 60, 10), CAPTION_REGIONS, size) == "cap"  # inside body and cap: smaller
    assert truth_component(region(30, 30, 50, 50), CAPTION_REGIONS, size) == "body"  # more of it in body than leg
    assert truth_component(region(150, 70, 160, 80), CAPTION_REGIONS, size) == "background"
    assert truth_component(region(50, 4, 60, 10), CAPTION_REGIONS, size, known=["body", "leg"]) == "body"
    assert truth_component(region(50, 4, 60, 10), CAPTION_REGIONS, size, known=[]) == "object"


def test_naming_rows_matched_missed_and_state_accuracy():
    from detector.eval.defects import Defect

    gt = np.zeros((50, 100), bool)
    gt[2:5, 25:30] = True  # on the cap
    gt[40:45, 80:90] = True  # on the background, not detected
    labels = np.zeros((50, 100), np.int32)
    labels[1:6, 24:29] = 1
    labels[20:22, 10:12] = 2  # a false alarm elsewhere
    d1 = Defect(1, [0, 0, 1, 1], 0.01, 0.9, 0.8, "cap", "cap", 1.0, "top", "color spot", 0.9, 0.8, [], "s")
    d2 = Defect(2, [0, 0, 1, 1], 0.01, 0.9, 0.8, "leg", "leg", 1.0, "top", "hole", 0.9, 0.8, [], "s")
    rows = naming_rows(gt, [d1, d2], labels, CAPTION_REGIONS, (100, 200), "color_spot")
    assert [(r["truth"], r["named"], r["correct"], r["state_correct"]) for r in rows] == [
        ("cap", "cap", True, True), ("background", None, False, False)]
    s = naming_summary(rows, states_from_dataset=True)
    assert s["naming_accuracy"] == 0.5 and s["state_accuracy"] == 0.5 and s["n_missed_regions"] == 1
    assert np.isnan(naming_summary(rows, states_from_dataset=False)["state_accuracy"])
    assert np.isnan(naming_summary([], True)["naming_accuracy"])


# ---- the model's hooks on a tiny CLIP --------------------------------------------------------------
RECORD = {
    "class_name": "widget", "object_name": "widget", "defect_states": ["scratch", "hole"],
    "texts": [
        {"level": "image", "group": "image", "normal": ["a photo of a grey widget"],
         "abnormal": ["a photo of a grey widget with a scratch", "a photo of a grey widget with a hole"]},
        {"level": "background", "group": "background", "normal": ["white background"],
         "abnormal": ["white background with a hole"]},
        {"level": "component", "group": "cap", "normal": ["a round cap on the top"],
         "abnormal": ["a round cap with a scratch on the top", "a round cap with a hole on the top",
                      "a round cap on the bottom"]},
    ],
}


@pytest.fixture(scope="module")
def trained(tiny_clip_name):
    from detector.config import TrainConfig
    from detector.run.train import train_model

    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=2, image_epochs=1,
                      shots=1, component_texts="all")  # the naming machinery on the trained rows themselves
    return train_model(cfg, progress=False, shot_images=[make_image()], shot_names=["good/000.png"], record=RECORD)


def test_naming_keeps_every_state_when_training_drew_one_component_text(tiny_clip_name):
    """The paper recipe trains ONE drawn abnormal text per component (the public count); naming still compares a
    region with every state of the record, through the same trained vectors: the drawn text's feature is the
    trained prompt's own row, the others are encoded with the same context."""
    import torch

    from detector.config import TrainConfig
    from detector.run.train import train_model

    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=2, image_epochs=1,
                      shots=1, seed=1)
    model = train_model(cfg, progress=False, shot_images=[make_image()], shot_names=["good/000.png"], record=RECORD)
    cap = model.pixel_prompts.groups[2]
    assert cap.name == "cap" and len(cap.abnormal) == 1  # trained on one drawn text
    before = torch.random.get_rng_state()
    _normal, abnormal, feats = model.abnormal_text_features()["cap"]
    assert torch.equal(torch.random.get_rng_state(), before)  # naming draws nothing from the caller's RNG
    assert abnormal == RECORD["texts"][2]["abnormal"] and feats.shape[0] == len(abnormal) == 3
    drawn = abnormal.index(cap.abnormal[0])
    trained_row = torch.nn.functional.normalize(model.pixel_prompts().handcrafted[2][0], dim=-1).numpy()
    assert np.allclose(feats[drawn], trained_row, atol=1e-5)


def test_model_exposes_groups_tokens_and_abnormal_texts(trained):
    import torch

    texts = trained.abnormal_text_features()
    assert list(texts) == trained.pixel_names == ["image", "background", "cap"]
    normal, abnormal, feats = texts["cap"]
    assert normal == ["a round cap on the top"] and abnormal == RECORD["texts"][2]["abnormal"] and feats.shape[0] == 3
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-5)
    hand = trained.pixel_prompts().handcrafted[2]  # n_pro = 1: one row per text
    assert np.allclose(feats, torch.nn.functional.normalize(hand, dim=-1).numpy(), atol=1e-5)
    images = [make_image(), make_image((40, 8, 16))]
    plain = trained.predict(images, resolution=32)
    pred = trained.predict(images, resolution=32, tokens=True)
    assert np.array_equal(plain.maps, pred.maps) and plain.tokens is None
    b, h, w, d = pred.tokens.shape
    assert (b, h, w) == pred.token_groups.shape and np.allclose(np.linalg.norm(pred.tokens, axis=-1), 1, atol=1e-5)
    # the groups are the model's own matching of those tokens
    again = trained.match_groups(torch.from_numpy(pred.tokens.reshape(b, h * w, d))).reshape(b, h, w).numpy()
    assert np.array_equal(again, pred.token_groups)


def test_postprocess_names_what_the_evidence_says(trained):
    from detector.eval.defects import model_state_bank, pixel_tokens
    from detector.eval.postprocess import Decisions, namer_for, postprocess, run_model

    bank = model_state_bank(trained)
    assert bank.states == [["scratch", "hole"], ["hole"], ["scratch", "hole"]]
    img = make_image((40, 8, 16))
    post = Decisions(pixel=0.0, namer=namer_for(trained, 0.0, min_area=0.0))
    pred = run_model(trained, [img], post, resolution=32, branch="fused", batch_size=8)
    (result,) = postprocess(pred, [img], post)
    (d,) = result.defects  # threshold 0: the whole map (resized to the image's 64 x 64) is one region
    assert d.box == [0, 0, 64, 64] and d.area == 1.0 and result.labels.shape == (64, 64)
    # the component is the score-weighted vote of the model's own token groups
    tok = pixel_tokens((64, 64), pred.token_groups.shape[1:]).ravel()
    w = np.bincount(tok, weights=result.map.ravel().astype(np.float64), minlength=tok.max() + 1)
    votes = np.bincount(pred.token_groups[0].ravel(), weights=w, minlength=3)
    assert d.group == trained.pixel_names[int(votes.argmax())]
    assert d.vote_share == pytest.approx(votes.max() / votes.sum())


def test_flag_threshold_is_the_highest_threshold_with_a_region():
    from detector.eval.defects import flag_threshold

    bank = _bank()
    rng = np.random.default_rng(0)
    ev = TokenEvidence(np.zeros((4, 4), np.int16), np.zeros((4, 4, bank.prototypes.shape[0]), np.float16))
    for min_area in (0.0, 0.01, 0.05):
        amap = rng.random((24, 24)).astype(np.float32)
        amap[2:8, 2:8] += 0.5  # a blob so regions above min_area exist
        t = flag_threshold(amap, min_area)
        above = np.unique(amap)[np.unique(amap) > t]
        assert _name(amap, ev, bank, NamingConfig(t, min_area))[0]  # flagged at t
        if min_area == 0.0:
            assert t == amap.max() and above.size == 0  # any pixel is a region
        else:
            assert not _name(amap, ev, bank, NamingConfig(float(above[0]), min_area))[0]  # not just above it
    assert flag_threshold(np.full((4, 4), 0.3, np.float32), 0.5) == pytest.approx(0.3)


def test_collector_names_at_a_later_threshold_and_scores_against_caption_regions():
    """Evaluation keeps small maps and token evidence, then names at the threshold picked afterwards."""
    from detector.eval.defects import NamingCollector

    bank = _bank()
    amap, groups, feats = _scene()
    big = np.kron(amap, np.ones((8, 8), np.float32))  # 256 x 256: kept at 128
    gt = np.zeros((256, 256), bool)
    gt[26 * 8 : 32 * 8, 2 * 8 : 12 * 8] = True  # the cap blob: bottom left
    gt[3 * 8 : 13 * 8, 26 * 8 : 30 * 8] = True  # the leg blob: top right
    regions = [{"kind": "foreground", "name": "widget", "box": [0, 0, 256, 256], "area": 1.0},
               {"kind": "component", "name": "cap", "box": [0, 180, 128, 256], "area": 0.1},
               {"kind": "component", "name": "body", "box": [150, 0, 256, 128], "area": 0.1}]  # not a model group
    col = NamingCollector(bank)
    col.add(0, big, feats, groups, gt, (256, 256))
    col.add(1, np.zeros((256, 256), np.float32), feats, groups, np.zeros((256, 256), bool), (256, 256))
    assert col.maps()[0].shape == (128, 128)
    res = col.finish(NamingConfig(0.5, 0.01), object_name="widget", defect_types=["scratch", "good"],
                     caption_regions={0: regions, 1: regions}, states_from_dataset=True)
    assert [d.component for d in res.defects[0]] == ["leg", "cap"] and res.defects[1] == []
    assert res.defects[0][1].box == [16, 208, 96, 256]  # in the 256 px original
    assert res.flags[0] == pytest.approx(0.9) and res.flags[1] == 0.0  # a flat map is one region at its value
    # leg blob: the only model component covering it is none ("body" is unknown to the model) -> "object"
    assert [(r["truth"], r["named"]) for r in res.rows] == [("object", "leg"), ("cap", "cap")]
    assert res.summary["naming_accuracy"] == 0.5 and res.summary["state_accuracy"] == 0.5  # scratch on the cap
    res = col.finish(NamingConfig(0.95, 0.01), caption_regions=None)
    assert res.defects[0] == [] and np.isnan(res.summary["naming_accuracy"])


def test_cli_shows_the_naming_defaults_of_this_module():
    """The CLI's flags default to None (resolved here); their shown defaults must be this module's values."""
    import typing

    from detector import cli
    from detector.eval import defects

    for alias, value in ((cli.MinAreaOpt, defects.DEFAULT_MIN_AREA), (cli.MinMarginOpt, defects.DEFAULT_MIN_MARGIN)):
        info = typing.get_args(alias)[1]
        assert float(info.show_default) == value
