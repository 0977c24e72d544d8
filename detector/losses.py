"""MLSA losses: align (region-weighted) image tokens with the multi-level prompts.

For every region group g (image, background, each component) and the tokens f weighted by the
group's region weights:

- alignment cross-entropy (MLSA "L_ce"): logits ``tau * [<f, t_n>, <f, t_a^1..M>]`` with target
  normal, where t_n is the group's normal prototype and t_a^m its handcrafted and learned abnormal features;
- triplet (MLSA "L_tri"): ``max(0, ||f - t_n|| - ||f - mean t_a|| + margin)``, the distances taken over
  the FEATURE axis (the public code summed over the token axis, which compares token sets, not tokens);
  ``mean t_a`` is the group's abnormal prototype (normalised mean of handcrafted and learned features);
- abnormal matching (MLLP "L_match", weight lambda1 = 0.001): squared distance between the mean
  handcrafted and the mean learned abnormal feature, for the image group and the components;
- composition regulariser (weight lambda_comp): the learned abnormal image feature should point where
  the normalised sum of the components' and background's learned abnormal features points
  (``1 - cos``), i.e. "an anomalous image = its components + background".

Image-level training uses the same terms on the CLS features, image group only, no region weights.

Logit scale tau: the EXPONENTIATED CLIP logit scale (``clip_model.logit_scale.exp()``, 100 for
pretrained CLIP), as CLIP itself scales cosine similarities; the public code used the stored log value
(~4.6), which makes the softmax nearly flat. ``logit_scale_of`` gives it; a float in the training
config may override it. All inputs are L2-normalised features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.prompts import BACKGROUND, COMPONENT, IMAGE, TextFeatures

LAMBDA1 = 0.001  # paper's weight of the handcrafted/learned abnormal matching term
LAMBDA_COMP = 0.1  # our choice: a regulariser, small beside the alignment terms (the paper gives no value)
MARGIN = 1.0


def logit_scale_of(clip_model: torch.nn.Module, override: float | None = None) -> float:
    """tau for the losses and the textual anomaly map: ``override`` or exp(stored logit scale), capped at 100."""
    if override is not None:
        return float(override)
    scale = getattr(clip_model, "logit_scale", None)
    if scale is None:
        return 100.0
    return float(min(math.exp(float(torch.as_tensor(scale).detach().float().reshape(-1)[0])), 100.0))


def _flatten(tokens: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens (..., D) -> (N, D) and weights (...) -> (N,), checking they agree."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    if weights is None:
        return flat, None
    w = weights.reshape(-1).to(flat)
    if w.shape[0] != flat.shape[0]:
        raise DetectorError(f"loss weights have {w.shape[0]} entries for {flat.shape[0]} tokens")
    return flat, w


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
) -> torch.Tensor:
    """MLSA cross-entropy: per token, CE of logits tau*[<f,t_n>, <f,t_a^1..M>] with target 0 (normal); weighted mean."""
    f, w = _flatten(tokens, weights)
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
) -> torch.Tensor:
    """MLSA triplet: max(0, ||f - t_n||_2 - ||f - t_a||_2 + margin) per token (distance over features); weighted mean."""
    f, w = _flatten(tokens, weights)
    d_pos = (f - normal.reshape(1, -1).to(f)).norm(dim=-1)
    d_neg = (f - abnormal_mean.reshape(1, -1).to(f)).norm(dim=-1)
    return _weighted_mean(F.relu(d_pos - d_neg + margin), w)


def abnormal_matching(handcrafted: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """MLLP matching term ||mean(handcrafted) - mean(learned)||^2 (weighted by lambda1 by the caller)."""
    if handcrafted.shape[0] == 0 or learned.shape[0] == 0:
        return learned.sum() * 0.0
    return (handcrafted.mean(dim=0) - learned.mean(dim=0)).pow(2).sum()


def composition(
    image_learned: torch.Tensor, component_learned: torch.Tensor, background_learned: torch.Tensor
) -> torch.Tensor:
    """Image = components + background: 1 - cos(image, normalize(sum of component features + background))."""
    target = component_learned.reshape(-1, image_learned.shape[-1]).sum(dim=0) + background_learned.reshape(
        -1
    )
    return 1.0 - F.cosine_similarity(image_learned.reshape(-1), target, dim=0, eps=1e-8)


def _learned_prototype(text: TextFeatures, g: int) -> torch.Tensor:
    return F.normalize(text.learned[g].mean(dim=0), dim=-1)


def composition_term(text: TextFeatures) -> torch.Tensor | None:
    """The composition regulariser on the learned abnormal prototypes; None without background or components."""
    comps = [i for i, lv in enumerate(text.levels) if lv == COMPONENT]
    if BACKGROUND not in text.names or not comps:
        return None
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
) -> dict[str, torch.Tensor]:
    abnormal = torch.cat([text.handcrafted[g], text.learned[g]])
    terms = {
        "ce": alignment_ce(tokens, text.normal[g], abnormal, tau, weights),
        "triplet": triplet(tokens, text.normal[g], text.abnormal[g], margin, weights),
    }
    if text.levels[g] in (IMAGE, COMPONENT) and lambda1:
        terms["match"] = lambda1 * abnormal_matching(text.handcrafted[g], text.learned[g])
    return terms


def mlsa_loss(
    tokens: torch.Tensor,
    group_weights: torch.Tensor | None,
    text: TextFeatures,
    tau: float,
    lambda1: float = LAMBDA1,
    lambda_comp: float = LAMBDA_COMP,
    margin: float = MARGIN,
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
        for key, value in _group_terms(tokens, w, text, g, tau, lambda1, margin).items():
            total = total + value
            parts[f"{key}/{text.names[g]}"] = float(value.detach())
            parts[key] = parts.get(key, 0.0) + float(value.detach())
    return _with_composition(total, parts, text, lambda_comp)


def _with_composition(total: torch.Tensor, parts: dict[str, float], text: TextFeatures, lambda_comp: float
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """Add the weighted composition regulariser (when on and defined) and record the final loss."""
    comp = composition_term(text) if lambda_comp else None
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """Image-level MLSA loss on CLS features (B, D): the same terms as ``mlsa_loss``, without region weights.

    CE + triplet align the CLS feature with the image group only (a whole-image feature has no region
    to align with a background or component text); the text-only terms are those of the patch loss:
    lambda1 matching for the image group AND every component (the shared abnormal tokens are trained
    through them), and the composition regulariser. The latter is off here by default so that a training
    step that adds both losses counts it once (set lambda_comp when image-level training runs alone).
    """
    g = text.index(IMAGE)
    total = cls.new_zeros(())
    parts: dict[str, float] = {}
    for key, value in _group_terms(cls, None, text, g, tau, lambda1, margin).items():
        total = total + value
        parts[key] = float(value.detach())
    for i, level in enumerate(text.levels):
        if level == COMPONENT and lambda1:
            value = lambda1 * abnormal_matching(text.handcrafted[i], text.learned[i])
            total = total + value
            parts[f"match/{text.names[i]}"] = float(value.detach())
            parts["match"] = parts.get("match", 0.0) + float(value.detach())
    return _with_composition(total, parts, text, lambda_comp)
