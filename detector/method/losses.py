"""MLSA losses: align (region-weighted) image tokens with the multi-level prompts.

The defaults are the public code's (train_seg/train_cls_finegrained_patch.py, see docs/FIDELITY.md);
every other choice is a named option. For every region group g (image, background, each component) and
the tokens f of the group:

- region weights (``weighting``): ``"features"`` (public) multiplies each token feature by the group's
  region weight w before the logits and the triplet (f -> w f, a per-token temperature; the image group's
  weights are 1); ``"loss"`` keeps f and uses w as the weights of the loss mean;
- alignment cross-entropy (MLSA "L_ce"): logits ``tau * [<f, t_n>, <f, t_a^1..M>]`` with target normal,
  where t_n is the group's normal prototype and t_a^m its handcrafted and learned abnormal features;
- triplet (MLSA "L_tri"): ``max(0, d(f, t_n) - d(f, mean t_a) + margin)``, ``d`` the SQUARED Euclidean
  distance (public) or the plain one (``triplet_distance="euclidean"``), taken over the FEATURE axis (a
  protocol fix: the public code summed over the token axis, which compares token sets, not tokens);
  ``mean t_a`` is the group's abnormal prototype;
- abnormal matching (MLLP "L_match", weight lambda1 = 0.001): squared distance between the mean
  handcrafted and the mean learned abnormal feature, for the image group and the components;
- composition regulariser (weight ``lambda_comp``). ``"public"`` (weight 1, patch level only):
  ``|| mean_r n(L^img_r) - mean_r n(sum_e L^e_r) - mean_r n(N^bg_r) ||_2`` with L the learned abnormal
  features (the component sum taken row by row over the raw, unnormalised features), N the normal ones and
  n() the L2 normalisation; ``"cosine"`` (ours, weight 0.1): ``1 - cos(proto L^img, sum_e proto L^e +
  proto L^bg)``.

Image-level training (``image_loss``) uses the same CE + triplet terms on the CLS feature, without region
weights, against every region group (``image_groups="all"``, public) or the image group only (``"image"``).

Logit scale tau (``logit_scale_of``): CLIP's ``logit_scale`` AS STORED (log space, ~4.6 for the paper's
weights; public), ``"exp"`` for exp(stored) capped at 100 as CLIP itself scales similarities, or a number.
All inputs are L2-normalised features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.method.choices import BACKGROUND, COMPONENT, IMAGE
from detector.method.prompts import TextFeatures

LAMBDA1 = 0.001  # paper's weight of the handcrafted/learned abnormal matching term
LAMBDA_COMP = 1.0  # public: loss_reg enters the patch loss with weight 1
MARGIN = 1.0


def logit_scale_of(clip_model: torch.nn.Module, tau: str | float | None = "stored") -> float:
    """tau for the losses and the textual maps: "stored" (log-space value, public), "exp" (capped at 100) or a number."""
    if tau is None:
        tau = "stored"
    if not isinstance(tau, str):  # a number, checked by TrainConfig (detector.config)
        return float(tau)
    scale = getattr(clip_model, "logit_scale", None)
    stored = math.log(100.0) if scale is None else float(torch.as_tensor(scale).detach().float().reshape(-1)[0])
    return stored if tau == "stored" else float(min(math.exp(stored), 100.0))


def _flatten(tokens: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens (..., D) -> (N, D) and weights (...) -> (N,), checking they agree."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    if weights is None:
        return flat, None
    w = weights.reshape(-1).to(flat)
    if w.shape[0] != flat.shape[0]:
        raise DetectorError(f"loss weights have {w.shape[0]} entries for {flat.shape[0]} tokens")
    return flat, w


def _weighted(tokens: torch.Tensor, weights: torch.Tensor | None, weighting: str
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features, weights of the mean): "features" scales each token by its weight, "loss" keeps it."""
    f, w = _flatten(tokens, weights)
    if w is not None and weighting == "features":
        return f * w[:, None], None
    return f, w


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def alignment_ce(
    tokens: torch.Tensor,
    normal: torch.Tensor,
    abnormal: torch.Tensor,
    tau: float,
    weights: torch.Tensor | None = None,
    weighting: str = "features",
) -> torch.Tensor:
    """MLSA cross-entropy: per token, CE of logits tau*[<f,t_n>, <f,t_a^1..M>] with target 0 (normal); mean."""
    f, w = _weighted(tokens, weights, weighting)
    texts = torch.cat([normal.reshape(1, -1), abnormal.reshape(-1, normal.shape[-1])]).to(f)
    logits = tau * f @ texts.T  # (N, 1 + M)
    per_token = torch.logsumexp(logits, dim=1) - logits[:, 0]
    return _weighted_mean(per_token, w)


