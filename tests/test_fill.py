"""MFSC stage 3: image and class records, defect vocabularies and the detector texts' contract."""
import json

import cv2
import numpy as np
import pytest

from fsad_data import Sample
from mfsc_builder.captioners import CaptionRequest, make_captioner
from mfsc_builder.crop import crop_regions
from mfsc_builder.errors import BuildError
from mfsc_builder.fill import (
    GENERIC_DEFECTS,
    MAX_TOKENS,
    class_record,
    defect_vocab_label,
    defect_vocabulary,
    detector_texts,
    fit_tokens,
    image_record,
    swap_locations,
    token_length,
    with_state,
)
from mfsc_builder.records import TEXT_LEVELS, ComponentView, ForegroundView, ImageView


def _sample(i, label=0, defect="good", mask=None):
    split = "train" if label == 0 and i < 10 else "test"
    return Sample(id=f"toy/{split}/{defect}/{i:03d}", class_name="toy", split=split, label=label,
                  defect_type=defect, image_path=f"/data/toy/{split}/{defect}/{i:03d}.png", mask_path=mask,
                  file_name=f"{split}/{defect}/{i:03d}.png")


def _scene(shift=0):
    img = np.full((120, 180, 3), 250, np.uint8)
    cv2.rectangle(img, (60 + shift, 45), (120 + shift, 110), (40, 90, 200), -1)
    cv2.circle(img, (30 + shift, 20), 12, (210, 30, 30), -1)
    return img


def _record(i, shift=0, defect_mask=None, label=0, defect="good"):
    img = _scene(shift)
    if defect_mask is not None:
        img[defect_mask] = (10, 10, 10)
    regs = crop_regions(img, defect_mask)
    res = make_captioner("attributes").caption([CaptionRequest(str(i), "toy", img, regs, label == 1, defect)])[0]
    rec = image_record(_sample(i, label, defect, "/m.png" if label else None), regs, res, object_name="toy",
                       is_reference=label == 0)
    return rec


def test_image_record_regions_and_defect():
    m = np.zeros((120, 180), bool)
    m[60:70, 80:90] = True
    rec = _record(20, defect_mask=m, label=1, defect="color_spot")
    kinds = [r.kind for r in rec.regions]
    assert kinds == ["foreground", "background", "component", "component", "defect"]
    assert {r.name for r in rec.regions if r.kind == "component"} == {"toy body", "red round part"}
    assert rec.defect.type == "color spot" and rec.defect.location == "center"
    assert (rec.width, rec.height, rec.label, rec.split) == (180, 120, 1, "test")
    assert rec.regions[-1].box == [80, 60, 90, 70]
    normal = _record(0)
    assert normal.defect.type == "" and normal.defect.sentence == "" and normal.is_reference


def _check_texts(texts, n_components):
    levels = [t.level for t in texts]
    assert levels.count("image") == 1 and levels.count("background") == 1
    assert levels.count("component") == n_components
    assert all(levels.count(lv) <= 1 for lv in ("relation", "colour", "texture", "shape"))
    assert set(levels) <= set(TEXT_LEVELS)
    for t in texts:
        assert t.normal and t.abnormal
        for a in t.abnormal:
            assert a and a not in t.normal
        for x in t.normal + t.abnormal:
            assert x.strip() and token_length(x) <= MAX_TOKENS


def test_class_record_merges_references_and_texts_follow_contract():
    refs = [_record(0), _record(1, shift=3), _record(2, shift=-3)]
    cr = class_record("toy", "toy", refs, defect_states=["color_spot", "scratch"], defect_vocab="dataset",
                      source_layout="mvtec", reference_selection="k=3 seed=0")
    assert cr.reference_images == ["train/good/000.png", "train/good/001.png", "train/good/002.png"]
    assert [c.name for c in cr.components] == ["toy body", "red round part"]
    assert cr.components[0].colour == "blue" and cr.components[1].location == "top left"
    assert cr.foreground_view.count == 2 and cr.image_view.background == "plain white"
    assert cr.defect_states == ["color spot", "scratch"]
    _check_texts(cr.texts, 2)
    groups = [t.group for t in cr.texts if t.level == "component"]
    assert groups == [c.name for c in cr.components]
    img = next(t for t in cr.texts if t.level == "image")
    assert any("toy with a color spot" in a for a in img.abnormal)
    body = next(t for t in cr.texts if t.group == "toy body")
    assert "a smooth blue rectangular toy body at the center" in body.normal
    assert "a smooth blue rectangular toy body at the top left" in body.abnormal   # location swap
    assert any("purple" in a or "green" in a for a in body.abnormal)              # colour the class lacks
    colour = next(t for t in cr.texts if t.level == "colour")
    assert colour.normal == ["a toy in blue and red"]
    assert all("blue and red" not in a and ("blue, red and" in a) for a in colour.abnormal)


