"""The method's options, read from a TrainConfig in one place: loss functions, region settings, tau.

Each option's default is the public code's behaviour (docs/FIDELITY.md has the table); the ``ours`` recipe
(detector/configs/recipes/ours.json) sets the project's own choices. Fitting (``detector.method.fit``) reads the
options only through these helpers; an option's values are ``detector.method.choices`` and its check is
``detector.config`` (docs/ARCHITECTURE.md, "what a change touches").
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from detector.config import TrainConfig
    from detector.method.prompts import TextFeatures
    from detector.method.regions import RegionConfig  # torch: options is read torch-free (METHOD_FIELDS)

LossFn = Callable[["TextFeatures"], "tuple[Tensor, dict[str, float]]"]

# TrainConfig fields that choose the computation (recorded in the checkpoint meta and in metrics.json)
METHOD_FIELDS = (
    "vv_blocks", "tau", "gate_mode", "gate_init", "prototype", "period", "extra_texts", "region_weighting",
    "triplet_distance", "composition", "lambda_comp", "image_groups", "image_score_group", "region_assign",
    "region_scale_distance", "region_match", "region_knn", "region_boost", "lambda1", "image_lambda_comp", "image_visual_max",
    "component_texts",
)


def method_settings(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """The computation-choosing settings of a TrainConfig (or its asdict) as plain JSON."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    out = {k: get(k) for k in METHOD_FIELDS}
    out["recipe"] = get("recipe")
    return out


def region_config(config: TrainConfig) -> RegionConfig:
    """RegionConfig of a TrainConfig."""
    from detector.method.regions import RegionConfig  # torch: options is read torch-free (METHOD_FIELDS)

    return RegionConfig(knn=config.region_knn, boost=config.region_boost, assign=config.region_assign,
                        scale_distance=bool(config.region_scale_distance), match=config.region_match)


def pixel_loss(config: TrainConfig, tokens: Tensor, weights: Tensor, tau: float) -> LossFn:
    """The pixel-level (patch token) MLSA loss of a TrainConfig, as a function of the text features."""
    from detector.method import losses  # torch: options is read torch-free (METHOD_FIELDS)

    def fn(text: TextFeatures) -> tuple[Tensor, dict[str, float]]:
        return losses.mlsa_loss(tokens, weights, text, tau, config.lambda1, config.lambda_comp,
                                weighting=config.region_weighting, triplet_distance=config.triplet_distance,
                                composition_form=config.composition)
    return fn


def image_loss(config: TrainConfig, cls: Tensor, tau: float) -> LossFn:
    """The image-level (CLS) MLSA loss of a TrainConfig (composition weight ``image_lambda_comp``, public 0)."""
    from detector.method import losses  # torch: options is read torch-free (METHOD_FIELDS)

    def fn(text: TextFeatures) -> tuple[Tensor, dict[str, float]]:
        return losses.image_loss(cls, text, tau, config.lambda1, config.image_lambda_comp,
                                 groups=config.image_groups,
                                 triplet_distance=config.triplet_distance, composition_form=config.composition)
    return fn
