"""Training FineGrainedAD for one class: MLLP prompts aligned with MLSA regions on k normal shots.

What ``train`` does, in order:
1. shots: ``fsad_data.select_shots`` (normal train images, by sorted file name; a shots file wins);
2. caption record: ``detector.captions.load_class_record`` (the PromptAD baseline uses class-name
   prompts and no record);
3. the frozen backbone encodes the shots ONCE: CLS, V-V patch tokens and taps at the model grid, and
   V-V patch tokens of the 4x4-tiled 4S-pixel shot for the region aggregation; every epoch reuses them;
4. MLSA region weights from the untrained normal prototypes (uniform for the baseline, or when the
   background level is dropped: there is then no background text to cluster against);
5. two prompt sets trained one after the other, as in the paper: the pixel set (n_pro = 1,
   ``epochs`` epochs of ``mlsa_loss`` on the region-weighted patch tokens of all shots in one batch),
   then the image set (n_pro = 3, ``image_epochs`` epochs of ``image_loss`` on the shots' CLS
   features). Each has its own SGD (lr, momentum, weight decay) and cosine schedule to ``lr_min``.
   The number of epochs is fixed: nothing is ever selected on test data;
6. the checkpoint: written only at the end, atomically, so a Ctrl-C leaves no half checkpoint.

Interruptible and resumable (``train``): after every epoch the resumable state is saved atomically in
``<out>.partial/`` (see ``ResumableState``); rerunning the same command continues from there and writes a
checkpoint bit-identical to an uninterrupted run; the folder goes when the checkpoint is written. The
shot features and region weights are stored there too, once, before the first epoch: recomputing them
costs several pixel epochs of ViT-B-16-plus-240 on a 2-core CPU (bench/bench_train.py, real synthetic
record, 1 thread: about 65 s against 22 s per pixel epoch; the 4x4-tiled pass dominates), and a GPU's
encoder need not be bit-reproducible.
Saving the per-epoch state costs about 15 ms (0.2% of a pixel epoch), so it is done after every epoch.

Deterministic for a seed on CPU (seeded prompt initialisation, deterministic algorithms, no data
shuffling). The method's options (``tau`` = CLIP's stored log-space logit scale by default, as the public
code, V-V blocks, loss forms, ...) are read in ``detector.method``; docs/FIDELITY.md lists them.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detector.errors import DetectorError
from fsad_data.config import ConfigError, read_config_file, to_config

PROMPT_FIELDS = ("n_ctx", "n_ctx_ab", "n_pro_ab", "init_std", "gate_mode", "gate_init", "prototype", "truncate")
# where and how a run is written, and how its memory is spent: left out of the resume fingerprint
RUN_ONLY_FIELDS = ("out", "restart", "text_checkpointing")
PHASES = ("pixel", "image")
STATE, FEATURES = "state", "features"  # the two checkpoint_io folders inside <out>.partial/
TEXT_CHECKPOINTING = ("auto", "on", "off")
TEXT_CHECKPOINT_AUTO_BYTES = 1 << 30  # "auto" checkpoints a prompt set whose kept text activations exceed this


@dataclass
class TrainConfig:
    """Everything one training run depends on (saved in full in the checkpoint)."""

    captions: str | None = None  # caption dataset folder or Hub id (unused with baseline="promptad")
    data: str = ""  # data set root
    class_name: str = ""
    shots: int = 4
    seed: int = 0
    shots_file: str | None = None
    out: str = "out/checkpoint"
    backbone: str = "ViT-B-16-plus-240"
    pretrained: str = "laion400m_e32"  # "none" = random weights, an open_clip tag, or a local file/folder
    taps: list[int] | None = None  # tapped blocks for the visual memory (default: 3 and 8 of 12, scaled)
    epochs: int = 100  # pixel-level prompt training (paper: 100)
    image_epochs: int = 50  # image-level prompt training (paper: 50)
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_min: float = 1e-5
    lambda1: float = 0.001
    # the method's options (detector.method; defaults = the public code, docs/FIDELITY.md; ours: --recipe ours)
    recipe: str = "paper"  # the recipe these settings came from (paper, ours, a file), for the record
    tau: str | float = "stored"  # "stored" (CLIP's log-space logit scale, public), "exp" (capped at 100) or a number
    vv_blocks: int | str | None = None  # final blocks with a V-V branch: None/"all" = every block (public), "half"
    prototype: str = "raw_mean"  # group prototypes: raw_mean (public) | unit_mean
    extra_texts: bool = False  # the image group's extra sentences of the caption record (ours: True)
    region_weighting: str = "features"  # features (region weights scale the tokens, public) | loss (weighted mean)
    triplet_distance: str = "squared"  # squared (public) | euclidean
    composition: str = "public"  # public | cosine
    lambda_comp: float = 1.0  # composition weight in the pixel loss (public 1; ours 0.1)
    image_lambda_comp: float = 0.0  # composition weight in the image loss (public 0; ours 0.1)
    image_groups: str = "all"  # CLS trained against all region groups (public) | image
    image_score_group: str = "matched"  # CLS text score: matched group (public) | image
    image_visual_max: str = "upsampled"  # image score's visual max: upsampled map (public) | grid
    device: str = "cpu"
    precision: str = "fp32"
    baseline: str | None = None  # None (FineGrainedAD) or "promptad" (class-name prompts, no regions)
    drop_levels: list[str] = field(default_factory=list)  # ablations, e.g. ["component"]
    layout: str = "auto"  # data set layout for fsad_data.read_dataset
    # MLLP sizes (PromptConfig); n_pro is per prompt set
    n_pro_pixel: int = 1
    n_pro_image: int = 3
    n_ctx: int = 4
    n_ctx_ab: int = 1
    n_pro_ab: int = 4
    init_std: float = 0.02
    gate_mode: str = "tokens"  # tokens (public) | features
    gate_init: float | str = "randn"  # randn (public N(0, 1)) | a constant
    truncate: bool = True
    # MLSA region aggregation
    region_knn: int = 5
    region_boost: float = 1.5
    region_assign: str = "nearest"  # nearest centre (public) | parent (DPC chain)
    region_scale_distance: bool = True  # distances / sqrt(n features) (public)
    text_checkpointing: str = "auto"  # auto | on | off: recompute the text blocks in backward (see text_checkpoint)
    restart: bool = False  # discard the resumable state in <out>.partial/ and train from the first epoch

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
        from detector.method import check_method_options

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

    def prompt_config(self, n_pro: int) -> dict[str, Any]:
        """PromptConfig fields (JSON-ready) for one prompt set."""
        d = {k: getattr(self, k) for k in PROMPT_FIELDS}
        d.update(n_pro=int(n_pro), drop_levels=list(self.drop_levels))
        return d


def _set_lr_schedule(params: list, config: TrainConfig, epochs: int):
    import torch

    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=config.lr_min)
    return opt, sched


def _fit(prompts: Any, loss_fn: Any, epochs: int, config: TrainConfig, progress: Any, label: str,
         history: list[float], optim_state: dict | None = None,
         on_epoch: Callable[[Any, Any], None] | None = None) -> list[float]:
    """Full-batch SGD steps of ``loss_fn(text_features)`` on the trainable prompt vectors until ``epochs``.

    ``history`` holds the losses of the epochs already done (a resumed run, with the SGD and schedule
    state ``optim_state`` they left); it is extended in place. ``on_epoch(opt, sched)`` runs after each step.
    """
    params = [p for p in prompts.parameters() if p.requires_grad]
    opt, sched = _set_lr_schedule(params, config, epochs)
    if 0 < len(history) < epochs:
        if optim_state is None:
            raise DetectorError(f"{label}: resumable state has {len(history)} epochs but no optimiser state; "
                                "delete the .partial folder or pass --restart")
        _load_optim(opt, sched, optim_state)
    task = None
    if progress is not None:
        task = progress.add_task(label, total=epochs, completed=len(history),
                                 loss=history[-1] if history else float("nan"))
    while len(history) < epochs:
        opt.zero_grad(set_to_none=True)
        loss, _parts = loss_fn(prompts())
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if on_epoch is not None:
            on_epoch(opt, sched)
        if progress is not None:
            progress.update(task, advance=1, loss=history[-1])
    return history


def text_checkpoint(config: TrainConfig, prompts: Any) -> bool:
    """Whether a prompt set's training recomputes the text blocks in backward instead of keeping them.

    "auto": when the estimated activations (TextTower.activation_bytes) exceed 1 GiB, i.e. where they
    outgrow the backbone's own weights (0.8 GB for ViT-B-16-plus-240); below that the extra text forward
    (+15 to 35% per epoch) buys little. Measured by bench/bench_train.py (ViT-B-16-plus-240, CPU, 1 thread,
    pill_box's `mfsc build` record: 156 pixel / 468 image rows of 47 tokens, both above the threshold):
    peak RSS pixel phase 5.1 -> 2.9 GB, image phase 9.6 -> 3.8 GB (with _release_freed_memory);
    seconds per epoch against one text fwd+bwd: pixel 0.95x -> 1.31x, image 1.00x -> 1.16x.
    """
    if config.text_checkpointing != "auto":
        return config.text_checkpointing == "on"
    rows, length = prompts.token_ids.shape
    return prompts.tower.activation_bytes(rows, length) > TEXT_CHECKPOINT_AUTO_BYTES


def loss_line(label: str, history: list[float]) -> str:
    """One line that shows a prompt set's loss going down, e.g. 'pixel prompts: loss 2.31 -> 0.87 over 100 epochs'."""
    if not history:
        return f"{label}: no epochs"
    return f"{label}: loss {history[0]:.4g} -> {history[-1]:.4g} over {len(history)} epochs"


def partial_dir(config: TrainConfig) -> Path:
    """Where a run keeps its resumable state: ``<out>.partial`` beside the checkpoint folder."""
    out = Path(config.out)
    return out.with_name(out.name + ".partial")


def run_fingerprint(config: TrainConfig, shot_names: list[str] | None, record: dict | None) -> str:
    """SHA-256 of what the trained tensors depend on: the TrainConfig (minus out/restart), shots, caption record."""
    cfg = {k: v for k, v in asdict(config).items() if k not in RUN_ONLY_FIELDS}
    blob = json.dumps({"config": cfg, "shots": list(shot_names or []), "record": record}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _optim_state(opt: Any, sched: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """SGD + cosine schedule state as (tensors, JSON): momentum buffers by parameter index, the rest plain."""
    sd = opt.state_dict()
    tensors = {f"optim.{i}.momentum_buffer": s["momentum_buffer"] for i, s in sd["state"].items()
               if s.get("momentum_buffer") is not None}
    return tensors, {"param_groups": sd["param_groups"], "scheduler": sched.state_dict()}


def _load_optim(opt: Any, sched: Any, state: dict[str, Any]) -> None:
    buffers = state["buffers"]
    opt.load_state_dict({"state": {int(i): {"momentum_buffer": t} for i, t in buffers.items()},
                         "param_groups": state["param_groups"]})
    sched.load_state_dict(state["scheduler"])


class ResumableState:
    """The resumable state of one training run, kept in ``<out>.partial/`` (checkpoint_io's atomic format).

    ``features/``, written once before the first epoch: the shots' frozen features and region weights.
    ``state/``, replaced after every epoch (under 100 kB, milliseconds): both prompt sets' parameters,
    the running phase's SGD momentum buffers, learning rates and cosine schedule, and the loss history of
    both phases (its lengths are the epoch counters). Both carry the run's fingerprint. Training draws no
    random numbers after the seeded prompt initialisation (no shuffling, no dropout), so there is no RNG
    state to keep: a resumed run rebuilds the same initial prompts, loads this, and continues bit-identically.
    """

    def __init__(self, config: TrainConfig, shot_names: list[str] | None, record: dict | None) -> None:
        self.dir = partial_dir(config)
        self.fingerprint = run_fingerprint(config, shot_names, record)
        self.history: dict[str, list[float]] = {"pixel_loss": [], "image_loss": []}
        self.phase = PHASES[0]
        self.features: dict[str, Any] | None = None
        self.tensors: dict[str, Any] = {}
        self.optim: dict[str, Any] | None = None
        if config.restart:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir.exists():
            self._load()

    def _read(self, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        from detector.checkpoint_io import load_checkpoint

        d = self.dir / name
        if not d.exists():
            return None
        fix = f"delete {self.dir} or pass --restart to train from the first epoch"
        try:
            tensors, meta = load_checkpoint(d)
        except DetectorError as e:
            raise DetectorError(f"resumable training state {d} is unreadable ({e}); {fix}") from e
        if meta.get("fingerprint") != self.fingerprint:
            raise DetectorError(f"{self.dir} holds the state of a training run with another config, shots or "
                                f"caption record; {fix}")
        return tensors, meta

    def _load(self) -> None:
        features = self._read(FEATURES)
        self.features = features[0] if features is not None else None
        got = self._read(STATE)
        if got is None:
            return
        tensors, meta = got
        history, phase = meta.get("history"), meta.get("phase")
        if phase not in PHASES or not isinstance(history, dict) or not all(
                isinstance(history.get(k), list) for k in self.history) or self.features is None:
            raise DetectorError(f"{self.dir / STATE}: phase, history or features missing; delete {self.dir} or "
                                "pass --restart to train from the first epoch")
        self.history = {k: [float(v) for v in history[k]] for k in self.history}
        self.phase = phase
        self.tensors = {k: v for k, v in tensors.items() if not k.startswith("optim.")}
        buffers = {k.split(".")[1]: v for k, v in tensors.items() if k.startswith("optim.")}
        if isinstance(meta.get("optim"), dict):
            self.optim = {**meta["optim"], "buffers": buffers}

    def load_prompts(self, pixel: Any, image: Any) -> None:
        """Put the saved prompt parameters into freshly built prompt sets (nothing to do on a fresh run)."""
        if not self.tensors:
            return
        for prefix, mod in (("pixel_prompts.", pixel), ("image_prompts.", image)):
            state = {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}
            try:
                mod.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise DetectorError(f"{self.dir}: prompt tensors do not fit ({str(e).splitlines()[0]}); delete it "
                                    "or pass --restart") from e

    def optim_for(self, phase: str) -> dict[str, Any] | None:
        """The saved optimiser state of ``phase``, if the run stopped inside it."""
        return self.optim if self.phase == phase else None

    def save_features(self, tensors: dict[str, Any]) -> None:
        """Keep the shots' features and region weights (once, before the first epoch)."""
        from detector.checkpoint_io import save_checkpoint

        save_checkpoint(self.dir / FEATURES, {k: v.detach().cpu().clone() for k, v in tensors.items()},
                        {"fingerprint": self.fingerprint})

    def save(self, phase: str, pixel: Any, image: Any, opt: Any, sched: Any) -> None:
        """Atomically replace the saved state with the current one (called after every epoch)."""
        from detector.checkpoint_io import save_checkpoint

        buffers, optim = _optim_state(opt, sched)
        tensors = {**{f"pixel_prompts.{k}": v for k, v in pixel.state_dict().items()},
                   **{f"image_prompts.{k}": v for k, v in image.state_dict().items()}, **buffers}
        meta = {"fingerprint": self.fingerprint, "phase": phase, "history": self.history, "optim": optim}
        save_checkpoint(self.dir / STATE, {k: v.detach().cpu().clone() for k, v in tensors.items()}, meta)


def describe_partial(config: TrainConfig) -> str:
    """One line for a Ctrl-C: what was saved and how to resume."""
    d = partial_dir(config)
    try:
        meta = json.loads((d / STATE / "config.json").read_text(encoding="utf-8"))["meta"]
        done = {k: len(v) for k, v in meta["history"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        if (d / FEATURES).is_dir():
            return (f"interrupted before the first epoch ended; the shot features are kept in {d}: rerun the same "
                    "command to resume (--restart starts over)")
        return "interrupted before any state was saved; rerun the same command to start again"
    return (f"interrupted after {done.get('pixel_loss', 0)}/{config.epochs} pixel and "
            f"{done.get('image_loss', 0)}/{config.image_epochs} image epochs; state saved in {d}: rerun the same "
            "command to resume (--restart starts over)")


@dataclass
class ShotFeatures:
    """The frozen features of the shots, computed once (float32, on the training device)."""

    cls: Any  # (B, D)
    patches: Any  # (B, N, D)
    taps: list  # [(B, N, C)]
    grid: tuple[int, int]
    hr_patches: Any | None  # (B, 16N, D) or None (baseline)
    hr_grid: tuple[int, int] | None


def encode_shots(backbone: Any, images: list, tiles: int | None = 4) -> ShotFeatures:
    """Encode the shot images once: model-grid features and (unless ``tiles`` is None) the tiled high-res tokens."""
    import torch

    with torch.no_grad():
        out = backbone.encode(backbone.preprocess(images))
        hr = hr_grid = None
        if tiles:
            hi = backbone.encode_tiled(backbone.preprocess(images, size=tiles * backbone.image_size), tiles=tiles)
            hr, hr_grid = hi.patches.float(), hi.grid
    return ShotFeatures(cls=out.cls.float(), patches=out.patches.float(), taps=[t.float() for t in out.taps],
                        grid=out.grid, hr_patches=hr, hr_grid=hr_grid)


def resolve_tau(config: TrainConfig, backbone: Any) -> float:
    """The softmax scale: the configured value, else exp(CLIP logit scale) clamped to 100."""
    from detector.losses import logit_scale_of

    return logit_scale_of(backbone.model, config.tau)  # "stored" (public), "exp" or a number


def train_model(config: TrainConfig, progress: bool = True, shot_images: list | None = None,
                shot_names: list[str] | None = None, record: dict | None = None, resume: bool = False) -> Any:
    """Train and return the in-memory FineGrainedAD (``train`` saves it). Tests may pass images/record directly.

    ``resume``: save the resumable state after every epoch in ``<out>.partial/`` and continue from it
    when it is there (``train`` does; the caller removes the folder once the checkpoint is written).
    """
    import torch
    import torch.nn.functional as F

    from detector import method
    from detector.model import FineGrainedAD, build_prompt_sets, load_backbone_for
    from detector.regions import region_weights, uniform_weights

    det_before = torch.are_deterministic_algorithms_enabled()
    cpu = str(config.device).startswith("cpu")
    if cpu:
        torch.use_deterministic_algorithms(True)
    try:
        t0 = time.perf_counter()
        if shot_images is None:
            shot_images, shot_names = _load_shots(config)
        if config.baseline is None and record is None:
            from detector.captions import load_class_record

            if not config.captions:
                raise DetectorError("no caption dataset: pass --captions DIR_OR_HUB_ID (an `mfsc build` output), "
                                    "or --baseline promptad for class-name-only prompts")

            record = load_class_record(config.captions, config.class_name)
        if config.baseline == "promptad":
            record = None
        from fsad_data import readable_name

        state = ResumableState(config, shot_names, record) if resume else None
        object_name = str((record or {}).get("object_name") or readable_name(config.class_name))
        bb_meta = {"name": config.backbone, "pretrained": config.pretrained, "tap_layers": config.taps,
                   "vv_blocks": config.vv_blocks, "init_seed": 0}
        backbone = load_backbone_for(bb_meta, config.device, config.precision)
        # "name" stays as given (an open_clip name or a JSON config path); "model_name" is open_clip's name
        bb_meta.update(model_name=backbone.name, pretrained=backbone.pretrained,
                       tap_layers=list(backbone.tap_layers), weights_sha256=backbone.weights_sha256,
                       vv_blocks=backbone.vv_blocks)
        tau = resolve_tau(config, backbone)
        t_load = time.perf_counter() - t0

        use_regions = config.baseline is None and "background" not in config.drop_levels
        saved = state.features if state is not None else None
        if saved is None:
            feats = encode_shots(backbone, shot_images, tiles=4 if use_regions else None)
        else:
            saved = {k: v.to(backbone.device) for k, v in saved.items()}
            feats = ShotFeatures(cls=saved["cls"], patches=saved["patches"], grid=backbone.grid,
                                 taps=[saved[f"taps.{i}"] for i in range(len(backbone.tap_layers))],
                                 hr_patches=None, hr_grid=None)
        torch.manual_seed(config.seed)
        pixel, image = build_prompt_sets(backbone, record, object_name, config.baseline, config.drop_levels,
                                         config.prompt_config(config.n_pro_pixel),
                                         config.prompt_config(config.n_pro_image), extra_texts=config.extra_texts)
        pixel.to(backbone.device)
        image.to(backbone.device)
        pixel.checkpoint_text = text_checkpoint(config, pixel)
        image.checkpoint_text = text_checkpoint(config, image)
        names = pixel.region_names()
        b, n, _ = feats.patches.shape
        if saved is not None:
            weights = saved["region_weights"]
        elif use_regions:
            with torch.no_grad():
                protos = pixel().normal.float()
            weights, _assign = region_weights(feats.hr_patches, feats.hr_grid, protos, names,
                                              method.region_config(config))
        else:
            weights = uniform_weights(b, len(names), feats.grid)
        weights = weights.to(feats.patches.device)
        if state is not None and saved is None:
            state.save_features({"cls": feats.cls, "patches": feats.patches, "region_weights": weights,
                                 **{f"taps.{i}": t for i, t in enumerate(feats.taps)}})
        tokens = F.normalize(feats.patches, dim=-1).reshape(b * n, -1)
        flat_w = weights.permute(1, 0, 2, 3).reshape(len(names), b * n)  # (G, B*N), same token order
        cls = F.normalize(feats.cls, dim=-1)
        history: dict[str, list[float]] = {"pixel_loss": [], "image_loss": []}
        if state is not None:  # after the region weights: they come from the INITIAL prototypes
            state.load_prompts(pixel, image)
            history = state.history
        t_encode = time.perf_counter() - t0

        def saver(phase: str) -> Callable[[Any, Any], None] | None:
            if state is None:
                return None
            return lambda opt, sched: state.save(phase, pixel, image, opt, sched)

        cm = _progress_bar() if progress else None
        with (cm if cm is not None else _null()) as bar:
            _release_freed_memory()
            t1 = time.perf_counter()
            pixel_hist = _fit(pixel, method.pixel_loss(config, tokens, flat_w, tau),
                              config.epochs, config, bar, "pixel prompts", history["pixel_loss"],
                              state.optim_for("pixel") if state else None, saver("pixel"))
            _release_freed_memory()
            t2 = time.perf_counter()
            image_hist = _fit(image, method.image_loss(config, cls, tau),
                              config.image_epochs, config, bar, "image prompts", history["image_loss"],
                              state.optim_for("image") if state else None, saver("image"))
            t3 = time.perf_counter()
        if progress:
            from rich.console import Console

            console = Console(highlight=False)
            console.print(loss_line("pixel prompts", pixel_hist))
            console.print(loss_line("image prompts", image_hist))
        for p in list(pixel.parameters()) + list(image.parameters()):
            p.requires_grad_(False)
        memory = [t.reshape(-1, t.shape[-1]) for t in feats.taps]
        meta = {
            "config": asdict(config),
            "record": record,
            "object_name": object_name,
            "class_name": config.class_name,
            "baseline": config.baseline,
            "drop_levels": list(config.drop_levels),
            "shots": list(shot_names or []),
            "backbone": bb_meta,
            "prompt_config_pixel": config.prompt_config(config.n_pro_pixel),
            "prompt_config_image": config.prompt_config(config.n_pro_image),
            "prompt_groups": pixel.describe()["groups"],
            "region_groups": names,
            "regions": "dpc-knn" if use_regions else "uniform",
            "method": method.method_settings(config),
            "history": {"pixel_loss": pixel_hist, "image_loss": image_hist},
            "timing_s": {"load": t_load, "encode_and_regions": t_encode - t_load, "pixel": t2 - t1,
                         "image": t3 - t2},
        }
        model = FineGrainedAD(backbone, pixel, image, weights.cpu(), memory, tau, meta)
        model.refresh_text_features()
        return model.eval()
    finally:
        if cpu:
            torch.use_deterministic_algorithms(det_before)


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train one class and write its checkpoint folder (atomically, only at the end); returns the folder.

    Resumable: a rerun after an interruption continues from ``<out>.partial/`` (removed once the checkpoint
    is written); a Ctrl-C prints one line saying so.
    """
    try:
        train_and_save(config, progress=progress)
    except KeyboardInterrupt:
        print(describe_partial(config), file=sys.stderr, flush=True)
        raise
    return Path(config.out)


def train_and_save(config: TrainConfig, progress: bool = True) -> Any:
    """Resumable training, then the checkpoint, then the resumable state removed; returns the in-memory model."""
    model = train_model(config, progress=progress, resume=True)
    model.save(Path(config.out))
    shutil.rmtree(partial_dir(config), ignore_errors=True)
    return model


def _load_shots(config: TrainConfig) -> tuple[list, list[str]]:
    """The shot images (RGB uint8) and their file names, selected by sorted file name."""
    import fsad_data

    if not config.data:
        raise DetectorError("no data root: pass --data ROOT (the data set folder)")
    if not config.class_name:
        raise DetectorError("no class: pass --class NAME")
    samples = fsad_data.read_dataset(config.data, layout=config.layout, classes=[config.class_name])
    shots = fsad_data.select_shots(samples, config.class_name, int(config.shots), int(config.seed),
                                   shots_file=config.shots_file)
    return [fsad_data.load_rgb(s.image_path) for s in shots], [s.file_name for s in shots]


def _release_freed_memory() -> None:
    """Return the memory freed by the previous stage to the OS before a prompt set's epochs (glibc only).

    glibc keeps freed heap pages, and the next phase cannot reuse all of them: bench/bench_train.py saw
    ~0.7 GB of the pixel phase stay resident and raise the image phase's peak.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): nothing to do
        pass


def _progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), transient=False)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