def test_majority_merge_drops_rare_components():
    a, b, c = _record(0), _record(1), _record(2)
    c.components.append(ComponentView("odd part", 1, "top", "green", "smooth", "irregular", "none", 0.01, "x"))
    cr = class_record("toy", "toy", [a, b, c], defect_states=["crack"], defect_vocab="generic",
                      source_layout="mvtec", reference_selection="k=3 seed=0")
    assert "odd part" not in [x.name for x in cr.components]
    with pytest.raises(BuildError, match="no reference"):
        class_record("toy", "toy", [], defect_states=[], defect_vocab="generic", source_layout="mvtec",
                     reference_selection="")


def test_replacements():
    assert with_state("a red cap on a bottle", "bottle", "crack") == "a red cap on a bottle with a crack"
    assert with_state("a red cap", "bottle", "crack") == "a bottle with a crack: a red cap"
    # a modifier after the noun is set off by a comma; a verb or a clause end is not
    assert with_state("a bottle made of glass", "bottle", "contamination") == \
        "a bottle with contamination, made of glass"
    assert with_state("a round part at the top", "part", "a hole") == "a round part with a hole, at the top"
    assert with_state("a bottle stands; a cap", "bottle", "dent") == "a bottle with a dent stands; a cap"
    assert swap_locations("a cap at the top left and a ring at the center") == \
        "a cap at the bottom right and a ring at the top left"
    long = "a bottle, " + ", ".join(f"part number {i} in red" for i in range(40))
    short = fit_tokens(long)
    assert token_length(short) <= MAX_TOKENS and short.startswith("a bottle")


def test_texts_of_textured_class_and_long_texts():
    comps = [ComponentView("carpet surface", 1, "center", "beige", "granular", "rectangular", "none", 1.0,
                           "a granular beige rectangular carpet surface filling the image " * 8)]
    texts = detector_texts("carpet", ImageView("carpet", "none"), ForegroundView(1, "one continuous surface"),
                           comps, "a carpet surface " * 30, ["hole", "cut"])
    _check_texts(texts, 1)
    bg = next(t for t in texts if t.level == "background")
    assert bg.normal == ["no background, the carpet fills the whole image"]


def test_defect_vocabulary(tmp_path):
    samples = [_sample(0), _sample(20, 1, "color_spot"), _sample(21, 1, "broken_large"), _sample(22, 1, "color_spot")]
    assert defect_vocabulary("dataset", samples, "toy") == ["broken large", "color spot"]
    assert defect_vocabulary("generic", samples, "toy") == list(GENERIC_DEFECTS)
    with pytest.raises(BuildError, match="no anomalous"):
        defect_vocabulary("dataset", samples[:1], "toy")
    txt = tmp_path / "states.txt"
    txt.write_text("# my states\nbent_lead\n\ncut  # comment\nbent_lead\n")
    assert defect_vocabulary(str(txt), [], "toy") == ["bent lead", "cut"]
    js = tmp_path / "states.json"
    js.write_text(json.dumps({"toy": ["dent"], "*": ["crack"]}))
    assert defect_vocabulary(f"file:{js}", [], "toy") == ["dent"]
    assert defect_vocabulary(str(js), [], "other") == ["crack"]
    assert defect_vocab_label(str(js)) == "file:states.json" and defect_vocab_label("dataset") == "dataset"
    with pytest.raises(BuildError, match="neither"):
        defect_vocabulary("/no/such/file.txt", [], "toy")


