"""A trained ``FineGrainedAD`` to and from its checkpoint folder, and the frozen backbone a checkpoint names.

The folder's container (safetensors + config.json, checksums, atomic swap) is ``detector.store.checkpoint``;
this module owns what the detector's meta must hold (``META_FORMAT_VERSION``, checked field by field before any
tensor is used) and the one backbone resolver every reader shares (``load_backbone_for``): training, eval,
predict, the API and export rebuild the same backbone from the same meta.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detector.errors import DetectorError
from detector.method.backbone import Backbone, load_backbone
from detector.method.choices import COMPONENT_TEXTS
from detector.method.model import FineGrainedAD, build_prompt_sets
from detector.store.checkpoint import TIMINGS_FILE, load_checkpoint, save_checkpoint
from detector.store.model_card import write_card
from detector.store.schemas import check_checkpoint_meta

META_FORMAT_VERSION = 2  # the meta's fields; 2: method options (V-V blocks, tau mode, matched CLS group...) recorded


def save_detector(model: FineGrainedAD, ckpt_dir: str | Path) -> Path:
    """Write ``model``'s checkpoint folder atomically (safetensors + JSON meta, ``detector.store.checkpoint``) and its card.

    The run's timings go to ``timings.json`` beside config.json, so the same inputs and seed give a
    byte-identical config.json and model.safetensors."""
    meta = dict(model.meta)
    timings = meta.pop("timing_s", None)
    meta.update(format_version=META_FORMAT_VERSION, tau=model.tau, pixel_names=model.pixel_names,
                image_names=model.image_names, n_memory=len(model.memory))
    meta = json.loads(json.dumps(meta, default=_json_default))  # numpy/tuples/paths -> plain JSON
    extra = {TIMINGS_FILE: {"timing_s": json.loads(json.dumps(timings, default=_json_default))}} if timings else {}
    save_checkpoint(Path(ckpt_dir), model.checkpoint_tensors(), meta, extra_files=extra)
    write_card(Path(ckpt_dir))  # README.md with YAML metadata, for people and the Hub
    return Path(ckpt_dir)


def _json_default(obj: Any) -> Any:
    """Plain JSON for the values a caption record or config may carry (numpy scalars/arrays, paths)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def load_backbone_for(meta_backbone: dict, device: str, precision: str) -> Backbone:
    """Load the frozen backbone named in a checkpoint; random-weight backbones are rebuilt from seed 0."""
    pretrained = meta_backbone.get("pretrained") or "none"
    taps = meta_backbone.get("tap_layers")
    vv_blocks = meta_backbone.get("vv_blocks")
    name = str(meta_backbone["name"])
    if name.endswith(".json") and not Path(name).is_file() and meta_backbone.get("model_name"):
        name = str(meta_backbone["model_name"])  # config file gone: the name may still be registered
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(meta_backbone.get("init_seed", 0)))
        return load_backbone(name, pretrained, device, precision, taps=taps, vv_blocks=vv_blocks,
                             expected_sha256=meta_backbone.get("weights_sha256"))


def _check_meta(meta: dict[str, Any], tensors: dict[str, torch.Tensor], ckpt_dir: Path) -> None:
    """Types of the meta fields load_detector reads: a hand-edited config.json fails here with a clear message."""
    where = f"{ckpt_dir}/config.json"
    # types and ranges first, and n_memory against the memory tensors really stored (before any list is built)
    check_checkpoint_meta(meta, Path(where), list(tensors))

    def bad(field: str, want: str) -> DetectorError:
        return DetectorError(f"{where}: meta field {field!r} must be {want}; retrain or restore the checkpoint")

    bb = meta.get("backbone")
    if not isinstance(bb, dict) or not isinstance(bb.get("name"), str):
        raise bad("backbone", "an object with a 'name' string")
    for key in ("prompt_config_pixel", "prompt_config_image"):
        if not isinstance(meta.get(key), dict):
            raise bad(key, "an object of PromptConfig fields")
    if not isinstance(meta.get("object_name"), str):
        raise bad("object_name", "a string")
    for key in ("pixel_names", "image_names"):
        names = meta.get(key)
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise bad(key, "a non-empty list of group names")
    tau = meta.get("tau")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise bad("tau", "a finite number")
    n = meta.get("n_memory")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise bad("n_memory", "a positive integer")
    if meta.get("record") is not None and not isinstance(meta.get("record"), dict):
        raise bad("record", "an object (the caption record) or null")
    needed = ["region_weights", *(f"memory.{i}" for i in range(n)),
              *(f"text.{k}" for k in ("pixel_normal", "pixel_abnormal", "image_normal", "image_abnormal"))]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise DetectorError(f"{ckpt_dir}: tensors {missing} missing from the weights (n_memory={n}); retrain or "
                            "restore the checkpoint")
    if tensors["text.pixel_normal"].shape[0] != len(meta["pixel_names"]) or \
            tensors["text.image_normal"].shape[0] != len(meta["image_names"]):
        raise DetectorError(f"{where}: group names do not match the cached text features; retrain")