def triplet(
    tokens: torch.Tensor,
    normal: torch.Tensor,
    abnormal_mean: torch.Tensor,
    margin: float = MARGIN,
    weights: torch.Tensor | None = None,
    weighting: str = "features",
    distance: str = "squared",
) -> torch.Tensor:
    """MLSA triplet: max(0, d(f, t_n) - d(f, t_a) + margin) per token, d over the feature axis; mean."""
    f, w = _weighted(tokens, weights, weighting)
    d_pos = (f - normal.reshape(1, -1).to(f)).pow(2).sum(dim=-1)
    d_neg = (f - abnormal_mean.reshape(1, -1).to(f)).pow(2).sum(dim=-1)
    if distance == "euclidean":
        d_pos, d_neg = d_pos.sqrt(), d_neg.sqrt()
    return _weighted_mean(F.relu(d_pos - d_neg + margin), w)


def abnormal_matching(handcrafted: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """MLLP matching term ||mean(handcrafted) - mean(learned)||^2 (weighted by lambda1 by the caller)."""
    if handcrafted.shape[0] == 0 or learned.shape[0] == 0:
        return learned.sum() * 0.0
    return (handcrafted.mean(dim=0) - learned.mean(dim=0)).pow(2).sum()


def composition(
    image_learned: torch.Tensor, component_learned: torch.Tensor, background_learned: torch.Tensor
) -> torch.Tensor:
    """Ours ("cosine"): 1 - cos(image, normalize(sum of component features + background))."""
    target = component_learned.reshape(-1, image_learned.shape[-1]).sum(dim=0) + background_learned.reshape(
        -1
    )
    return 1.0 - F.cosine_similarity(image_learned.reshape(-1), target, dim=0, eps=1e-8)


def composition_public(image_learned: torch.Tensor, component_learned_raw: list[torch.Tensor],
                       background_normal: torch.Tensor) -> torch.Tensor:
    """Public: || mean_r n(L^img_r) - mean_r n(sum_e L^e_r) - mean_r n(N^bg_r) ||_2 (rows r of each family).

    ``component_learned_raw``: the components' raw learned abnormal features, summed row by row (they have
    the same rows when each component has one normal text, as in the public code); with unequal row counts
    the sum is taken over the components' mean features instead.
    """
    counts = {c.shape[0] for c in component_learned_raw}
    if len(counts) == 1:
        comp_sum = torch.stack(component_learned_raw).sum(dim=0)  # (R, D)
    else:
        comp_sum = torch.stack([c.mean(dim=0) for c in component_learned_raw]).sum(dim=0, keepdim=True)
    img = F.normalize(image_learned, dim=-1).mean(dim=0)
    comp = F.normalize(comp_sum, dim=-1).mean(dim=0)
    bg = F.normalize(background_normal, dim=-1).mean(dim=0)
    return (img - comp - bg).norm()


def _learned_prototype(text: TextFeatures, g: int) -> torch.Tensor:
    return F.normalize(text.learned[g].mean(dim=0), dim=-1)


def composition_term(text: TextFeatures, form: str = "public") -> torch.Tensor | None:
    """The composition regulariser on the learned abnormal features; None without background or components."""
    comps = [i for i, lv in enumerate(text.levels) if lv == COMPONENT]
    if BACKGROUND not in text.names or not comps:
        return None
    if form == "public":
        raw = text.learned_raw if text.learned_raw is not None else text.learned
        return composition_public(text.learned[text.index(IMAGE)], [raw[i] for i in comps],
                                  text.normal_each[text.index(BACKGROUND)])
    img = _learned_prototype(text, text.index(IMAGE))
    bg = _learned_prototype(text, text.index(BACKGROUND))
    comp = torch.stack([_learned_prototype(text, i) for i in comps])
    return composition(img, comp, bg)


def _group_terms(
    tokens: torch.Tensor,
    weights: torch.Tensor | None,
    text: TextFeatures,
    g: int,
    tau: float,
    lambda1: float,
    margin: float,
    weighting: str,
    triplet_distance: str,
) -> dict[str, torch.Tensor]:
    abnormal = torch.cat([text.handcrafted[g], text.learned[g]])
    terms = {
        "ce": alignment_ce(tokens, text.normal[g], abnormal, tau, weights, weighting),
        "triplet": triplet(tokens, text.normal[g], text.abnormal[g], margin, weights, weighting, triplet_distance),
    }
    if text.levels[g] in (IMAGE, COMPONENT) and lambda1:
        terms["match"] = lambda1 * abnormal_matching(text.handcrafted[g], text.learned[g])
    return terms


def _add(total: torch.Tensor, parts: dict[str, float], key: str, name: str | None, value: torch.Tensor
         ) -> torch.Tensor:
    if name is not None:
        parts[f"{key}/{name}"] = float(value.detach())
    parts[key] = parts.get(key, 0.0) + float(value.detach())
    return total + value


def mlsa_loss(
    tokens: torch.Tensor,
    group_weights: torch.Tensor | None,
    text: TextFeatures,
    tau: float,
    lambda1: float = LAMBDA1,
    lambda_comp: float = LAMBDA_COMP,
    margin: float = MARGIN,
    *,
    weighting: str = "features",
    triplet_distance: str = "squared",
    composition_form: str = "public",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Patch-level MLSA loss: sum over region groups of CE + triplet (+ lambda1 matching), + lambda_comp composition.

    tokens (N, D) normalised patch tokens (or (B, N, D), flattened); group_weights (G, N) (or (G, B, N))
    per group in ``text.names`` order, None = uniform. Returns the loss and its parts as floats.
    """
    n_groups = len(text.names)
    if group_weights is not None and group_weights.shape[0] != n_groups:
        raise DetectorError(f"group weights have {group_weights.shape[0]} rows for {n_groups} prompt groups")
    total = tokens.new_zeros(())
    parts: dict[str, float] = {}
    for g in range(n_groups):
        w = None if group_weights is None else group_weights[g]
        for key, value in _group_terms(tokens, w, text, g, tau, lambda1, margin, weighting,
                                       triplet_distance).items():
            total = _add(total, parts, key, text.names[g], value)
    return _with_composition(total, parts, text, lambda_comp, composition_form)


def _with_composition(total: torch.Tensor, parts: dict[str, float], text: TextFeatures, lambda_comp: float,
                      form: str) -> tuple[torch.Tensor, dict[str, float]]:
    """Add the weighted composition regulariser (when on and defined) and record the final loss."""
    comp = composition_term(text, form) if lambda_comp else None
    if comp is not None:
        total = total + lambda_comp * comp
        parts["composition"] = float(lambda_comp * comp.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def image_loss(
    cls: torch.Tensor,
    text: TextFeatures,
    tau: float,
    lambda1: float = LAMBDA1,
    lambda_comp: float = 0.0,
    margin: float = MARGIN,
    *,
    groups: str = "all",
    triplet_distance: str = "squared",
    composition_form: str = "public",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Image-level MLSA loss on CLS features (B, D), without region weights.

    ``groups="all"`` (public train_cls): CE + triplet of the CLS feature against EVERY region group (image,
    each component, background); ``"image"``: the image group only. lambda1 matching for the image group
    and every component either way. The composition regulariser is off by default (the public image-level
    script has none; set lambda_comp to add it).
    """
    total = cls.new_zeros(())
    parts: dict[str, float] = {}
    image = text.index(IMAGE)
    for g in range(len(text.names)):
        if groups == "all" or g == image:
            for key, value in _group_terms(cls, None, text, g, tau, 0.0, margin, "loss", triplet_distance).items():
                total = _add(total, parts, key, text.names[g] if g != image else None, value)
    for g, level in enumerate(text.levels):
        if level in (IMAGE, COMPONENT) and lambda1:
            value = lambda1 * abnormal_matching(text.handcrafted[g], text.learned[g])
            total = _add(total, parts, "match", text.names[g] if g != image else None, value)
    return _with_composition(total, parts, text, lambda_comp, composition_form)
