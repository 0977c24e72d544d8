"""The settings of one training run, checked once at the boundary: ``TrainConfig`` and its value rules.

Every other module trusts a ``TrainConfig``: the method (``detector.method``) reads its fields, the run layer
fills it (``detector.recipes``: a recipe < a config file < flags) and the checkpoint records it in full. The
check of the method's options lives here, beside the fields it checks; their choices are
``detector.method.choices`` (the public code's first), which the method dispatches on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from detector.errors import DetectorError
from detector.method.choices import BASELINES, CHOICES, TAU_MODES, VV_BLOCK_WORDS
from fsad_data.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    to_config,
)


def check_method_options(config: TrainConfig) -> None:
    """One clear line for a method option with a value outside its choices (``TrainConfig.__post_init__``: a
    config built in Python, not through ``from_dict``, is checked by the same rules as a file or a flag)."""
    for name, choices in CHOICES.items():
        value = getattr(config, name)
        if value not in choices:
            raise DetectorError(f"{name}={value!r} is not one of {', '.join(choices)}")
    for name, rule in (("tau", _tau), ("gate_init", _gate_init), ("vv_blocks", _vv_blocks)):
        try:
            setattr(config, name, rule(getattr(config, name)))
        except ValueError as e:
            raise DetectorError(f"{name}={getattr(config, name)!r}: {e}") from None


PROMPT_FIELDS = ("n_ctx", "n_ctx_ab", "n_pro_ab", "init_std", "gate_mode", "gate_init", "prototype", "truncate",
                 "period")
TEXT_CHECKPOINTING = ("auto", "on", "off")


# value types pydantic checks (fsad_data.config.to_config): strict integers, so true, "3" and 3.0 are not counts
Count = PositiveInt
Epochs = NonNegativeInt
Text = Annotated[str, Field(strict=True)]  # a class folder name: `class_name: 01` would silently read as "1"
TAU_MAX = 1000.0  # a logit scale; CLIP stores log(100)


def _tau(value: Any) -> Any:
    """'stored', 'exp' or a positive finite number (text numbers accepted, as `--set tau=50` gives them)."""
    if value in TAU_MODES:
        return value
    expected = f"'stored', 'exp' or a finite number more than 0 and at most {TAU_MAX:g}"
    if isinstance(value, bool):
        raise ValueError(expected)  # noqa: TRY004 - pydantic reports ValueError as the field's error
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    if not (math.isfinite(number) and 0 < number <= TAU_MAX):
        raise ValueError(expected)
    return number


def _gate_init(value: Any) -> Any:
    """'randn' (N(0, 1) draws, public) or a finite constant for the gate logits."""
    if value == "randn":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("use 'randn' or a number") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError("use 'randn' or a finite number")
    return number


def _vv_blocks(value: Any) -> Any:
    """None, 'all' (every block, public), 'half' or a number of final blocks (at least 1)."""
    if value is None or value in VV_BLOCK_WORDS:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("a number of blocks, 'all' or 'half'") from None
    if isinstance(value, bool) or number < 1 or number != float(value):
        raise ValueError("at least 1 whole block ('all' or unset: every block)")
    return number


Tau = Annotated[str | float, BeforeValidator(_tau)]


@dataclass
class TrainConfig:
    """Everything one training run depends on (saved in full in the checkpoint)."""

    captions: str | None = None  # caption dataset folder or Hub id (unused with baseline="promptad")
    data: str = ""  # data set root
    class_name: Text = ""
    shots: Count = 4
    seed: Seed = 0
    shots_file: str | None = None
    out: str = "out/checkpoint"
    backbone: str = "ViT-B-16-plus-240"
    pretrained: str = "laion400m_e32"  # "none" = random weights, an open_clip tag, or a local file/folder
    taps: list[NonNegativeInt] | None = None  # tapped blocks for the visual memory (default: 3 and 8 of 12, scaled)
    epochs: Epochs = 100  # pixel-level prompt training (paper: 100)
    image_epochs: Epochs = 50  # image-level prompt training (paper: 50)
    lr: PositiveFloat = 0.002
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 5e-4
    lr_min: NonNegativeFloat = 1e-5
    lambda1: NonNegativeFloat = 0.001
    # the method's options (detector.method.options; defaults = the public code, docs/FIDELITY.md; ours: --recipe ours)
    recipe: str = "paper"  # the recipe these settings came from (paper, ours, a file), for the record
    tau: Tau = "stored"  # "stored" (CLIP's log-space logit scale, public), "exp" (capped at 100) or a number
    vv_blocks: int | str | None = None  # final blocks with a V-V branch: None/"all" = every block (public), "half"
    prototype: str = "raw_mean"  # group prototypes: raw_mean (public) | unit_mean
    extra_texts: bool = False  # the image group's extra sentences of the caption record (ours: True)
    component_texts: str = "one"  # a component's abnormal texts: one drawn with the seed (public) | all (ours)
    region_weighting: str = "features"  # features (region weights scale the tokens, public) | loss (weighted mean)
    triplet_distance: str = "squared"  # squared (public) | euclidean
    composition: str = "public"  # public | cosine
    lambda_comp: NonNegativeFloat = 1.0  # composition weight in the pixel loss (public 1; ours 0.1)
    image_lambda_comp: NonNegativeFloat = 0.0  # composition weight in the image loss (public 0; ours 0.1)
    image_groups: str = "all"  # CLS trained against all region groups (public) | image
    image_score_group: str = "matched"  # CLS text score: matched group (public) | image
    image_visual_max: str = "upsampled"  # image score's visual max: upsampled map (public) | grid
    device: str = "cpu"
    precision: str = "fp32"
    baseline: str | None = None  # None (FineGrainedAD) or "promptad" (class-name prompts, no regions)
    drop_levels: list[str] = field(default_factory=list)  # ablations, e.g. ["component"]
    layout: str = "auto"  # data set layout for fsad_data.read_dataset
    # MLLP sizes (PromptConfig); n_pro is per prompt set
    n_pro_pixel: Count = 1
    n_pro_image: Count = 3
    n_ctx: Count = 4
    n_ctx_ab: Count = 1
    n_pro_ab: Count = 4
    init_std: NonNegativeFloat = 0.02
    gate_mode: str = "tokens"  # tokens (public) | features
    gate_init: float | str = "randn"  # randn (public N(0, 1)) | a constant
    truncate: bool = True
    period: bool = True  # "[ctx] D." as the public prompt strings (ours: false)
    # MLSA region aggregation
    region_knn: Count = 5
    region_boost: PositiveFloat = 1.5
    region_assign: str = "nearest"  # nearest centre (public) | parent (DPC chain)
    region_scale_distance: bool = True  # distances / sqrt(n features) (public)
    region_match: str = "token_mean"  # component -> cluster by its mean token (public) | feature_mean
    text_checkpointing: str = "auto"  # auto | on | off: recompute the text blocks in backward (see text_checkpoint)
    restart: bool = False  # discard the resumable state in <out>.partial/ and train from the first epoch
    on_error: Literal["raise", "skip"] = "raise"  # a normal train image that does not decode: stop, or leave it out

    def __post_init__(self) -> None:
        if self.baseline is not None and self.baseline not in BASELINES:
            raise DetectorError(f"baseline {self.baseline!r} is unknown: use {' or '.join(BASELINES)} or leave it unset")
        if int(self.shots) < 1:
            raise DetectorError(f"shots={self.shots}: need at least one normal shot")
        if int(self.epochs) < 0 or int(self.image_epochs) < 0:
            raise DetectorError("epochs and image_epochs must be >= 0")
        if self.text_checkpointing not in TEXT_CHECKPOINTING:
            raise DetectorError(f"text_checkpointing={self.text_checkpointing!r}: use one of "
                                f"{', '.join(TEXT_CHECKPOINTING)}")
        check_method_options(self)
        self.drop_levels = list(self.drop_levels or [])
        if self.taps is not None:
            self.taps = list(self.taps)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config", **overrides: Any) -> TrainConfig:
        """Build from a mapping, every value type-checked (unknown keys are an error), then apply non-None
        overrides."""
        data = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        try:
            return to_config(cls, data, source)
        except ConfigError as e:
            raise DetectorError(str(e)) from None
        except DetectorError as e:  # a check of __post_init__ (method options): say where the value came from
            raise DetectorError(f"{source}: {e}") from None

    def prompt_config(self, n_pro: int) -> dict[str, Any]:
        """PromptConfig fields (JSON-ready) for one prompt set."""
        d = {k: getattr(self, k) for k in PROMPT_FIELDS}
        d.update(n_pro=int(n_pro), drop_levels=list(self.drop_levels))
        return d