def _usable_tensors(tensors: dict[str, torch.Tensor], ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor as float32, the dtype the detector computes its scores in (a checkpoint converted to float16
    or bfloat16 would fail in a matmul), and finite: NaN or inf, stored under a valid checksum, would score every
    image NaN without a word (an isfinite pass over tensors of a few MB at most)."""
    out = {}
    for name in sorted(tensors):
        t = tensors[name]
        if not t.is_floating_point():
            raise DetectorError(f"{ckpt_dir}: tensor {name!r} has dtype {str(t.dtype).replace('torch.', '')}, not "
                                "floating point; retrain or restore the checkpoint")
        t = t.float()
        if not bool(torch.isfinite(t).all()):
            raise DetectorError(f"{ckpt_dir}: tensor {name!r} holds NaN or infinite values (saved so: its checksum "
                                "matches); retrain or restore the checkpoint")
        out[name] = t
    return out


def load_detector(ckpt_dir: str | Path, device: str = "cpu", precision: str = "fp32") -> FineGrainedAD:
    """Rebuild a trained detector from its checkpoint folder (no pickles; bit-exact predictions)."""
    ckpt_dir = Path(ckpt_dir)
    tensors, meta = load_checkpoint(ckpt_dir)
    tensors = _usable_tensors(tensors, ckpt_dir)
    version = meta.get("format_version")
    if version != META_FORMAT_VERSION:
        raise DetectorError(f"{ckpt_dir}: checkpoint format {version!r}, this detector reads {META_FORMAT_VERSION}; "
                            "retrain with this version")
    _check_meta(meta, tensors, ckpt_dir)
    backbone = load_backbone_for(meta["backbone"], device, precision)
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    component_texts = cfg.get("component_texts", "all")  # a checkpoint from before the option kept every text
    if component_texts not in COMPONENT_TEXTS:
        raise DetectorError(f"{ckpt_dir}/config.json: component_texts={component_texts!r} is not one of "
                            f"{', '.join(COMPONENT_TEXTS)}; retrain or restore the checkpoint")
    try:
        with torch.random.fork_rng(devices=[]):  # building the prompts draws initial vectors: not the caller's RNG
            pixel, image = build_prompt_sets(backbone, meta.get("record"), meta["object_name"], meta.get("baseline"),
                                             meta.get("drop_levels") or [], meta["prompt_config_pixel"],
                                             meta["prompt_config_image"], extra_texts=bool(cfg.get("extra_texts")),
                                             component_texts=component_texts, seed=int(cfg.get("seed", 0)))
    except (TypeError, ValueError) as e:  # hand-edited prompt config: unknown key or a value of the wrong type
        raise DetectorError(f"{ckpt_dir}/config.json: prompt config does not fit this detector ({e}); "
                            "retrain or restore the checkpoint") from e
    for prefix, mod in (("pixel_prompts.", pixel), ("image_prompts.", image)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            mod.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise DetectorError(f"{ckpt_dir}: prompt tensors do not fit ({str(e).splitlines()[0]}); the "
                                "checkpoint comes from another code version, retrain") from e
        mod.requires_grad_(False)
    memory = [tensors[f"memory.{i}"] for i in range(meta["n_memory"])]
    model = FineGrainedAD(backbone, pixel, image, tensors["region_weights"], memory, meta["tau"], meta)
    model.pixel_names, model.image_names = list(meta["pixel_names"]), list(meta["image_names"])
    model.pixel_normal = tensors["text.pixel_normal"]
    model.pixel_abnormal = tensors["text.pixel_abnormal"]
    model.image_normal = tensors["text.image_normal"]
    model.image_abnormal = tensors["text.image_abnormal"]
    model.memory = [m.to(device) for m in memory]
    return model.to(device).eval()
