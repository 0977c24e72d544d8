"""Training FineGrainedAD for one class from files: the ``TrainConfig`` and the file-level entry points.

``train`` (the ``detector train`` command) and ``train_and_save`` (each benchmark cell), through ``train_model``:
1. shots: ``detector.store.data`` (normal train images, by sorted file name; a shots file wins);
2. caption record: ``detector.store.captions.load_class_record`` (the PromptAD baseline uses class-name
   prompts and no record);
3. the frozen backbone: ``detector.method.model.load_backbone_for`` (an open_clip name or JSON config, weights tag);
4. ``detector.method.fit.fit``: the method's training on those tensors (encoding, MLSA regions, both prompt sets);
5. the checkpoint: written only at the end, atomically, so a Ctrl-C leaves no half checkpoint.

Interruptible and resumable: after every epoch the state is saved in ``<out>.partial/``
(``detector.store.train_state``); rerunning the same command continues from there, and the folder goes when the
checkpoint is written. A Ctrl-C prints one line saying what was kept.

The method's options (``tau`` = CLIP's stored log-space logit scale by default, as the public code, V-V
blocks, loss forms, ...) are read in ``detector.method.options``; docs/FIDELITY.md lists them; ``detector.recipes``
builds a TrainConfig from a recipe, a config file and flags.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, Field
from rich.console import Console

from detector.errors import DetectorError
from detector.method.options import check_method_options
from detector.run.outputs import epoch_bars
from detector.store import captions, data
from fsad_data import readable_name
from fsad_data.config import (
    ConfigError,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Seed,
    read_config_file,
    to_config,
)

if TYPE_CHECKING:
    from detector.method.model import FineGrainedAD

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
    if value in ("stored", "exp"):
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
        if self.baseline not in (None, "promptad"):
            raise DetectorError(f"baseline {self.baseline!r} is unknown: use 'promptad' or leave it unset")
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
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML or JSON config (``fsad_data.config``); keyword overrides that are not None win (the CLI's
        flags)."""
        try:
            raw = read_config_file(path)
        except ConfigError as e:
            raise DetectorError(str(e)) from None
        return cls.from_dict(raw, source=str(path), **overrides)

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


def loss_line(label: str, history: list[float]) -> str:
    """One line that shows a prompt set's loss going down, e.g. 'pixel prompts: loss 2.31 -> 0.87 over 100 epochs'."""
    if not history:
        return f"{label}: no epochs"
    return f"{label}: loss {history[0]:.4g} -> {history[-1]:.4g} over {len(history)} epochs"


def load_shots(config: TrainConfig) -> tuple[list[np.ndarray], list[str]]:
    """The shot images (RGB uint8) and their file names (``detector.store.data``: by sorted file name or a shots file)."""
    if not config.data:
        raise DetectorError("no data root: pass --data ROOT (the data set folder)")
    if not config.class_name:
        raise DetectorError("no class: pass --class NAME")
    samples = data.class_samples(config.data, config.class_name, layout=config.layout)
    if config.on_error == "skip":  # only the shot candidates (normal train images) are decoded to check them
        candidates = [s for s in samples if s.split == "train" and int(s.label) == 0]
        good, skipped = data.readable(candidates, "skip")
        for k in skipped:
            print(f"skipped {k['path']}: {k['error']}", file=sys.stderr, flush=True)
        left_out = {s.id for s in candidates} - {s.id for s in good}
        samples = [s for s in samples if s.id not in left_out]
    shots = data.select_class_shots(samples, config.class_name, int(config.shots), int(config.seed),
                                    shots_file=config.shots_file)
    if config.baseline != "promptad" and config.captions:  # the shots are the files the captions were built from
        captions.check_shot_files(config.captions, config.class_name, shots)
    return data.load_images(shots), [s.file_name for s in shots]


def caption_record(config: TrainConfig) -> dict | None:
    """The class's MFSC caption record; None for the PromptAD baseline (class-name prompts)."""
    if config.baseline == "promptad":
        return None
    if not config.captions:
        raise DetectorError("no caption dataset: pass --captions DIR_OR_HUB_ID (an `mfsc build` output), "
                            "or --baseline promptad for class-name-only prompts")
    return captions.load_class_record(config.captions, config.class_name)


