"""MLLP: prompt groups, the spliced text encoding (truncation, equality with encode_text), gates."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.method.choices import ATTRIBUTE_LEVELS
from detector.method.prompts import (
    HANDCRAFTED,
    LEARNED,
    NORMAL,
    MultiLevelPrompts,
    PromptConfig,
    PromptGroup,
    groups_from_class_name,
    groups_from_record,
)
from detector.method.text_encoder import placeholder_id

RECORD = {
    "class_name": "bottle",
    "object_name": "bottle",
    "texts": [
        {
            "level": "image",
            "group": "image",
            "normal": ["a photo of a bottle on a white background", "a bottle"],
            "abnormal": ["a photo of a bottle with a crack", "a photo of a broken bottle"],
        },
        {
            "level": "colour",
            "group": "colour",
            "normal": ["the cap is brown"],
            "abnormal": ["the cap is red"],
        },
        {
            "level": "component",
            "group": "cap",
            "normal": ["a round cap at the center"],
            "abnormal": ["a round cap at the left"],
        },
        {
            "level": "background",
            "group": "background",
            "normal": ["white background"],
            "abnormal": ["stained background"],
        },
        {
            "level": "component",
            "group": "label",
            "normal": ["a square label at the top"],
            "abnormal": ["a square label at the bottom", "a torn label"],
        },
        {
            "level": "relation",
            "group": "relation",
            "normal": ["the cap is inside the bottle"],
            "abnormal": ["the cap is outside the bottle"],
        },
    ],
}


@pytest.fixture(scope="module")
def clip(tiny_clip_name):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name, pretrained=None).eval()
    model.requires_grad_(False)
    return model, open_clip.get_tokenizer(tiny_clip_name)


def make(clip, groups=None, **cfg) -> MultiLevelPrompts:
    torch.manual_seed(1)
    model, tok = clip
    return MultiLevelPrompts(model, tok, groups or groups_from_record(RECORD), PromptConfig(**cfg))


def test_groups_from_record_orders_and_names():
    groups = groups_from_record(RECORD)
    assert [(g.level, g.name) for g in groups] == [
        ("image", "image"),
        ("background", "background"),
        ("component", "cap"),
        ("component", "label"),
        ("relation", "relation"),
        ("colour", "colour"),
    ]
    assert groups[3].abnormal == ["a square label at the bottom", "a torn label"]


def test_extra_texts_switch_keeps_or_drops_the_image_groups_extra_sentences():
    rec = {**RECORD, "defect_states": ["crack"]}
    img = groups_from_record(rec)[0]  # public: the caption and its first defect-state sentence
    assert img.normal == ["a photo of a bottle on a white background"]
    assert img.abnormal == ["a photo of a bottle with a crack"]
    ours = groups_from_record(rec, extra_texts=True)[0]
    assert ours.normal == RECORD["texts"][0]["normal"] and ours.abnormal == RECORD["texts"][0]["abnormal"]
    # other groups are untouched either way
    assert groups_from_record(rec)[1:] == groups_from_record(rec, extra_texts=True)[1:]


def test_groups_from_record_accepts_columnar_texts():
    cols = {k: [e[k] for e in RECORD["texts"]] for k in ("level", "group", "normal", "abnormal")}
    assert groups_from_record({"class_name": "bottle", "texts": cols}) == groups_from_record(RECORD)


def test_drop_levels_removes_groups(clip):
    groups = groups_from_record(RECORD, drop_levels=("component",))
    assert [g.name for g in groups] == ["image", "background", "relation", "colour"]
    groups = groups_from_record(RECORD, drop_levels=ATTRIBUTE_LEVELS)
    assert [g.name for g in groups] == ["image", "background", "cap", "label"]
    # the config switch drops too, and the module's region groups follow
    p = make(clip, drop_levels=("background",))
    assert p().names == ["image", "cap", "label"]
    with pytest.raises(DetectorError, match="image level"):
        groups_from_record(RECORD, drop_levels=("image",))
    with pytest.raises(DetectorError, match="unknown prompt level"):
        PromptConfig(drop_levels=("colours",))


def test_bad_records_raise():
    with pytest.raises(DetectorError, match="no texts"):
        groups_from_record({"class_name": "x", "texts": []})
    with pytest.raises(DetectorError, match="exactly one"):
        groups_from_record({"class_name": "x", "texts": RECORD["texts"][1:]})
    bad = [dict(RECORD["texts"][0]), {"level": "component", "group": "cap", "normal": [" "], "abnormal": []}]
    with pytest.raises(DetectorError, match="no normal text"):
        groups_from_record({"class_name": "x", "texts": bad})


def test_shapes_state_dict_and_prototypes(clip):
    p = make(clip, n_pro=2, n_pro_ab=3, n_ctx_ab=2, prototype="unit_mean")
    tf = p()
    assert tf.names == ["image", "background", "cap", "label"]
    assert tf.levels == ["image", "background", "component", "component"]
    assert set(p.state_dict()) == {"ctx", "abnormal_tokens", "gates"}
    assert p.ctx.shape == (2, 4, 32) and p.abnormal_tokens.shape == (3, 2, 32) and p.gates.shape == (2, 4)
    assert tf.normal.shape == tf.abnormal.shape == (4, 32)
    groups = p.groups[: p.n_region]
    for g, grp in enumerate(groups):
        assert tf.normal_each[g].shape == (2 * len(grp.normal), 32)
        assert tf.handcrafted[g].shape == (2 * len(grp.abnormal), 32)
        assert tf.learned[g].shape == (2 * 3 * len(grp.normal), 32)
        for t in (tf.normal_each[g], tf.handcrafted[g], tf.learned[g]):
            assert torch.allclose(t.norm(dim=-1), torch.ones(len(t)), atol=1e-5)
        assert torch.allclose(tf.normal[g], F.normalize(tf.normal_each[g].mean(0), dim=0), atol=1e-6)
        both = torch.cat([tf.handcrafted[g], tf.learned[g]])
        assert torch.allclose(tf.abnormal[g], F.normalize(both.mean(0), dim=0), atol=1e-6)
    c = p.config  # per group: n_pro copies of (normal + n_pro_ab learned abnormal per normal) + handcrafted abnormal
    assert len(p.texts) == sum(c.n_pro * (len(g.normal) * (1 + c.n_pro_ab) + len(g.abnormal)) for g in p.groups
                               if g.level not in c.drop_levels)


def test_truncation_matches_full_context(clip):
    short = make(clip, gate_mode="tokens")
    full = make(clip, gate_mode="tokens", truncate=False)
    assert short.seq_len < 20 and full.seq_len == 77
    assert torch.allclose(short.encode_prompts(), full.encode_prompts(), atol=1e-5)


@pytest.mark.parametrize("gate_mode", ["features", "tokens"])
def test_text_checkpointing_same_gradients_and_recomputes_blocks(clip, gate_mode, monkeypatch):
    model, _tok = clip
    blocks = model.transformer.resblocks
    calls = []
    for b in blocks:  # count block runs (forward hooks do not fire in checkpoint's recomputation)
        monkeypatch.setattr(b, "forward", lambda *a, _f=b.forward, **k: calls.append(1) or _f(*a, **k))
    grads, feats = [], []
    for on in (False, True):
        p = make(clip, gate_mode=gate_mode, n_pro=2)
        p.checkpoint_text = on
        tf = p()
        loss = tf.normal.pow(3).sum() + (tf.abnormal * tf.normal.flip(0)).sum()
        calls.clear()
        loss.backward()
        assert len(calls) == (len(blocks) if on else 0)  # checkpointed blocks rerun in backward
        grads.append([q.grad.clone() for q in (p.ctx, p.abnormal_tokens, p.gates)])
        with torch.no_grad():
            calls.clear()
            feats.append(p.encode_prompts())
            assert len(calls) == len(blocks)  # inference: one pass, nothing recomputed
    for a, b in zip(*grads):
        assert a.abs().sum() > 0 and torch.allclose(a, b, atol=1e-6, rtol=0)
    assert torch.equal(feats[0], feats[1])


def test_spliced_equals_encode_text_with_placeholder_embeddings(clip):
    model, tok = clip
    p = make(clip, n_pro=2, n_ctx_ab=2, gate_mode="features")  # features mode leaves the rows unmixed
    x = model.token_embedding.weight[placeholder_id(tok)]
    with torch.no_grad():
        p.ctx.copy_(x.expand_as(p.ctx))
        p.abnormal_tokens.copy_(x.expand_as(p.abnormal_tokens))
    ours = p.encode_prompts()
    strings = []
    for g, grp in enumerate(p.groups):
        for fam, (s, e) in enumerate(p.slices[g]):
            n = 4 + (2 if fam == LEARNED else 0)
            strings += ["X " * n + t for t in p.texts[s:e]]
    ref = model.encode_text(tok(strings), normalize=True)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_no_causal_mask_disables_truncation(tiny_clip_name):
    import open_clip

    model = open_clip.create_model(tiny_clip_name, pretrained=None)
    model.attn_mask = None  # a bidirectional text tower: padding matters, so nothing may be cut
    tok = open_clip.get_tokenizer(tiny_clip_name)
    p = MultiLevelPrompts(model, tok, groups_from_class_name("screw"), PromptConfig())
    assert p.seq_len == 77
    x = model.token_embedding.weight[placeholder_id(tok)]
    with torch.no_grad():
        p.ctx.copy_(x.expand_as(p.ctx))
    s, e = p.slices[0][NORMAL]
    ref = model.encode_text(tok(["X X X X " + t for t in p.texts[s:e]]), normalize=True)
    assert torch.allclose(p.encode_prompts()[s:e], ref, atol=1e-5)


def test_feature_gates_mix_attribute_prototypes(clip):
    p = make(clip, gate_mode="features")
    with torch.no_grad():
        p.gates.copy_(torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 0.3, -0.2, 0.0]]))
    raw = p.encode_prompts()
    tf = p()
    sig = torch.sigmoid(p.gates.detach())
    proto = lambda t: F.normalize(t.mean(0), dim=0)
    rel, col = p.attr_pos["relation"], p.attr_pos["colour"]
    rows = lambda g, f: raw[slice(*p.slices[g][f])]
    add_n = sig[0, 0] * proto(rows(rel, NORMAL)) + sig[0, 1] * proto(rows(col, NORMAL))
    ab = lambda g: torch.cat([rows(g, HANDCRAFTED), rows(g, LEARNED)])
    add_a = sig[1, 0] * proto(ab(rel)) + sig[1, 1] * proto(ab(col))
    assert torch.allclose(tf.normal_each[0], F.normalize(rows(0, NORMAL) + add_n, dim=-1), atol=1e-5)
    assert torch.allclose(tf.handcrafted[0], F.normalize(rows(0, HANDCRAFTED) + add_a, dim=-1), atol=1e-5)
    assert torch.allclose(tf.learned[0], F.normalize(rows(0, LEARNED) + add_a, dim=-1), atol=1e-5)
    # non-image groups are not mixed
    assert torch.allclose(tf.normal_each[1], rows(1, NORMAL))
    assert tf.used_attributes == ["relation", "colour"]


def test_dropped_attributes_leave_image_unmixed(clip):
    p = make(clip, drop_levels=ATTRIBUTE_LEVELS)
    tf = p()
    assert torch.allclose(tf.normal_each[0], p.encode_prompts()[slice(*p.slices[0][NORMAL])])
    assert "gates" in p.state_dict()  # unused, still saved


def test_gate_modes_run_and_differ(clip):
    feats = make(clip, gate_mode="features")()
    toks = make(clip)()  # tokens: the default
    assert feats.names == toks.names
    assert not torch.allclose(feats.normal[0], toks.normal[0], atol=1e-4)
    # the other groups do not depend on the mode
    assert torch.allclose(feats.normal[1:], toks.normal[1:], atol=1e-5)


def test_class_name_only_mode(clip):
    groups = groups_from_class_name("metal_nut")
    assert len(groups) == 1 and groups[0].level == "image"
    assert all("metal nut" in t for t in groups[0].normal + groups[0].abnormal)
    assert not set(groups[0].normal) & set(groups[0].abnormal)
    tf = make(clip, groups=groups)()
    assert tf.names == ["image"] and tf.normal.shape == (1, 32)


def test_long_text_is_cut_with_warning(clip):
    long = " ".join(["shiny"] * 100)
    groups = [PromptGroup("image", "image", [long], ["a broken bottle"])]
    with pytest.warns(UserWarning, match="too long"):
        p = make(clip, groups=groups)
    assert p.seq_len <= 77
    assert torch.isfinite(p().normal).all()


def test_groups_need_one_image_group_and_are_reordered(clip):
    with pytest.raises(DetectorError, match="image"):
        make(clip, groups=[PromptGroup("background", "background", ["white background"], [])])
    shuffled = list(reversed(groups_from_record(RECORD)))
    assert make(clip, groups=shuffled)().names == ["image", "background", "label", "cap"]


def test_non_clip_text_tower_raises(clip):
    _, tok = clip

    class NoText(torch.nn.Module):
        pass

    with pytest.raises(DetectorError, match="text tower"):
        MultiLevelPrompts(NoText(), tok, groups_from_class_name("screw"), PromptConfig())


def test_clip_stays_out_of_the_module(clip):
    model, _ = clip
    p = make(clip)
    own = {id(t) for t in p.parameters()}
    assert own == {id(p.ctx), id(p.abnormal_tokens), id(p.gates)}
    assert not any(t.requires_grad for t in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p.describe()


@pytest.mark.parametrize("pool", ["eos", "last", "first"])
def test_pooling_mirrors_open_clip(tiny_clip_name, pool):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name, pretrained=None)
    tok = open_clip.get_tokenizer(tiny_clip_name)
    model.text_pool_type = pool
    model.text_eos_id = tok.eot_token_id
    p = MultiLevelPrompts(model, tok, groups_from_class_name("screw"), PromptConfig())
    assert (p.seq_len == 77) == (pool == "last")  # the last position is pooled: nothing may be cut
    x = model.token_embedding.weight[placeholder_id(tok)]
    with torch.no_grad():
        p.ctx.copy_(x.expand_as(p.ctx))
    s, e = p.slices[0][HANDCRAFTED]
    ref = model.encode_text(tok(["X X X X " + t for t in p.texts[s:e]]), normalize=True)
    assert torch.allclose(p.encode_prompts()[s:e], ref, atol=1e-5)


def test_custom_text_tower_is_found_and_unsupported_ones_refused(clip):
    model, tok = clip

    class Custom(torch.nn.Module):  # the CustomTextCLIP layout: the text tower under .text
        def __init__(self):
            super().__init__()
            self.text = torch.nn.Module()
            for name in ("token_embedding", "transformer", "ln_final"):
                setattr(self.text, name, getattr(model, name))
            self.text.positional_embedding = model.positional_embedding
            self.text.text_projection = model.text_projection
            self.text.attn_mask = model.attn_mask
            self.text.pool_type = "argmax"

    custom = MultiLevelPrompts(Custom(), tok, groups_from_class_name("screw"), PromptConfig())
    plain = MultiLevelPrompts(model, tok, groups_from_class_name("screw"), PromptConfig())
    with torch.no_grad():
        custom.ctx.copy_(plain.ctx)
        custom.abnormal_tokens.copy_(plain.abnormal_tokens)
    assert torch.allclose(custom.encode_prompts(), plain.encode_prompts(), atol=1e-6)
    bad = Custom()
    bad.text.use_pad_mask = True
    with pytest.raises(DetectorError, match="padding"):
        MultiLevelPrompts(bad, tok, groups_from_class_name("screw"), PromptConfig())
    bad = Custom()
    bad.text.cls_emb = torch.nn.Parameter(torch.zeros(32))
    with pytest.raises(DetectorError, match="CLS"):
        MultiLevelPrompts(bad, tok, groups_from_class_name("screw"), PromptConfig())


def test_component_texts_one_is_a_seeded_draw_per_component_and_all_keeps_every_text():
    """The public prompt learner builds ONE abnormal text per component (a random state and location); "one"
    draws one of the record's texts per component with the run's seed: the same for the same seed, different
    draws across seeds, each from the component's own texts; "all" keeps them, and the other groups are untouched."""
    texts = [{"level": "image", "group": "image", "normal": ["a photo of a widget"], "abnormal": ["a cracked widget"]},
             {"level": "background", "group": "background", "normal": ["white background"],
              "abnormal": ["white background with a crack", "white background with a dent"]}]
    for name in ("cap", "screw"):
        texts.append({"level": "component", "group": name, "normal": [f"a {name} on the top"],
                      "abnormal": [f"a {name} with a {s} on the {w}" for s, w in
                                   (("crack", "left"), ("dent", "right"), ("scratch", "bottom"), ("hole", "top"))]})
    record = {"class_name": "widget", "texts": texts, "defect_states": ["crack", "dent"]}
    every = {g.name: g for g in groups_from_record(record, component_texts="all")}
    assert [len(every[n].abnormal) for n in ("cap", "screw")] == [4, 4]
    draws = set()
    for seed in range(12):
        one = {g.name: g for g in groups_from_record(record, component_texts="one", seed=seed)}
        assert one == {g.name: g for g in groups_from_record(record, component_texts="one", seed=seed)}
        assert one["background"] == every["background"] and one["image"] == every["image"]
        for n in ("cap", "screw"):
            assert len(one[n].abnormal) == 1 and one[n].abnormal[0] in every[n].abnormal
            assert one[n].normal == every[n].normal
        draws.add((one["cap"].abnormal[0], one["screw"].abnormal[0]))
    assert len(draws) > 3  # the seed decides the draw (12 seeds over 16 pairs)
