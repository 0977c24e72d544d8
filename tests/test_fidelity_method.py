"""The paper recipe computes what the public FineGrainedAD code computes (docs/FIDELITY.md).

Each test re-states one public computation from its description, written here with plain tensor algebra
and open_clip's own modules (never through the detector's helpers), on the tiny test CLIP, and compares it
with our module in its default (``paper``) settings to 1e-5:
- the V-V dual path of every block, starting from the ln_pre output;
- the token-mode prompt learner (gated attribute sequences added row by row, top-k handcrafted rows) and
  the raw-mean prototypes;
- the textual map and the CLS score with CLIP's stored logit scale and group matching;
- every term of the pixel loss (feature-scaled region logits, squared triplet, lambda1 matching, the
  composition regulariser) and of the image loss (CLS against every group).
The prompt learner and both losses are compared for a two-component class with n_pro = 2 and for a
three-component class (the public ``cable`` shape) with the image set's n_pro = 3 and n_pro_ab = 4, where the
gates' row pairing and the learned rows' (r % n_pro, r % n_pro_ab) pairing cover every combination.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detector.method.backbone import load_backbone
from detector.method.choices import ATTRIBUTE_LEVELS
from detector.method.losses import image_loss, logit_scale_of, mlsa_loss
from detector.method.prompts import (
    HANDCRAFTED,
    LEARNED,
    NORMAL,
    MultiLevelPrompts,
    PromptConfig,
    groups_from_record,
)
from detector.method.text_encoder import placeholder_id

ATOL = 1e-5

RECORD = {
    "class_name": "bottle",
    "object_name": "bottle",
    "texts": [
        {"level": "image", "group": "image", "normal": ["a photo of a brown bottle"],
         "abnormal": ["a photo of a bottle with a crack", "a photo of a bottle with a hole"]},
        {"level": "background", "group": "background", "normal": ["white background"],
         "abnormal": ["white background with a crack"]},
        {"level": "component", "group": "cap", "normal": ["a round cap at the top"],
         "abnormal": ["a round cap with a crack at the bottom"]},
        {"level": "component", "group": "label", "normal": ["a square label in the middle"],
         "abnormal": ["a square label with a hole at the left"]},
        {"level": "colour", "group": "colour", "normal": ["brown"],
         "abnormal": ["red", "blue", "green", "yellow", "purple", "pink"]},
        {"level": "shape", "group": "shape", "normal": ["round"], "abnormal": ["square", "triangular", "oval"]},
    ],
}


@pytest.fixture(scope="module")
def clip(tiny_clip_name):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name, pretrained=None).eval()
    model.requires_grad_(False)
    with torch.no_grad():
        model.logit_scale.fill_(2.3)  # a stored value that is not CLIP's init, to catch exp() or a constant
    return model, open_clip.get_tokenizer(tiny_clip_name)


# a class with three components, as the public file's ``cable`` (three wires): the image prompt set's n_pro = 3
CABLE = {**RECORD, "class_name": "cable", "object_name": "cable", "texts": [
    *RECORD["texts"][:2],
    *({"level": "component", "group": f"{c} wire", "normal": [f"a {c} wire at the {w}"],
       "abnormal": [f"a {c} wire with a cut at the {o}"]}
      for c, w, o in (("green", "top", "bottom"), ("blue", "left", "right"), ("grey", "right", "top"))),
    *RECORD["texts"][4:]]}


@pytest.fixture(scope="module")
def prompts(clip):
    model, tok = clip
    torch.manual_seed(3)
    return MultiLevelPrompts(model, tok, groups_from_record(RECORD), PromptConfig(n_pro=2, n_pro_ab=3))


@pytest.fixture(scope="module")
def image_prompts(clip):
    """The image-level set of a three-component class: n_pro = 3 (train_cls), n_pro_ab = 4."""
    model, tok = clip
    torch.manual_seed(5)
    return MultiLevelPrompts(model, tok, groups_from_record(CABLE), PromptConfig(n_pro=3, n_pro_ab=4))


# --------------------------------------------------------------------------------------------------------
# V-V dual path
# --------------------------------------------------------------------------------------------------------
def _public_dual_path(visual, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Public V2VTransformer: every block runs the original path and a V-V branch read from it."""
    c = visual.conv1.out_channels
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, c), x], dim=1) + visual.positional_embedding
    x = F.layer_norm(x, (c,), visual.ln_pre.weight, visual.ln_pre.bias, visual.ln_pre.eps)
    vv = x  # the V-V stream starts from the ln_pre output
    for blk in visual.transformer.resblocks:
        heads = blk.attn.num_heads
        d = c // heads
        h = F.layer_norm(x, (c,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
        q, k, v = (h @ blk.attn.in_proj_weight.T + blk.attn.in_proj_bias).split(c, dim=-1)
        q, k, v = (t.reshape(*t.shape[:2], heads, d).transpose(1, 2) for t in (q, k, v))
        ori = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
        vvo = torch.softmax(v @ v.transpose(-1, -2) / math.sqrt(d), -1) @ v
        w_o, b_o, shape = blk.attn.out_proj.weight, blk.attn.out_proj.bias, x.shape

        def proj(o: torch.Tensor, w_o=w_o, b_o=b_o, shape=shape) -> torch.Tensor:
            return o.transpose(1, 2).reshape(shape) @ w_o.T + b_o

        x_new = x + proj(ori)
        x_new = x_new + blk.mlp(F.layer_norm(x_new, (c,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps))
        vv = vv + proj(vvo)  # residual only, no MLP on the V-V stream
        x = x_new
    post = lambda t: F.layer_norm(t, (c,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps)
    return post(x[:, 0]) @ visual.proj, post(vv[:, 1:]) @ visual.proj


def test_vv_path_on_every_block_equals_the_public_dual_path(tiny_clip_name):
    torch.manual_seed(0)
    bb = load_backbone(tiny_clip_name, pretrained="none")
    assert bb.vv_blocks == bb.depth == 4  # the default: every block
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls, tokens = _public_dual_path(bb.model.visual, pixels)
    out = bb.encode(pixels)
    torch.testing.assert_close(out.patches, tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(out.cls, cls, atol=ATOL, rtol=0)
    half = load_backbone(tiny_clip_name, pretrained="none", vv_blocks=2)  # CLIP Surgery's half: an option
    half.model.load_state_dict(bb.model.state_dict())
    assert not torch.allclose(half.encode(pixels).patches, tokens, atol=1e-3)


# --------------------------------------------------------------------------------------------------------
# prompt learner (token mode) and prototypes
# --------------------------------------------------------------------------------------------------------
def _seq(model, tok, text: str, vectors: list[torch.Tensor]) -> torch.Tensor:
    """Public prompt embedding (77, W): [SOS] + learned vectors + the tokens of "D." + padding."""
    ids = tok(["X " * len(vectors) + text + "."])[0]
    emb = model.token_embedding(ids).clone()
    for i, v in enumerate(vectors):
        emb[1 + i] = v
    return emb, ids


def _encode_raw(model, embs: list[torch.Tensor], ids: list[torch.Tensor]) -> torch.Tensor:
    """open_clip's encode_text on given embeddings, EOT pooled at the argmax token, not normalised."""
    x = torch.stack(embs) + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), torch.stack(ids).argmax(-1)] @ model.text_projection


def _public_image_rows(model, tok, p: MultiLevelPrompts) -> dict[int, torch.Tensor]:
    """The image group's raw features per family, rows in the public order, attributes mixed in."""
    c = p.config
    groups = {g.level: g for g in p.groups}
    img = groups["image"]
    sig = torch.sigmoid(p.gates)
    ctx = [list(p.ctx[i]) for i in range(c.n_pro)]
    ab = [list(p.abnormal_tokens[v]) for v in range(c.n_pro_ab)]
    attrs = [(a, groups[lv]) for a, lv in enumerate(ATTRIBUTE_LEVELS) if lv in groups]
    out = {}
    # normal: copy p of the caption + sum_a w_a * copy p of the attribute's normal prompt
    embs, ids = [], []
    for i in range(c.n_pro):
        e, t = _seq(model, tok, img.normal[0], ctx[i])
        for a, g in attrs:
            e = e + sig[0, a] * _seq(model, tok, g.normal[0], ctx[i])[0]
        embs.append(e)
        ids.append(t)
    out[NORMAL] = _encode_raw(model, embs, ids)
    # handcrafted: row r = (state r // n_pro, context r % n_pro) + w_a * the r-th of the top-k attribute rows
    embs, ids = [], []
    rows = [(s, i) for s in range(len(img.abnormal)) for i in range(c.n_pro)]
    ranked = {}
    for a, g in attrs:
        cand = [_seq(model, tok, t, ctx[i])[0] for t in g.abnormal for i in range(c.n_pro)]
        order = torch.topk(torch.stack([e.mean() for e in cand]), len(rows)).indices
        ranked[a] = [cand[j] for j in order]
    for r, (s, i) in enumerate(rows):
        e, t = _seq(model, tok, img.abnormal[s], ctx[i])
        for a, _g in attrs:
            e = e + sig[1, a] * ranked[a][r]
        embs.append(e)
        ids.append(t)
    out[HANDCRAFTED] = _encode_raw(model, embs, ids)
    # learned: row r uses context r % n_pro and abnormal variant r % n_pro_ab, attribute row r the same
    embs, ids = [], []
    for r in range(c.n_pro * c.n_pro_ab):
        vec = ctx[r % c.n_pro] + ab[r % c.n_pro_ab]
        e, t = _seq(model, tok, img.normal[0], vec)
        for a, g in attrs:
            e = e + sig[1, a] * _seq(model, tok, g.normal[0], vec)[0]
        embs.append(e)
        ids.append(t)
    out[LEARNED] = _encode_raw(model, embs, ids)
    return out


@pytest.mark.parametrize("which", ["prompts", "image_prompts"])
def test_token_mode_prompt_learner_and_raw_prototypes_equal_the_public_learner(clip, which, request):
    model, tok = clip
    p = request.getfixturevalue(which)
    assert p.config.gate_mode == "tokens" and p.config.prototype == "raw_mean"
    assert p.gates.abs().max() > 0.05 and p.gates.std() > 0.2  # N(0, 1) draws, as the public gates
    with torch.no_grad():
        pub = _public_image_rows(model, tok, p)
        tf = p()
    c = p.config
    n_ab = len(p.groups[0].abnormal)
    # our rows: context-major; public: state-major for handcrafted, (r % n_pro, r % n_pro_ab) for learned
    ours_h = [tf.handcrafted[0][i * n_ab + s] for s in range(n_ab) for i in range(c.n_pro)]
    ours_l = [tf.learned[0][(r % c.n_pro) * c.n_pro_ab + r % c.n_pro_ab] for r in range(c.n_pro * c.n_pro_ab)]
    torch.testing.assert_close(tf.normal_each[0], F.normalize(pub[NORMAL], dim=-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.stack(ours_h), F.normalize(pub[HANDCRAFTED], dim=-1), atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.stack(ours_l), F.normalize(pub[LEARNED], dim=-1), atol=ATOL, rtol=0)
    # prototypes: the normalised mean of the RAW features
    torch.testing.assert_close(tf.normal[0], F.normalize(pub[NORMAL].mean(0), dim=0), atol=ATOL, rtol=0)
    both = torch.cat([pub[HANDCRAFTED], pub[LEARNED]])
    torch.testing.assert_close(tf.abnormal[0], F.normalize(both.mean(0), dim=0), atol=ATOL, rtol=0)


def test_non_image_groups_and_placeholder_rows_are_plain_open_clip(clip, prompts):
    """Every other group's rows are open_clip's encode_text of "[SOS][ctx] D." (checked via placeholders)."""
    model, tok = clip
    torch.manual_seed(5)
    p = MultiLevelPrompts(model, tok, groups_from_record(RECORD), PromptConfig(n_pro=2, n_pro_ab=3))
    x = model.token_embedding.weight[placeholder_id(tok)]
    with torch.no_grad():
        p.ctx.copy_(x.expand_as(p.ctx))
        p.abnormal_tokens.copy_(x.expand_as(p.abnormal_tokens))
        raw = p.encode_prompts(normalize=False)
    for g in range(1, p.n_region):
        grp = p.groups[g]
        for fam, texts in ((NORMAL, grp.normal), (HANDCRAFTED, grp.abnormal), (LEARNED, grp.normal * 3)):
            s, e = p.slices[g][fam]
            n = 4 + (1 if fam == LEARNED else 0)
            ref = model.encode_text(tok(["X " * n + t + "." for t in texts * 2]))  # n_pro = 2 copies
            torch.testing.assert_close(raw[s:e], ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------
# textual map and CLS score
# --------------------------------------------------------------------------------------------------------
def _public_text_score(f: torch.Tensor, normal: torch.Tensor, abnormal: torch.Tensor, t: float) -> torch.Tensor:
    """Per feature: the group of the most similar normal prototype, softmax(t * f @ [n, a])[abnormal]."""
    f = f / f.norm(dim=-1, keepdim=True)
    out = []
    for row in f.reshape(-1, f.shape[-1]):
        j = int(torch.argmax(row @ normal.T))
        out.append(torch.softmax(t * row @ torch.stack([normal[j], abnormal[j]]).T, dim=-1)[1])
    return torch.stack(out).reshape(f.shape[:-1])


def test_textual_map_and_cls_score_use_the_stored_scale_and_matching(tiny_clip_name, clip):
    from detector.method.model import FineGrainedAD

    torch.manual_seed(0)
    bb = load_backbone(tiny_clip_name, pretrained="none")
    with torch.no_grad():
        bb.model.logit_scale.fill_(2.3)
    tau = logit_scale_of(bb.model)
    assert tau == pytest.approx(2.3, abs=1e-6)
    torch.manual_seed(1)
    groups = groups_from_record(RECORD)
    px = MultiLevelPrompts(bb.model, bb.tokenizer, groups, PromptConfig())
    im = MultiLevelPrompts(bb.model, bb.tokenizer, groups, PromptConfig(n_pro=3))
    m = FineGrainedAD(bb, px, im, torch.ones(1, 4, 8, 8), [torch.randn(8, 64)] * 2, tau,
                      {"config": {"image_score_group": "matched"}})
    m.refresh_text_features()
    out = bb.encode(bb.preprocess([torch.randint(0, 255, (64, 64, 3), dtype=torch.uint8).numpy()] * 2))
    with torch.no_grad():
        ref_map = _public_text_score(out.patches, px().normal, px().abnormal, float(bb.model.logit_scale))
        ref_cls = _public_text_score(out.cls, im().normal, im().abnormal, float(bb.model.logit_scale))
    torch.testing.assert_close(m.textual_map(out.patches), ref_map, atol=ATOL, rtol=0)
    torch.testing.assert_close(m.image_text_score(out.cls), ref_cls, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------------
def _public_text(raw: torch.Tensor, p: MultiLevelPrompts, g: int) -> dict[str, torch.Tensor]:
    rows = {fam: raw[slice(*p.slices[g][fam])] for fam in (NORMAL, HANDCRAFTED, LEARNED)}
    ab = torch.cat([rows[HANDCRAFTED], rows[LEARNED]])
    return {
        "n_anchor": F.normalize(rows[NORMAL].mean(0, keepdim=True), dim=-1),  # mean of raw, normalised
        "a_anchor": F.normalize(ab.mean(0, keepdim=True), dim=-1),
        "a_rows": ab / ab.norm(dim=-1, keepdim=True),
        "h": rows[HANDCRAFTED], "l": rows[LEARNED], "n": rows[NORMAL],
    }


def _public_ce(f: torch.Tensor, t: dict, scale: float) -> torch.Tensor:
    logits = torch.cat([f @ t["n_anchor"].T, f @ t["a_rows"].T], dim=-1) * scale  # (k, N, 1 + M)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.zeros(logits.shape[0] * logits.shape[1]
                                                                               if f.ndim == 3 else f.shape[0],
                                                                               dtype=torch.long))


def _public_triplet(f: torch.Tensor, t: dict) -> torch.Tensor:
    """TripletLoss(margin 1) with squared distances, summed over the FEATURE axis (the listed fix)."""
    pos = (f - t["n_anchor"]).pow(2).sum(-1)
    neg = (f - t["a_anchor"]).pow(2).sum(-1)
    return torch.relu(pos - neg + 1.0).mean()


def _public_match(t: dict) -> torch.Tensor:
    return (F.normalize(t["h"], dim=-1).mean(0) - F.normalize(t["l"], dim=-1).mean(0)).norm() ** 2


@pytest.mark.parametrize("which", ["prompts", "image_prompts"])
def test_pixel_loss_equals_the_public_seg_loss(clip, which, request):
    p = request.getfixturevalue(which)
    names = p.region_names()
    n_comp = len(names) - 2
    assert names[:2] == ["image", "background"] and n_comp == {"prompts": 2, "image_prompts": 3}[which]
    k, n, d = 2, 16, 32
    feat = F.normalize(torch.randn(k, n, d, generator=torch.Generator().manual_seed(2)), dim=-1)
    weights = 1 + 1.5 * torch.rand(len(names), k, n, generator=torch.Generator().manual_seed(3))
    weights[0] = 1.0  # the image group is unweighted
    scale = 2.3
    with torch.no_grad():
        raw = p.encode_prompts(normalize=False)
        text = {g: _public_text(raw, p, g) for g in range(len(names))}
        img, bg = text[0], text[1]
        comps = [text[2 + c] for c in range(n_comp)]
        ref = _public_ce(feat, img, scale) + _public_triplet(feat, img) + 0.001 * _public_match(img)
        for g in (*range(2, 2 + n_comp), 1):  # entities, then the background appended last
            fw = feat * weights[g].unsqueeze(-1)  # region weights scale the token features
            ref = ref + _public_ce(fw, text[g], scale) + _public_triplet(fw, text[g])
        ref = ref + 0.001 * sum(_public_match(t) for t in comps)
        reg = (F.normalize(img["l"], dim=-1).mean(0)
               - F.normalize(sum(c["l"] for c in comps), dim=-1).mean(0)
               - F.normalize(bg["n"], dim=-1).mean(0)).norm()
        ref = ref + reg  # weight 1
        loss, parts = mlsa_loss(feat, weights, p(), scale)
    assert parts["composition"] == pytest.approx(float(reg), abs=ATOL)
    assert float(loss) == pytest.approx(float(ref), abs=ATOL)


@pytest.mark.parametrize("which", ["prompts", "image_prompts"])
def test_image_loss_equals_the_public_cls_loss(clip, which, request):
    p = request.getfixturevalue(which)
    cls = F.normalize(torch.randn(3, 32, generator=torch.Generator().manual_seed(4)), dim=-1)
    scale = 2.3
    with torch.no_grad():
        raw = p.encode_prompts(normalize=False)
        text = {g: _public_text(raw, p, g) for g in range(p.n_region)}
        ref = sum(_public_ce(cls, t, scale) + _public_triplet(cls, t) for t in text.values())
        ref = ref + 0.001 * sum(_public_match(text[g]) for g in range(p.n_region) if g != 1)  # not the background
        loss, parts = image_loss(cls, p(), scale)
    assert "composition" not in parts  # the public image-level script has no regulariser
    assert float(loss) == pytest.approx(float(ref), abs=ATOL)


def test_paper_recipe_is_the_default_and_ours_changes_every_listed_choice():
    from detector.config import TrainConfig

    paper = TrainConfig()
    assert (paper.tau, paper.vv_blocks, paper.gate_mode, paper.gate_init, paper.prototype) == (
        "stored", None, "tokens", "randn", "raw_mean")
    assert (paper.region_weighting, paper.triplet_distance, paper.composition, paper.lambda_comp) == (
        "features", "squared", "public", 1.0)
    assert (paper.image_groups, paper.image_score_group, paper.extra_texts, paper.region_assign) == (
        "all", "matched", False, "nearest")


def test_fused_map_and_image_score_equal_the_public_forward(tiny_clip_name):
    """Public forward('seg'): 1 / (1/text + 1/visual) on the grid, bilinear to 400, scipy gaussian_filter
    sigma 4; image score (metric_cal_img's harmonic rule): 1 / (1/cls + 1/max(visual map at 400)).
    Ours is the harmonic MEAN, 2 / (1/a + 1/b): twice the public value, the same ranking and AUROC."""
    from scipy.ndimage import gaussian_filter

    from detector.method.backbone import BackboneOutput
    from detector.method.model import FineGrainedAD

    g = torch.Generator().manual_seed(7)
    b, h, d = 2, 8, 32
    m = FineGrainedAD(None, torch.nn.Identity(), torch.nn.Identity(), torch.ones(1, 1, 1, 1),
                      [F.normalize(torch.randn(40, 16, generator=g), dim=-1)] * 2, 2.3)
    normal = F.normalize(torch.randn(3, d, generator=g), dim=-1)
    abnormal = F.normalize(torch.randn(3, d, generator=g), dim=-1)
    m.pixel_names, m.image_names = ["image", "background", "cap"], ["image", "background", "cap"]
    m.pixel_normal, m.pixel_abnormal, m.image_normal, m.image_abnormal = normal, abnormal, normal, abnormal
    out = BackboneOutput(cls=torch.randn(b, d, generator=g), patches=torch.randn(b, h * h, d, generator=g),
                         taps=[torch.randn(b, h * h, 16, generator=g) for _ in range(2)], grid=(h, h))
    score, maps = m.score_features(out, resolution=400)
    text = _public_text_score(out.patches, normal, abnormal, 2.3).reshape(b, 1, h, h)
    vis = torch.stack([(1 - F.normalize(t, dim=-1) @ mem.T).min(-1).values / 2
                       for t, mem in zip(out.taps, m.memory)]).mean(0).reshape(b, 1, h, h)
    fused = F.interpolate(2.0 / (1.0 / text + 1.0 / vis), size=(400, 400), mode="bilinear", align_corners=False)
    ref_maps = torch.from_numpy(
        __import__("numpy").stack([gaussian_filter(x.double().numpy(), sigma=4) for x in fused[:, 0]])).float()
    torch.testing.assert_close(maps, ref_maps, atol=ATOL, rtol=0)
    vis_max = F.interpolate(vis, size=(400, 400), mode="bilinear", align_corners=False).flatten(1).max(1).values
    cls = _public_text_score(out.cls, normal, abnormal, 2.3)
    torch.testing.assert_close(score, 2.0 / (1.0 / vis_max + 1.0 / cls), atol=ATOL, rtol=0)


def test_component_cluster_match_is_the_public_token_mean_cosine():
    """seg fit: each component text goes to the cluster whose mean (normalised) hr token is most similar."""
    from detector.method.regions import RegionConfig, region_weights

    g = torch.Generator().manual_seed(11)
    tokens = F.normalize(torch.randn(2, 16 * 16, 8, generator=g), dim=-1)
    protos = F.normalize(torch.randn(4, 8, generator=g), dim=-1)  # image, background, cap, label
    names = ["image", "background", "cap", "label"]
    _w, assigns = region_weights(tokens, (16, 16), protos, names, RegionConfig())  # default: token_mean
    for shot, a in enumerate(assigns):
        labels = a.foreground_labels.reshape(-1)
        assert all(int((labels == c).sum()) > 0 for c in range(3))  # the foreground was split in 3
        means = F.normalize(torch.stack([tokens[shot][labels == c].mean(0) for c in range(3)]), dim=-1)
        assert a.component_cluster == torch.argmax(protos[2:] @ means.T, dim=1).tolist()
