"""Property tests (hypothesis): metric invariants against detector.eval.metrics, and the MLLP text contract of
mfsc_builder.fill (docs/CONTRACTS.md) on generated records. Small example counts keep the file in seconds."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detector.eval import metrics

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------ metrics
@st.composite
def scored_labels(draw, min_size: int = 2, max_size: int = 40):
    """Integer-valued scores (ties likely) and 0/1 labels with both classes present."""
    n = draw(st.integers(min_size, max_size))
    scores = draw(st.lists(st.integers(-20, 20), min_size=n, max_size=n))
    labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    labels[0], labels[1] = 0, 1  # both classes present, positions shuffled by the scores anyway
    return np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)


# strictly increasing maps that are exact on small integers (no two scores can merge by rounding)
MONOTONE = {
    "affine": lambda x: 3.0 * x + 7.0,
    "cube": lambda x: x**3,
    "exp": lambda x: np.exp(x / 4.0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x / 8.0)),
}


@FAST
@given(data=scored_labels(), name=st.sampled_from(sorted(MONOTONE)))
def test_image_metrics_invariant_to_strictly_monotone_transforms(data, name):
    s, y = data
    t = MONOTONE[name](s)
    assert len(np.unique(t)) == len(np.unique(s))  # the transform kept every tie and every distinct score
    a, b = metrics.image_metrics(s, y), metrics.image_metrics(t, y)
    for key in ("image_auroc", "image_ap", "image_f1_max"):
        assert a[key] == pytest.approx(b[key], abs=1e-12), key


@FAST
@given(data=scored_labels())
def test_image_metrics_match_scikit_learn(data):
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    s, y = data
    m = metrics.image_metrics(s, y)
    assert m["image_auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["image_ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    p, r, _ = precision_recall_curve(y, s)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    assert m["image_f1_max"] == pytest.approx(f1.max(), abs=1e-12)
    # reversing the ranking mirrors the AUROC; float32 and float16 inputs give the same numbers
    assert metrics.auroc(-s, y) == pytest.approx(1.0 - m["image_auroc"], abs=1e-12)
    assert metrics.auroc(s.astype(np.float32), y) == pytest.approx(m["image_auroc"], abs=1e-12)
    assert metrics.auroc(s.astype(np.float16), y) == pytest.approx(m["image_auroc"], abs=1e-12)
    for v in m.values():
        assert np.isfinite(v)
    for key in ("image_auroc", "image_ap", "image_f1_max"):
        assert 0.0 <= m[key] <= 1.0


@FAST
@given(n_neg=st.integers(1, 30), n_pos=st.integers(1, 30), seed=st.integers(0, 2**31 - 1),
       gap=st.floats(1e-6, 10.0))
def test_a_perfect_detector_scores_one(n_neg, n_pos, seed, gap):
    rng = np.random.default_rng(seed)
    neg = rng.random(n_neg)
    pos = neg.max() + gap + rng.random(n_pos)
    s = np.concatenate([neg, pos])
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    order = rng.permutation(s.size)
    m = metrics.image_metrics(s[order], y[order])
    # exact up to the trapezoid's float rounding (1/7 summed 7 times is 0.9999999999999999)
    for key in ("image_auroc", "image_ap", "image_f1_max"):
        assert m[key] == pytest.approx(1.0, abs=1e-12), key
    assert neg.max() < m["image_f1_threshold"] <= pos.min()


@st.composite
def maps_and_masks(draw):
    """(N, H, W) float32 maps with ties and masks with at least one defect and one normal pixel."""
    n, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 9)), draw(st.integers(2, 9))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, draw(st.integers(2, 50)), size=(n, h, w)).astype(np.float32) / 7.0
    masks = rng.random((n, h, w)) < draw(st.floats(0.05, 0.6))
    masks.flat[0], masks.flat[-1] = True, False
    return maps, masks


@FAST
@given(data=maps_and_masks())
def test_pixel_metrics_bounds_transpose_and_order(data):
    maps, masks = data
    m = metrics.pixel_metrics(maps, masks)
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    # transposing every image (8-connectivity is symmetric) and reordering the images change nothing
    mt = metrics.pixel_metrics(maps.transpose(0, 2, 1).copy(), masks.transpose(0, 2, 1).copy())
    perm = np.arange(maps.shape[0])[::-1]
    mp = metrics.pixel_metrics(maps[perm], masks[perm])
    for key in m:
        assert mt[key] == pytest.approx(m[key], abs=1e-9), key
        assert mp[key] == pytest.approx(m[key], abs=1e-9), key
    # pixel AUROC is the image AUROC of the flattened pixels
    assert m["pixel_auroc"] == pytest.approx(metrics.auroc(maps.ravel(), masks.ravel()), abs=1e-12)
    # a strictly monotone map of the scores keeps every pixel metric but the threshold
    m3 = metrics.pixel_metrics(np.exp(maps.astype(np.float64)), masks)
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"):
        assert m3[key] == pytest.approx(m[key], abs=1e-9), key


@FAST
@given(data=maps_and_masks())
def test_aupro_of_the_ground_truth_map_is_one(data):
    _, masks = data
    oracle = masks.astype(np.float32)
    assert metrics.aupro(oracle, masks) == pytest.approx(1.0, abs=1e-12)
    assert metrics.pixel_metrics(oracle, masks)["pixel_auroc"] == 1.0
    # the inverted oracle finds no region before every normal pixel fires
    assert metrics.aupro(1.0 - oracle, masks) == pytest.approx(0.0, abs=1e-12)


@FAST
@given(data=maps_and_masks(), bad=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_non_finite_scores_are_a_clear_error(data, bad):
    from detector.errors import DetectorError

    maps, masks = data
    maps = maps.copy()
    maps.flat[-1] = bad
    with pytest.raises(DetectorError, match="NaN or inf"):
        metrics.pixel_metrics(maps, masks)


# ----------------------------------------------------------------------------------------- template filling
NOUNS = ["bottle", "screw", "cap", "label", "pill", "capsule", "nut", "wire", "lid", "print", "object"]
COLOURS = ["red", "white", "black", "blue", "grey", "silver", "dark red", "brown", "green", "beige"]
LOCATIONS = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right"]
WORDS = ["a", "the", "with", "and", "of", "on", "small", "round", "shiny", "matte", "above", "below", "left of",
         "inside", "surface", "edge", "ring", "flat", "thin", "part", ",", ";", "metal", "plastic"]
DEFECTS = ["crack", "scratch", "hole", "stain", "missing part", "color spot", "bent lead", "faulty imprint"]

word = st.sampled_from(NOUNS + COLOURS + LOCATIONS + WORDS)


def sentence(min_words: int = 1, max_words: int = 40):
    return st.lists(word, min_size=min_words, max_size=max_words).map(lambda ws: " ".join(ws).replace(" ,", ","))


@st.composite
def fill_inputs(draw):
    from mfsc_builder.records import ComponentView, ForegroundView, ImageView

    obj = draw(st.sampled_from(["bottle", "metal nut", "pill", "printed circuit board", "zipper", "screw bag"]))
    names = draw(st.lists(st.sampled_from(NOUNS + ["metal ring", "red label", "top cap"]), min_size=0,
                          max_size=5, unique=True))
    comps = [ComponentView(name=n, count=draw(st.integers(1, 4)), location=draw(st.sampled_from(LOCATIONS)),
                           colour=draw(st.sampled_from(COLOURS)),
                           texture=draw(st.sampled_from(["smooth", "textured", "striped", "granular"])),
                           shape=draw(st.sampled_from(["circular", "rectangular", "elongated", "irregular"])),
                           direction="none", area=0.1,
                           sentence=draw(st.one_of(st.just(""), sentence(1, 60))))
             for n in names]
    bg = draw(st.sampled_from(["", "none", "white", "plain black", "dark grey", "wooden table", "blue cloth"]))
    iv = ImageView(obj, bg)
    fv = ForegroundView(sum(c.count for c in comps), draw(st.one_of(st.just(""), sentence(1, 30))))
    caption = draw(st.one_of(st.just(""), sentence(1, 90)))
    states = draw(st.lists(st.sampled_from(DEFECTS), min_size=0, max_size=4, unique=True))
    return obj, iv, fv, comps, caption, states


@FAST
@given(inputs=fill_inputs())
def test_filled_texts_keep_the_contract(inputs):
    """Every abnormal text differs from every normal text of its entry, nothing is empty, every text fits the
    77-token context with room for 5 learned tokens, one image and one background entry, one entry per
    component (group = its name), at most one entry per attribute level."""
    from mfsc_builder import fill

    obj, iv, fv, comps, caption, states = inputs
    texts = fill.detector_texts(obj, iv, fv, comps, caption, states)
    levels = [t.level for t in texts]
    assert levels.count("image") == 1 and levels.count("background") == 1
    for level in ("relation", "colour", "texture", "shape"):
        assert levels.count(level) <= 1
    assert [t.group for t in texts if t.level == "component"] == [c.name for c in comps]
    for t in texts:
        assert t.normal and t.abnormal, t
        for text in (*t.normal, *t.abnormal):
            assert text.strip() == text and text, t
            assert fill.token_length(text) <= 77 - 5, (t.level, text)
        assert not set(t.abnormal) & set(t.normal), t
    # the builder's count is what the text encoder sees: tokens of open_clip's own tokenizer, start/end included
    import open_clip

    tok = open_clip.get_tokenizer(fill.TOKENIZER_NAME)
    sample = [x for t in texts for x in (t.normal[0], t.abnormal[-1])]
    ids = tok(sample)
    assert ids.shape[1] == 77
    assert [int((row != 0).sum()) for row in ids] == [fill.token_length(x) for x in sample]


@settings(max_examples=15, deadline=None)
@given(inputs=fill_inputs(), n_refs=st.integers(1, 3))
def test_class_record_from_generated_references(inputs, n_refs):
    """The merged class record keeps the same contract and lists its references in order."""
    from mfsc_builder import fill
    from mfsc_builder.records import DefectView, ImageRecord, Provenance

    obj, iv, fv, comps, caption, states = inputs
    refs = [ImageRecord(id=f"c/train/good/{i:03d}", class_name="c", object_name=obj, split="train", label=0,
                        defect_type="good", file_name=f"train/good/{i:03d}.png", image_path=f"/x/{i}.png",
                        mask_path=None, width=8, height=8, is_reference=True, image_view=iv,
                        foreground_view=fv, components=list(comps), caption=caption, regions=[],
                        defect=DefectView(), provenance=Provenance())
            for i in range(n_refs)]
    rec = fill.class_record("c", obj, refs, defect_states=states or ["crack"], defect_vocab="generic",
                            source_layout="mvtec", reference_selection="k=1 seed=0")
    assert rec.reference_images == [r.file_name for r in refs]
    assert [t.group for t in rec.texts if t.level == "component"] == [c.name for c in rec.components]
    for t in rec.texts:
        assert t.normal and t.abnormal and not set(t.abnormal) & set(t.normal)
        assert all(t and fill.token_length(x) <= 72 for x in (*t.normal, *t.abnormal))
