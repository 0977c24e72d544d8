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

Deterministic for a seed on CPU (seeded prompt initialisation, deterministic algorithms, no data
shuffling). ``tau`` (the logit scale of every softmax) defaults to the backbone's EXPONENTIATED CLIP
logit scale, clamped to 100 as CLIP does (the public code used the stored log value by mistake).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from detector.errors import DetectorError

PROMPT_FIELDS = ("n_ctx", "n_ctx_ab", "n_pro_ab", "init_std", "gate_mode", "gate_init", "truncate")


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
    tau: float | None = None  # None: exp(CLIP logit scale), at most 100
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
    gate_mode: str = "features"
    gate_init: float = 0.0
    truncate: bool = True
    # MLSA region aggregation
    region_knn: int = 5
    region_boost: float = 1.5

    def __post_init__(self) -> None:
        if self.baseline not in (None, "promptad"):
            raise DetectorError(f"baseline {self.baseline!r} is unknown: use 'promptad' or leave it unset")
        if int(self.shots) < 1:
            raise DetectorError(f"shots={self.shots}: need at least one normal shot")
        if int(self.epochs) < 0 or int(self.image_epochs) < 0:
            raise DetectorError("epochs and image_epochs must be >= 0")
        self.drop_levels = list(self.drop_levels or [])
        if self.taps is not None:
            self.taps = list(self.taps)

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML or JSON config; keyword overrides that are not None win (the CLI's flags)."""
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise DetectorError(f"cannot read config {p}: {e.strerror}; check the path") from e
        try:
            if p.suffix.lower() == ".json":
                raw = json.loads(text)
            else:
                import yaml

                raw = yaml.safe_load(text)
        except Exception as e:
            raise DetectorError(f"config {p} is not valid YAML/JSON: {e}; fix the file") from e
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise DetectorError(f"config {p} must hold a mapping of TrainConfig fields, not a {type(raw).__name__}")
        return cls.from_dict(raw, source=str(p), **overrides)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config", **overrides: Any) -> TrainConfig:
        """Build from a mapping (unknown keys are an error), then apply non-None overrides."""
        known = {f.name for f in fields(cls)}
        data = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DetectorError(f"{source}: unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)

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


def _fit(prompts: Any, loss_fn: Any, epochs: int, config: TrainConfig, progress: Any, label: str) -> list[float]:
    """Run ``epochs`` full-batch SGD steps of ``loss_fn(text_features)`` on the trainable prompt vectors."""
    params = [p for p in prompts.parameters() if p.requires_grad]
    opt, sched = _set_lr_schedule(params, config, epochs)
    history: list[float] = []
    task = progress.add_task(label, total=epochs, loss=float("nan")) if progress is not None else None
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        loss, _parts = loss_fn(prompts())
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
        if progress is not None:
            progress.update(task, advance=1, loss=history[-1])
    return history


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

    return logit_scale_of(backbone.model, config.tau)


def train_model(config: TrainConfig, progress: bool = True, shot_images: list | None = None,
                shot_names: list[str] | None = None, record: dict | None = None) -> Any:
    """Train and return the in-memory FineGrainedAD (``train`` saves it). Tests may pass images/record directly."""
    import torch
    import torch.nn.functional as F

    from detector.losses import LAMBDA_COMP, image_loss, mlsa_loss
    from detector.model import FineGrainedAD, build_prompt_sets, load_backbone_for
    from detector.regions import RegionConfig, region_weights, uniform_weights

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

        object_name = str((record or {}).get("object_name") or readable_name(config.class_name))
        bb_meta = {"name": config.backbone, "pretrained": config.pretrained, "tap_layers": config.taps,
                   "init_seed": 0}
        backbone = load_backbone_for(bb_meta, config.device, config.precision)
        # "name" stays as given (an open_clip name or a JSON config path); "model_name" is open_clip's name
        bb_meta.update(model_name=backbone.name, pretrained=backbone.pretrained,
                       tap_layers=list(backbone.tap_layers))
        tau = resolve_tau(config, backbone)
        t_load = time.perf_counter() - t0

        use_regions = config.baseline is None and "background" not in config.drop_levels
        feats = encode_shots(backbone, shot_images, tiles=4 if use_regions else None)
        torch.manual_seed(config.seed)
        pixel, image = build_prompt_sets(backbone, record, object_name, config.baseline, config.drop_levels,
                                         config.prompt_config(config.n_pro_pixel),
                                         config.prompt_config(config.n_pro_image))
        pixel.to(backbone.device)
        image.to(backbone.device)
        names = pixel.region_names()
        b, n, _ = feats.patches.shape
        if use_regions:
            with torch.no_grad():
                protos = pixel().normal.float()
            weights, _assign = region_weights(feats.hr_patches, feats.hr_grid, protos, names,
                                              RegionConfig(knn=config.region_knn, boost=config.region_boost))
        else:
            weights = uniform_weights(b, len(names), feats.grid)
        weights = weights.to(feats.patches.device)
        tokens = F.normalize(feats.patches, dim=-1).reshape(b * n, -1)
        flat_w = weights.permute(1, 0, 2, 3).reshape(len(names), b * n)  # (G, B*N), same token order
        cls = F.normalize(feats.cls, dim=-1)
        t_encode = time.perf_counter() - t0

        cm = _progress_bar() if progress else None
        with (cm if cm is not None else _null()) as bar:
            t1 = time.perf_counter()
            pixel_hist = _fit(pixel, lambda text: mlsa_loss(tokens, flat_w, text, tau, config.lambda1),
                              config.epochs, config, bar, "pixel prompts")
            t2 = time.perf_counter()
            image_hist = _fit(image, lambda text: image_loss(cls, text, tau, config.lambda1, LAMBDA_COMP),
                              config.image_epochs, config, bar, "image prompts")
            t3 = time.perf_counter()
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
    """Train one class and write its checkpoint folder (atomically, only at the end); returns the folder."""
    model = train_model(config, progress=progress)
    return model.save(Path(config.out))


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


def _progress_bar() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), transient=False)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False
