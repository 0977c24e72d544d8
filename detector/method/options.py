"""The method's options, read from a TrainConfig in one place: loss functions, region settings, tau.

Each option's default is the public code's behaviour (docs/FIDELITY.md has the table); the ``ours`` recipe
(detector/configs/recipes/ours.json) sets the project's own choices. Training (detector.run.train) calls only
these helpers, so a new option is wired here and nowhere else.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from detector.errors import DetectorError

if TYPE_CHECKING:
    from torch import Tensor

    from detector.method.prompts import TextFeatures
    from detector.method.regions import RegionConfig
    from detector.run.train import TrainConfig

LossFn = Callable[["TextFeatures"], "tuple[Tensor, dict[str, float]]"]

# TrainConfig fields that choose the computation (recorded in the checkpoint meta and in metrics.json)
METHOD_FIELDS = (
    "vv_blocks", "tau", "gate_mode", "gate_init", "prototype", "period", "extra_texts", "region_weighting",
    "triplet_distance", "composition", "lambda_comp", "image_groups", "image_score_group", "region_assign",
    "region_scale_distance", "region_match", "region_knn", "region_boost", "lambda1", "image_lambda_comp", "image_visual_max",
)
CHOICES: dict[str, tuple[str, ...]] = {
    "gate_mode": ("tokens", "features"),
    "prototype": ("raw_mean", "unit_mean"),
    "region_weighting": ("features", "loss"),
    "triplet_distance": ("squared", "euclidean"),
    "composition": ("public", "cosine"),
    "image_groups": ("all", "image"),
    "image_score_group": ("matched", "image"),
    "image_visual_max": ("upsampled", "grid"),
    "region_assign": ("nearest", "parent"),
    "region_match": ("token_mean", "feature_mean"),
}


def check_method_options(config: TrainConfig) -> None:
    """One clear line for a method option with a value outside its choices (TrainConfig.__post_init__)."""
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise DetectorError(f"{name}={value!r} is not one of {', '.join(choices)}")
    tau = config.tau
    if isinstance(tau, str) and tau not in ("stored", "exp"):
        try:
            config.tau = float(tau)
        except ValueError:
            raise DetectorError(f"tau={tau!r}: use 'stored' (CLIP's log-space value), 'exp' or a number") from None
    if not isinstance(config.tau, str) and (isinstance(config.tau, bool) or float(config.tau) <= 0):
        raise DetectorError(f"tau={config.tau!r} must be 'stored', 'exp' or a positive number")
    if isinstance(config.gate_init, str) and config.gate_init != "randn":
        try:
            config.gate_init = float(config.gate_init)
        except ValueError:
            raise DetectorError(f"gate_init={config.gate_init!r}: use 'randn' or a number") from None
    vv = config.vv_blocks
    if vv is not None and vv not in ("all", "half"):
        try:
            config.vv_blocks = int(vv)
        except (TypeError, ValueError):
            raise DetectorError(f"vv_blocks={vv!r}: a number of blocks, 'all' or 'half'") from None
        if isinstance(vv, bool) or config.vv_blocks < 1:
            raise DetectorError(f"vv_blocks={vv!r}: at least 1 block ('all' or unset: every block)")


def method_settings(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The computation-choosing settings of a TrainConfig (or its asdict) as plain JSON."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    out = {k: get(k) for k in METHOD_FIELDS}
    out["recipe"] = get("recipe")
    return out


def region_config(config: TrainConfig) -> RegionConfig:
    """RegionConfig of a TrainConfig."""
    from detector.method.regions import RegionConfig

    return RegionConfig(knn=config.region_knn, boost=config.region_boost, assign=config.region_assign,
                        scale_distance=bool(config.region_scale_distance), match=config.region_match)


def pixel_loss(config: TrainConfig, tokens: Tensor, weights: Tensor, tau: float) -> LossFn:
    """The pixel-level (patch token) MLSA loss of a TrainConfig, as a function of the text features."""
    from detector.method import losses

    def fn(text: TextFeatures) -> tuple[Tensor, dict[str, float]]:
        return losses.mlsa_loss(tokens, weights, text, tau, config.lambda1, config.lambda_comp,
                                weighting=config.region_weighting, triplet_distance=config.triplet_distance,
                                composition_form=config.composition)
    return fn


def image_loss(config: TrainConfig, cls: Tensor, tau: float) -> LossFn:
    """The image-level (CLS) MLSA loss of a TrainConfig (composition weight ``image_lambda_comp``, public 0)."""
    from detector.method import losses

    def fn(text: TextFeatures) -> tuple[Tensor, dict[str, float]]:
        return losses.image_loss(cls, text, tau, config.lambda1, config.image_lambda_comp,
                                 groups=config.image_groups,
                                 triplet_distance=config.triplet_distance, composition_form=config.composition)
    return fn