def train_model(config: TrainConfig, progress: bool = True, shot_images: list[np.ndarray] | None = None,
                shot_names: list[str] | None = None, record: dict | None = None,
                resume: bool = False) -> FineGrainedAD:
    """Train and return the in-memory FineGrainedAD (``train`` saves it). Tests may pass images/record directly.

    ``resume``: save the resumable state after every epoch in ``<out>.partial/`` and continue from it
    when it is there (``train`` does; the caller removes the folder once the checkpoint is written).
    """
    from detector.method.fit import fit
    from detector.method.model import load_backbone_for
    from detector.store.train_state import ResumableState, image_digests, run_fingerprint

    t0 = time.perf_counter()
    if shot_images is None:
        shot_images, shot_names = load_shots(config)
    if config.baseline == "promptad":
        record = None
    elif record is None:
        record = caption_record(config)
    digests = image_digests(shot_images)
    state = ResumableState(config, shot_names, record, digests) if resume else None
    object_name = str((record or {}).get("object_name") or readable_name(config.class_name))
    bb_meta = {"name": config.backbone, "pretrained": config.pretrained, "tap_layers": config.taps,
               "vv_blocks": config.vv_blocks, "init_seed": 0}
    backbone = load_backbone_for(bb_meta, config.device, config.precision)
    # "name" stays as given (an open_clip name or a JSON config path); "model_name" is open_clip's name
    bb_meta.update(model_name=backbone.name, pretrained=backbone.pretrained, tap_layers=list(backbone.tap_layers),
                   weights_sha256=backbone.weights_sha256, vv_blocks=backbone.vv_blocks)
    t_load = time.perf_counter() - t0
    with epoch_bars(progress) as report:
        model = fit(config, backbone, shot_images, record, object_name, state=state, report=report)
    history = model.meta["history"]
    if progress:
        console = Console(highlight=False)
        console.print(loss_line("pixel prompts", history["pixel_loss"]))
        console.print(loss_line("image prompts", history["image_loss"]))
    model.meta.update(class_name=config.class_name, shots=list(shot_names or []), backbone=bb_meta,
                      run_fingerprint=run_fingerprint(config, shot_names, record, digests))
    model.meta["timing_s"] = {"load": t_load, **model.meta["timing_s"]}
    return model


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train one class and write its checkpoint folder (atomically, only at the end); returns the folder.

    Resumable: a rerun after an interruption continues from ``<out>.partial/`` (removed once the checkpoint
    is written); a Ctrl-C prints one line saying so.
    """
    from detector.store.train_state import describe_partial

    try:
        train_and_save(config, progress=progress, log=print if progress else None)
    except KeyboardInterrupt:
        print(describe_partial(config), file=sys.stderr, flush=True)
        raise
    return Path(config.out)


def train_and_save(config: TrainConfig, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> FineGrainedAD:
    """Resumable training, then the checkpoint, then the resumable state removed; returns the in-memory model.

    Before any work: an ``--out`` that is not this tool's checkpoint is refused, and the folder is locked
    against a second run. A checkpoint of exactly this run already in place (a rerun, or a run killed while
    removing its state) wins: it is loaded, the leftover state removed, nothing trained (``--restart`` retrains).
    """
    from detector.run.outputs import output_lock
    from detector.store.checkpoint import check_replaceable
    from detector.store.train_state import (
        discard_state,
        finished_checkpoint,
        image_digests,
        run_fingerprint,
    )

    out = Path(config.out)
    check_replaceable(out)
    with output_lock(out):
        check_replaceable(out)  # again under the lock: another run may have written it meanwhile
        shot_images, shot_names = load_shots(config)
        record = caption_record(config)
        if not config.restart and finished_checkpoint(
                config, run_fingerprint(config, shot_names, record, image_digests(shot_images))):
            from detector.method.model import load_detector

            discard_state(config)
            _complete_card(out)
            if log is not None:
                log(f"{out} already holds the checkpoint of this run (same settings, shots and captions); nothing "
                    "to train (--restart retrains)")
            return load_detector(out, device=config.device, precision=config.precision)
        model = train_model(config, progress=progress, shot_images=shot_images, shot_names=shot_names,
                            record=record, resume=True)
        model.save(out)
        discard_state(config)
    return model


def _complete_card(out: Path) -> None:
    """A run killed between writing its checkpoint and the checkpoint's README.md: the rerun writes the card (and
    drops the temporary file a kill inside that write left), so it ends as an uninterrupted run."""
    from detector.store.model_card import CARD_FILE, write_card

    for tmp in out.glob(f".{CARD_FILE}.*.tmp"):
        tmp.unlink(missing_ok=True)
    if not (out / CARD_FILE).is_file():
        write_card(out)
