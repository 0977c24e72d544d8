"""Fitting FineGrainedAD on k normal shots: shot images + caption record + frozen backbone in, the detector out.

The method's training, with no paths and no console (``detector.run.train`` reads the files, loads the backbone,
prints and writes the checkpoint). In order:
1. the frozen backbone encodes the shots ONCE: CLS, V-V patch tokens and taps at the model grid, and V-V patch
   tokens of the 4x4-tiled 4S-pixel shot for the region aggregation; every epoch reuses them;
2. MLSA region weights from the untrained normal prototypes (uniform for the PromptAD baseline, or when the
   background level is dropped: there is then no background text to cluster against);
3. two prompt sets trained one after the other, as in the paper: the pixel set (n_pro = 1, ``epochs`` epochs
   of ``mlsa_loss`` on the region-weighted patch tokens of all shots in one batch), then the image set
   (n_pro = 3, ``image_epochs`` epochs of ``image_loss`` on the shots' CLS features). Each has its own SGD
   (lr, momentum, weight decay) and cosine schedule to ``lr_min``. The number of epochs is fixed: nothing is
   ever selected on test data.

Resumable through a ``Resumable`` state (kept on disk by ``detector.store.train_state``): the shot features and region weights are
stored once before the first epoch (recomputing them costs several pixel epochs of ViT-B-16-plus-240 on a
2-core CPU, bench/bench_train.py: about 65 s against 22 s per pixel epoch, the 4x4-tiled pass dominates, and
a GPU's encoder need not be bit-reproducible), the prompts and SGD state after every epoch (about 15 ms, 0.2%
of a pixel epoch).

Deterministic for a seed on CPU (seeded prompt initialisation, deterministic algorithms, no data shuffling).
The method's options (``tau``, loss forms, region settings, ...) are read from the TrainConfig by
``detector.method.options``; this module only sequences them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.errors import DetectorError
from detector.method import losses, options
from detector.method.backbone import Backbone
from detector.method.model import FineGrainedAD, build_prompt_sets
from detector.method.options import LossFn
from detector.method.prompts import MultiLevelPrompts
from detector.method.regions import region_weights, uniform_weights

if TYPE_CHECKING:
    from collections.abc import Iterator

    from detector.config import TrainConfig

TEXT_CHECKPOINT_AUTO_BYTES = 1 << 30  # "auto" checkpoints a prompt set whose kept text activations exceed this

EpochReport = Callable[[str, int, int, float], None]
"""``report(label, epochs done, epochs in all, latest loss)``: when a prompt set starts and after each epoch."""


class Resumable(Protocol):
    """What ``fit`` needs of a resumable run (``detector.store.train_state.ResumableState`` keeps it on disk):
    the stored shot features, the prompts, SGD state and loss history of the epochs done, and a save after each."""

    features: dict[str, Tensor] | None
    history: dict[str, list[float]]

    def save_features(self, tensors: dict[str, Tensor]) -> None: ...
    def load_prompts(self, pixel: nn.Module, image: nn.Module) -> None: ...
    def optim_for(self, phase: str) -> dict[str, Any] | None: ...
    def save(self, phase: str, pixel: nn.Module, image: nn.Module, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler) -> None: ...


def load_optim(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> None:
    """Put a saved ``optim_state`` (with its momentum buffers under "buffers") back into SGD and its schedule."""
    buffers = state["buffers"]
    opt.load_state_dict({"state": {int(i): {"momentum_buffer": t} for i, t in buffers.items()},
                         "param_groups": state["param_groups"]})
    sched.load_state_dict(state["scheduler"])



OnEpoch = Callable[[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler], None]


@dataclass
class ShotFeatures:
    """The frozen features of the shots, computed once (float32, on the training device)."""

    cls: Tensor  # (B, D)
    patches: Tensor  # (B, N, D)
    taps: list[Tensor]  # [(B, N, C)]
    grid: tuple[int, int]
    hr_patches: Tensor | None  # (B, 16N, D) or None (baseline)
    hr_grid: tuple[int, int] | None


def encode_shots(backbone: Backbone, images: list[np.ndarray], tiles: int | None = 4) -> ShotFeatures:
    """Encode the shot images once: model-grid features and (unless ``tiles`` is None) the tiled high-res tokens."""
    with torch.no_grad():
        out = backbone.encode(backbone.preprocess(images))
        hr = hr_grid = None
        if tiles:
            hi = backbone.encode_tiled(backbone.preprocess(images, size=tiles * backbone.image_size), tiles=tiles)
            hr, hr_grid = hi.patches.float(), hi.grid
    return ShotFeatures(cls=out.cls.float(), patches=out.patches.float(), taps=[t.float() for t in out.taps],
                        grid=out.grid, hr_patches=hr, hr_grid=hr_grid)


def resolve_tau(config: TrainConfig, backbone: Backbone) -> float:
    """The softmax scale: "stored" (CLIP's log-space logit scale, public), "exp" (capped at 100) or a number."""
    return losses.logit_scale_of(backbone.model, config.tau)


def text_checkpoint(config: TrainConfig, prompts: MultiLevelPrompts) -> bool:
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


def optimiser(params: list[Tensor], config: TrainConfig, epochs: int
              ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """SGD (lr, momentum, weight decay) with a cosine schedule from lr to lr_min over ``epochs``."""
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=config.lr_min)
    return opt, sched


def fit_prompt_set(prompts: MultiLevelPrompts, loss_fn: LossFn, epochs: int, config: TrainConfig, label: str,
                   history: list[float], optim_state: dict[str, Any] | None = None,
                   on_epoch: OnEpoch | None = None,
                   report: EpochReport | None = None) -> list[float]:
    """Full-batch SGD steps of ``loss_fn(text_features)`` on the trainable prompt vectors until ``epochs``.

    ``history`` holds the losses of the epochs already done (a resumed run, with the SGD and schedule
    state ``optim_state`` they left); it is extended in place. ``on_epoch(opt, sched)`` runs after each step.
    """
    params = [p for p in prompts.parameters() if p.requires_grad]
    opt, sched = optimiser(params, config, epochs)
    if 0 < len(history) < epochs:
        if optim_state is None:
            raise DetectorError(f"{label}: resumable state has {len(history)} epochs but no optimiser state; "
                                "delete the .partial folder or pass --restart")
        load_optim(opt, sched, optim_state)
    if report is not None:
        report(label, len(history), epochs, history[-1] if history else float("nan"))
    while len(history) < epochs:
        opt.zero_grad(set_to_none=True)
        loss, _parts = loss_fn(prompts())
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if on_epoch is not None:
            on_epoch(opt, sched)
        if report is not None:
            report(label, len(history), epochs, history[-1])
    return history


@contextmanager
def deterministic_on_cpu(device: str) -> Iterator[None]:
    """Deterministic torch algorithms while training on CPU (the previous setting restored after)."""
    before = torch.are_deterministic_algorithms_enabled()
    cpu = str(device).startswith("cpu")
    if cpu:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        if cpu:
            torch.use_deterministic_algorithms(before)


def fit(config: TrainConfig, backbone: Backbone, shot_images: list[np.ndarray], record: dict | None,
        object_name: str, state: Resumable | None = None, report: EpochReport | None = None) -> FineGrainedAD:
    """Train both prompt sets on the shots; returns the detector (eval mode, text features cached).

    ``record`` is the class's MFSC caption record (None for the PromptAD baseline). With ``state`` the run is
    resumable: what it holds is continued, and it is updated before the first and after every epoch. The
    model's ``meta`` records what the method did (config, record, groups, regions, loss history, timings);
    the caller adds where the inputs came from (shot files, backbone weights).
    """
    with deterministic_on_cpu(config.device):
        t0 = time.perf_counter()
        use_regions = config.baseline is None and "background" not in config.drop_levels
        saved = state.features if state is not None else None
        feats = _shot_features(backbone, shot_images, saved, use_regions)  # 1. the shots, encoded once
        tau = resolve_tau(config, backbone)
        pixel, image = _prompt_sets(config, backbone, record, object_name)
        names = pixel.region_names()
        weights = _region_weights(config, feats, pixel, names, saved, use_regions)  # 2. MLSA region weights
        if state is not None and saved is None:
            state.save_features({"cls": feats.cls, "patches": feats.patches, "region_weights": weights,
                                 **{f"taps.{i}": t for i, t in enumerate(feats.taps)}})
        history: dict[str, list[float]] = {"pixel_loss": [], "image_loss": []}
        if state is not None:  # after the region weights: they come from the INITIAL prototypes
            state.load_prompts(pixel, image)
            history = state.history
        t_encode = time.perf_counter()
        timing = _train_prompt_sets(config, pixel, image, feats, weights, tau, history, state, report)  # 3.
        for p in list(pixel.parameters()) + list(image.parameters()):
            p.requires_grad_(False)
        memory = [t.reshape(-1, t.shape[-1]) for t in feats.taps]
        meta = _fit_meta(config, record, object_name, pixel, names, use_regions, history)
        meta["timing_s"] = {"encode_and_regions": t_encode - t0, **timing}
        model = FineGrainedAD(backbone, pixel, image, weights.cpu(), memory, tau, meta)
        model.refresh_text_features()
        return model.eval()


def _prompt_sets(config: TrainConfig, backbone: Backbone, record: dict | None, object_name: str
                 ) -> tuple[MultiLevelPrompts, MultiLevelPrompts]:
    """The pixel (n_pro_pixel) and image (n_pro_image) prompt sets, initialised from ``config.seed`` (so a seed
    gives the same prompts whether or not the shot features were resumed), on the backbone's device."""
    torch.manual_seed(config.seed)
    pixel, image = build_prompt_sets(backbone, record, object_name, config.baseline, config.drop_levels,
                                     config.prompt_config(config.n_pro_pixel),
                                     config.prompt_config(config.n_pro_image), extra_texts=config.extra_texts,
                                     component_texts=config.component_texts, seed=config.seed)
    pixel.to(backbone.device)
    image.to(backbone.device)
    pixel.checkpoint_text = text_checkpoint(config, pixel)
    image.checkpoint_text = text_checkpoint(config, image)
    return pixel, image


def _train_prompt_sets(config: TrainConfig, pixel: MultiLevelPrompts, image: MultiLevelPrompts,
                       feats: ShotFeatures, weights: Tensor, tau: float, history: dict[str, list[float]],
                       state: Resumable | None, report: EpochReport | None) -> dict[str, float]:
    """The paper's two phases, one after the other: the pixel set on the region-weighted unit patch tokens of
    all shots, then the image set on the shots' unit CLS features. Extends ``history``; returns the seconds
    of each phase."""
    b, n, _ = feats.patches.shape
    tokens = F.normalize(feats.patches, dim=-1).reshape(b * n, -1)
    flat_w = weights.permute(1, 0, 2, 3).reshape(pixel.n_region, b * n)  # (G, B*N), same token order
    cls = F.normalize(feats.cls, dim=-1)

    def saver(phase: str) -> OnEpoch | None:
        if state is None:
            return None
        return lambda opt, sched: state.save(phase, pixel, image, opt, sched)

    _release_freed_memory()
    t1 = time.perf_counter()
    fit_prompt_set(pixel, options.pixel_loss(config, tokens, flat_w, tau), config.epochs, config,
                   "pixel prompts", history["pixel_loss"],
                   state.optim_for("pixel") if state else None, saver("pixel"), report)
    _release_freed_memory()
    t2 = time.perf_counter()
    fit_prompt_set(image, options.image_loss(config, cls, tau), config.image_epochs, config,
                   "image prompts", history["image_loss"],
                   state.optim_for("image") if state else None, saver("image"), report)
    t3 = time.perf_counter()
    return {"pixel": t2 - t1, "image": t3 - t2}


def _fit_meta(config: TrainConfig, record: dict | None, object_name: str, pixel: MultiLevelPrompts,
              names: list[str], use_regions: bool, history: dict[str, list[float]]) -> dict[str, Any]:
    """What the method did, for the checkpoint (the caller adds the inputs' origin; ``fit`` the timings)."""
    return {
        "config": asdict(config),
        "record": record,
        "object_name": object_name,
        "baseline": config.baseline,
        "drop_levels": list(config.drop_levels),
        "prompt_config_pixel": config.prompt_config(config.n_pro_pixel),
        "prompt_config_image": config.prompt_config(config.n_pro_image),
        "prompt_groups": pixel.describe()["groups"],
        "region_groups": names,
        "regions": "dpc-knn" if use_regions else "uniform",
        "method": options.method_settings(config),
        "history": {"pixel_loss": history["pixel_loss"], "image_loss": history["image_loss"]},
    }


def _shot_features(backbone: Backbone, shot_images: list[np.ndarray], saved: dict[str, Tensor] | None,
                   use_regions: bool) -> ShotFeatures:
    """The shots encoded now (with the tiled pass when regions are computed), or as a resumed run saved them."""
    if saved is None:
        return encode_shots(backbone, shot_images, tiles=4 if use_regions else None)
    saved = {k: v.to(backbone.device) for k, v in saved.items()}
    return ShotFeatures(cls=saved["cls"], patches=saved["patches"], grid=backbone.grid,
                        taps=[saved[f"taps.{i}"] for i in range(len(backbone.tap_layers))],
                        hr_patches=None, hr_grid=None)


def _region_weights(config: TrainConfig, feats: ShotFeatures, pixel: MultiLevelPrompts, names: list[str],
                    saved: dict[str, Tensor] | None, use_regions: bool) -> Tensor:
    """MLSA region weights (B, G, h, w) from the untrained normal prototypes (uniform without regions; a
    resumed run's saved ones), on the features' device."""
    if saved is not None:
        weights = saved["region_weights"]
    elif use_regions:
        with torch.no_grad():
            protos = pixel().normal.float()
        weights, _assign = region_weights(feats.hr_patches, feats.hr_grid, protos, names,
                                          options.region_config(config))
    else:
        weights = uniform_weights(feats.patches.shape[0], len(names), feats.grid)
    return weights.to(feats.patches.device)


def _release_freed_memory() -> None:
    """Return the memory freed by the previous stage to the OS before a prompt set's epochs (glibc only).

    glibc keeps freed heap pages, and the next phase cannot reuse all of them: bench/bench_train.py saw
    ~0.7 GB of the pixel phase stay resident and raise the image phase's peak.
    """
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows): nothing to do
        pass
