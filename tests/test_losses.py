"""MLSA losses against hand-computed values; gradients reach exactly the learned prompt parameters."""

from __future__ import annotations

import math

import pytest
import torch

from detector.config import TrainConfig
from detector.errors import DetectorError
from detector.method.losses import (
    abnormal_matching,
    alignment_ce,
    composition,
    image_loss,
    logit_scale_of,
    mlsa_loss,
    triplet,
)
from detector.method.prompts import MultiLevelPrompts, PromptConfig, TextFeatures, groups_from_record

T = torch.tensor


def test_alignment_ce_hand_values():
    tokens = T([[1.0, 0.0], [0.0, 1.0]])
    normal = T([1.0, 0.0])
    abnormal = T([[0.0, 1.0]])
    a = math.log(1 + math.exp(-2.0))  # token 1: logits [2, 0]
    b = math.log(1 + math.exp(2.0))  # token 2: logits [0, 2]
    assert alignment_ce(tokens, normal, abnormal, tau=2.0).item() == pytest.approx((a + b) / 2, rel=1e-6)
    w = T([3.0, 1.0])
    assert alignment_ce(tokens, normal, abnormal, 2.0, w, "loss").item() == pytest.approx((3 * a + b) / 4, rel=1e-6)
    # public: the weights scale the token features (token 1 -> [3, 0], logits [6, 0]; token 2 unchanged)
    a3 = math.log(1 + math.exp(-6.0))
    assert alignment_ce(tokens, normal, abnormal, 2.0, w).item() == pytest.approx((a3 + b) / 2, rel=1e-6)
    # two abnormal texts: token 1 logits [2, 0, 2*0.6]
    ab2 = T([[0.0, 1.0], [0.6, 0.8]])
    c = -2.0 + math.log(math.exp(2.0) + 1.0 + math.exp(1.2))
    assert alignment_ce(tokens[:1], normal, ab2, 2.0).item() == pytest.approx(c, rel=1e-6)


def test_triplet_hand_values_and_feature_axis():
    f = T([[1.0, 0.0]])
    t_n, t_a = T([0.6, 0.8]), T([0.0, 1.0])
    expected = max(0.0, math.sqrt(0.8) - math.sqrt(2.0) + 1.0)
    assert triplet(f, t_n, t_a, distance="euclidean").item() == pytest.approx(expected, rel=1e-6)
    assert triplet(f, t_n, t_a, margin=1.5).item() == pytest.approx(0.8 - 2.0 + 1.5, rel=1e-6)  # public: squared
    assert triplet(f, t_n, t_a, margin=0.0).item() == 0.0  # d+ < d-: clipped at 0
    # two tokens: the public code's token-axis distance differs from the per-token feature-axis one
    tokens = T([[1.0, 0.0], [0.0, 1.0]])
    t_n, t_a = T([1.0, 0.0]), T([0.6, 0.8])
    # feature axis: token 1: d+ = 0, d- = sqrt(0.16 + 0.64); token 2: d+ = sqrt(2), d- = sqrt(0.36 + 0.04)
    per = [max(0.0, 0.0 - math.sqrt(0.8) + 1), max(0.0, math.sqrt(2) - math.sqrt(0.4) + 1)]
    feature_axis = sum(per) / 2
    # token axis (the bug): norms over the 2 tokens per feature, then summed over features
    dp = [math.sqrt(0 + 1), math.sqrt(0 + 1)]  # (f - t_n) = [[0, 0], [-1, 1]]
    dn = [math.sqrt(0.16 + 0.36), math.sqrt(0.64 + 0.04)]  # (f - t_a) = [[0.4, -0.8], [-0.6, 0.2]]
    token_axis = max(0.0, sum(dp) - sum(dn) + 1)
    got = triplet(tokens, t_n, t_a, distance="euclidean").item()
    assert got == pytest.approx(feature_axis, rel=1e-6)
    assert abs(got - token_axis) > 0.1
    # weights as loss weights: all weight on token 1
    assert triplet(tokens, t_n, t_a, weights=T([1.0, 0.0]), weighting="loss",
                   distance="euclidean").item() == pytest.approx(per[0], rel=1e-6)