def test_text_contract_holds_for_any_fields():
    """Property: whatever the level fields, the texts keep the contract (hypothesis, few examples)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from mfsc_builder.crop import LOCATION_WORDS

    words = st.sampled_from(["red", "blue", "smooth", "striped", "part", "cap", "ring", "body", "thin", "x"])
    locs = st.sampled_from([w for row in LOCATION_WORDS for w in row])
    comp = st.builds(
        lambda name, loc, col, tex, shp, extra: ComponentView(
            name, 1, loc, col, tex, shp, "none", 0.1, f"a {tex} {col} {shp} {name} at the {loc} {extra}"),
        st.lists(words, min_size=1, max_size=3).map(" ".join), locs,
        st.sampled_from(["red", "blue", "white", "grey"]), st.sampled_from(["smooth", "striped", "granular"]),
        st.sampled_from(["circular", "rectangular", "irregular"]), st.lists(words, max_size=40).map(" ".join))

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(comp, min_size=1, max_size=4, unique_by=lambda c: c.name),
           st.sampled_from(["plain white", "none", "textured black"]),
           st.lists(st.sampled_from(["crack", "hole", "bent lead", "missing part"]), max_size=3, unique=True),
           st.lists(words, max_size=60).map(" ".join))
    def check(comps, bg, states, caption):
        texts = detector_texts("widget", ImageView("widget", bg), ForegroundView(len(comps), "parts side by side"),
                               comps, caption, states)
        _check_texts(texts, len(comps))

    check()


def test_english_articles_for_states_and_nouns():
    from mfsc_builder.english import a, bare, state_phrase

    assert [state_phrase(s) for s in ("crack", "scratch", "missing part", "indentation", "contamination",
                                      "metal contamination", "scratches", "squeezed teeth", "an oil spot")] == \
        ["a crack", "a scratch", "a missing part", "an indentation", "contamination", "metal contamination",
         "scratches", "squeezed teeth", "an oil spot"]
    # data set folder names that are adjectives get a head noun
    assert [state_phrase(s) for s in ("bent", "misplaced", "broken large", "color")] == \
        ["a bent part", "a misplaced part", "a broken large part", "a color defect"]
    assert [a(n) for n in ("hex nut", "eraser", "audio jack", "USB plug", "U block", "fabric", "capsules",
                           "flawless fabric", "chewing gum")] == \
        ["a hex nut", "an eraser", "an audio jack", "a USB plug", "a U block", "fabric", "capsules",
         "flawless fabric", "chewing gum"]
    assert bare("A scratch") == "scratch" and bare("the dent") == "dent" and bare("another") == "another"
    # the head of a background text is "background", whatever the background is made of
    bg = detector_texts("cap", ImageView("cap", "black fabric"), ForegroundView(1, ""), [], "a cap", ["dent"])
    assert next(t for t in bg if t.level == "background").normal == ["a black fabric background"]


def _synthetic_class(demo_root, cls, states):
    """The class record of a synthetic class from its first normal image, as the build makes it."""
    from fsad_data import load_rgb, read_dataset, select_shots
    from mfsc_builder.crop import CropConfig, class_is_textured

    samples = read_dataset(demo_root, classes=[cls])
    ref = select_shots(samples, cls, 1, 0)[0]
    img = load_rgb(ref.image_path)
    regs = crop_regions(img, None, CropConfig(textured=class_is_textured(cls, [img])))
    obj = cls.replace("_", " ")
    res = make_captioner("attributes").caption([CaptionRequest(ref.id, obj, img, regs)])[0]
    rec = image_record(ref, regs, res, object_name=obj, is_reference=True)
    return class_record(cls, obj, [rec], defect_states=states, defect_vocab="generic", source_layout="mvtec",
                        reference_selection="k=1 seed=0")


def test_every_abnormal_family_reads_as_english_on_the_synthetic_set(demo_root):
    """Noun replacement, location swap and absent attributes on the synthetic records: articles where
    English needs them, a comma before the modifier that follows the inserted state, <= 71 tokens."""
    import re

    states = ["contamination", "crack", "missing part", "hole"]
    pill = {(t.level, t.group): t for t in _synthetic_class(demo_root, "pill_box", states).texts}
    image = pill["image", "image"]
    assert image.normal[0].startswith("a pill box made of a smooth blue rectangular pill box body")
    assert image.abnormal[0].startswith("a pill box with contamination, made of a smooth blue")
    assert image.abnormal[1].startswith("a pill box with a crack, made of")
    assert "a photo of a pill box with a missing part" in image.abnormal
    assert any("smooth purple rectangular pill box body" in x for x in image.abnormal)        # absent colour
    red = pill["component", "red round part"]
    assert red.normal == ["a smooth red round part at the top left"]
    assert "a smooth red round part with a hole, at the top left" in red.abnormal
    assert "a smooth red round part at the bottom right" in red.abnormal                    # location swap
    assert "a plain white background with a crack" in pill["background", "background"].abnormal
    assert "a pill box with smooth surfaces and contamination" in pill["texture", "texture"].abnormal
    assert "a pill box with rectangular and circular parts and a crack" in pill["shape", "shape"].abnormal
    assert "the red round part is inside the pill box body with a crack; the yellow round part is inside " \
           "the pill box body; the green round part is inside the pill box body" in pill["relation", "relation"].abnormal

    fabric = {(t.level, t.group): t for t in _synthetic_class(demo_root, "fabric", states).texts}
    assert "a photo of flawless fabric" in fabric["image", "image"].normal                     # a mass noun
    assert "a photo of fabric with a hole" in fabric["image", "image"].abnormal
    assert fabric["image", "image"].abnormal[1].startswith("a fabric surface with a crack: a striped beige")
    assert "no background, the fabric with contamination fills the whole image" in \
        fabric["background", "background"].abnormal
    assert fabric["colour", "colour"].normal == ["fabric in beige"]

    bare_state = re.compile(r"\bwith (crack|missing part|hole)\b|\band (crack|missing part|hole)\b|"
                            r"\ba contamination\b|\ba [aeiou]")
    for entries in (pill, fabric):
        for t in entries.values():
            for x in t.normal + t.abnormal:
                assert not bare_state.search(x), x
                assert token_length(x) <= MAX_TOKENS == 71