def test_abnormal_matching_and_composition_hand_values():
    h = T([[1.0, 0.0], [0.0, 1.0]])
    learned = T([[1.0, 0.0]])
    assert abnormal_matching(h, learned).item() == pytest.approx(0.5)  # (-0.5)^2 + 0.5^2
    assert abnormal_matching(h, h).item() == 0.0
    img, comps, bg = T([1.0, 0.0]), T([[0.0, 1.0]]), T([1.0, 0.0])
    assert composition(img, comps, bg).item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-6)
    assert composition(T([1.0, 1.0]) / math.sqrt(2), comps, bg).item() == pytest.approx(0.0, abs=1e-6)


def _toy_text() -> TextFeatures:
    """Two region groups (image, background) in 2-D, features chosen for simple hand arithmetic."""
    e1, e2 = T([1.0, 0.0]), T([0.0, 1.0])
    return TextFeatures(
        names=["image", "background"],
        levels=["image", "background"],
        normal=torch.stack([e1, e2]),
        normal_each=[e1[None], e2[None]],
        handcrafted=[e2[None], e1[None]],
        learned=[e1[None], e1[None]],
        abnormal=torch.stack([T([0.6, 0.8]), e1]),
    )


def test_mlsa_loss_hand_value_and_weights():
    text = _toy_text()
    tokens = T([[1.0, 0.0], [0.0, 1.0]])
    tau = 2.0
    # image group: normal e1, abnormal {e2, e1}; background: normal e2, abnormal {e1, e1}
    ce_img = [math.log(math.exp(2) + 1 + math.exp(2)) - 2, math.log(1 + math.exp(2) + 1) - 0]
    ce_bg = [math.log(1 + 2 * math.exp(2)) - 0, math.log(math.exp(2) + 2) - 2]
    tri_img = [max(0, 0 - math.sqrt(0.8) + 1), max(0, math.sqrt(2) - math.sqrt(0.4) + 1)]
    tri_bg = [max(0, math.sqrt(2) - 0 + 1), max(0, 0 - math.sqrt(2) + 1)]
    match_img = 0.001 * 2.0  # mean handcrafted e2 vs mean learned e1: squared distance 2
    expected = sum(ce_img) / 2 + sum(ce_bg) / 2 + sum(tri_img) / 2 + sum(tri_bg) / 2 + match_img
    ours = {"weighting": "loss", "triplet_distance": "euclidean"}
    loss, parts = mlsa_loss(tokens, None, text, tau, **ours)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert parts["loss"] == pytest.approx(expected, rel=1e-5)
    assert parts["match"] == pytest.approx(match_img) and "match/background" not in parts
    assert "composition" not in parts  # no components: the regulariser has nothing to compose
    # region weights: image uniform, background only on token 2
    w = T([[1.0, 1.0], [0.0, 1.0]])
    expected_w = sum(ce_img) / 2 + ce_bg[1] + sum(tri_img) / 2 + tri_bg[1] + match_img
    assert mlsa_loss(tokens, w, text, tau, **ours)[0].item() == pytest.approx(expected_w, rel=1e-5)
    # batched tokens (B, N, D) with (G, B, N) weights give the same
    assert mlsa_loss(tokens[None], w[:, None], text, tau, **ours)[0].item() == pytest.approx(expected_w, rel=1e-5)


def test_image_loss_uses_image_group_only():
    text = _toy_text()
    cls = T([[1.0, 0.0]])
    expected = (math.log(2 * math.exp(2) + 1) - 2) + max(0, 1 - math.sqrt(0.8)) + 0.002
    loss, parts = image_loss(cls, text, tau=2.0, groups="image", triplet_distance="euclidean")
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert set(parts) == {"ce", "triplet", "match", "loss"}


def test_image_loss_has_the_text_terms_of_every_component():
    """Image-level training: CE + triplet on the image group, lambda1 matching for image AND components,
    composition when asked (the same terms as the patch loss, METHOD "MLSA")."""
    e1, e2 = T([1.0, 0.0]), T([0.0, 1.0])
    base = _toy_text()
    text = TextFeatures(
        names=[*base.names, "cap"], levels=[*base.levels, "component"],
        normal=torch.cat([base.normal, e1[None]]), normal_each=[*base.normal_each, e1[None]],
        handcrafted=[*base.handcrafted, e1[None]], learned=[*base.learned, e2[None]],
        abnormal=torch.cat([base.abnormal, e2[None]]),
    )
    cls = T([[1.0, 0.0]])
    only_image = (math.log(2 * math.exp(2) + 1) - 2) + max(0, 1 - math.sqrt(0.8)) + 0.002
    loss, parts = image_loss(cls, text, tau=2.0, groups="image", triplet_distance="euclidean")
    assert parts["match/cap"] == pytest.approx(0.002)  # ||e1 - e2||^2 = 2, times lambda1
    assert parts["match"] == pytest.approx(0.004)
    assert loss.item() == pytest.approx(only_image + 0.002, rel=1e-6)
    # composition: learned image e1, target normalize(cap e2 + background e1) -> 1 - 1/sqrt(2)
    with_comp, parts = image_loss(cls, text, tau=2.0, lambda_comp=0.1, groups="image", triplet_distance="euclidean",
                                  composition_form="cosine")
    assert parts["composition"] == pytest.approx(0.1 * (1 - 1 / math.sqrt(2)), rel=1e-6)
    assert with_comp.item() == pytest.approx(loss.item() + parts["composition"], rel=1e-6)


def test_logit_scale_stored_exp_or_number():
    m = torch.nn.Module()
    m.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    assert logit_scale_of(m) == pytest.approx(math.log(1 / 0.07), rel=1e-6)  # public: as stored (log space)
    assert logit_scale_of(m, "exp") == pytest.approx(1 / 0.07, rel=1e-5)
    m.logit_scale.data.fill_(math.log(200.0))
    assert logit_scale_of(m, "exp") == 100.0  # CLIP's own cap
    assert logit_scale_of(m, 50.0) == 50.0
    with pytest.raises(DetectorError, match="tau"):  # checked once, where the settings come in
        TrainConfig(tau="log")


RECORD = {
    "class_name": "bottle",
    "texts": [
        {
            "level": "image",
            "group": "image",
            "normal": ["a photo of a bottle"],
            "abnormal": ["a broken bottle"],
        },
        {
            "level": "background",
            "group": "background",
            "normal": ["white background"],
            "abnormal": ["dirty background"],
        },
        {"level": "component", "group": "cap", "normal": ["a round cap"], "abnormal": ["a cracked cap"]},
        {"level": "texture", "group": "texture", "normal": ["smooth glass"], "abnormal": ["rough glass"]},
    ],
}


@pytest.mark.parametrize("mode", ["features", "tokens"])
def test_gradients_reach_exactly_the_prompt_parameters(tiny_clip_name, mode):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name, pretrained=None).eval()
    model.requires_grad_(False)
    prompts = MultiLevelPrompts(
        model,
        open_clip.get_tokenizer(tiny_clip_name),
        groups_from_record(RECORD),
        PromptConfig(gate_mode=mode),
    )
    text = prompts()
    tokens = torch.nn.functional.normalize(torch.randn(2, 6, 32), dim=-1)
    weights = 1 + torch.rand(len(text.names), 2, 6)
    loss, parts = mlsa_loss(tokens, weights, text, tau=logit_scale_of(model))
    assert "composition" in parts and "match/cap" in parts
    cls_loss, _ = image_loss(tokens[:, 0], text, tau=logit_scale_of(model))
    (loss + cls_loss).backward()
    trained = {"ctx", "abnormal_tokens", "gates"}
    for name, p in prompts.named_parameters():
        assert name in trained and p.grad is not None and p.grad.abs().sum() > 0, name
    grads = prompts.gates.grad
    assert (grads[:, 2] != 0).all()  # texture gates used (normal and abnormal)
    assert (grads[:, [0, 1, 3]] == 0).all()  # absent levels: unused gates
    assert all(q.grad is None for q in model.parameters())


def test_training_steps_lower_the_loss_deterministically(tiny_clip_name):
    import open_clip

    def run() -> tuple[list[float], torch.Tensor]:
        torch.manual_seed(0)
        model = open_clip.create_model(tiny_clip_name, pretrained=None).eval()
        prompts = MultiLevelPrompts(
            model, open_clip.get_tokenizer(tiny_clip_name), groups_from_record(RECORD), PromptConfig()
        )
        tokens = torch.nn.functional.normalize(torch.randn(12, 32), dim=-1)
        opt = torch.optim.SGD(prompts.parameters(), lr=0.05, momentum=0.9)
        history = []
        for _ in range(8):
            loss, _ = mlsa_loss(tokens, None, prompts(), tau=logit_scale_of(model))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
        return history, prompts.ctx.detach().clone()

    h1, ctx1 = run()
    h2, ctx2 = run()
    assert h1[-1] < h1[0]
    assert h1 == h2 and torch.equal(ctx1, ctx2)
