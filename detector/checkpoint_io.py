"""Checkpoint folder I/O: ``model.safetensors`` (tensors) + ``config.json`` (metadata), written atomically.

Why this shape: safetensors holds only raw tensors (no code runs on load, unlike a pickle), and the JSON beside it
carries everything else (config, caption record, backbone name...) in a form people can read.  The two files are
written into a temporary sibling folder which then replaces the target, so a crash never leaves a half-written
checkpoint under the target name; ``config.json`` also records the SHA-256 of the weights so a mismatched pair is
caught on load.  Loading refuses pickles outright (a ``*.pt``/``*.bin``/``*.pkl`` where the safetensors should
be is an error, never unpickled).

``detector.checkpoint`` builds the FineGrainedAD save/load on top of these two functions.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import DetectorError
from detector.outputs import json_safe
from fsad_data.atomic import staged_folder

if TYPE_CHECKING:  # torch and safetensors are imported where tensors are read or written: reading a checkpoint's
    import torch  # meta (checkpoint_meta, eval/predict start-up, the benchmark's bookkeeping) needs neither
    from torch import Tensor

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "finegrained-ad-checkpoint"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _check_json(obj: Any, where: str = "meta") -> None:
    """Only plain JSON values (no NaN/inf, str keys), so the file is valid JSON any reader accepts."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise DetectorError(f"checkpoint {where} is {obj}, which JSON cannot hold; store a finite number or None")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise DetectorError(f"checkpoint {where} has a non-string key {k!r}; JSON keys must be strings")
            _check_json(v, f"{where}.{k}")
        return
    raise DetectorError(
        f"checkpoint {where} is a {type(obj).__name__}, not a JSON value; store tensors in `tensors`, paths as str"
    )


def save_checkpoint(directory: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``directory/model.safetensors`` + ``directory/config.json``; replace an old checkpoint only when done.

    Tensors are saved from CPU, contiguous, with their dtype.  ``meta`` must be plain JSON (tuples come back as
    lists).  An existing folder that is not a checkpoint (no ``config.json``, not empty) is never overwritten.
    """
    out = Path(directory)
    if out.exists():
        if not out.is_dir():
            raise DetectorError(f"checkpoint path {out} is a file; choose a folder name for --out")
        if any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
            raise DetectorError(
                f"{out} exists and is not a checkpoint folder (no {CONFIG_FILE}); choose another --out or empty it"
            )
    if not isinstance(meta, dict):
        raise DetectorError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    _check_json(meta)
    from safetensors.torch import save_file  # torch: only where tensors are written (see the imports)
    from torch import Tensor

    for k, v in tensors.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise DetectorError(f"checkpoint tensor {k!r} is not a (str, Tensor) pair; store other values in meta")

    try:
        with staged_folder(out) as tmp:  # complete beside `out`, then swapped in; the old one is kept until then
            weights = tmp / WEIGHTS_FILE
            plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            save_file(plain, str(weights), metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)})
            _fsync_file(weights)
            config = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "weights": WEIGHTS_FILE,
                "weights_sha256": _sha256(weights),
                "tensors": sorted(plain),
                "meta": meta,
            }
            cfg = tmp / CONFIG_FILE
            cfg.write_text(json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
            _fsync_file(cfg)
    except OSError as e:  # disk full, permissions: the old checkpoint (if any) is untouched
        raise DetectorError(
            f"could not write checkpoint {out}: {e.strerror or e}; free disk space or fix permissions and run again"
        ) from e
    return out


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint folder written by ``save_checkpoint``: (tensors on ``device``, meta).  Never unpickles."""
    d = Path(directory)
    if not d.is_dir():
        raise DetectorError(f"checkpoint folder {d} not found; pass the --out folder of `detector train`")
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in d.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise DetectorError(
                f"{d} holds pickle file(s) {pickles} instead of {WEIGHTS_FILE}; pickles are refused (they can run "
                "code). Retrain with `detector train`, or convert the tensors to safetensors"
            )
        raise DetectorError(f"{weights} not found; {d} is not a complete checkpoint, retrain with `detector train`")
    cfg_path = d / CONFIG_FILE
    if not cfg_path.is_file():
        raise DetectorError(f"{cfg_path} not found; {d} is not a complete checkpoint, retrain with `detector train`")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DetectorError(f"{cfg_path} is not valid JSON ({e}); the checkpoint is damaged, retrain it") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise DetectorError(f"{cfg_path} is not a FineGrainedAD checkpoint config (format != {FORMAT_NAME!r})")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise DetectorError(
            f"{cfg_path} has checkpoint format_version {version!r}; this detector reads version {FORMAT_VERSION}. "
            "Retrain the checkpoint with this version"
        )
    meta = config.get("meta")
    if not isinstance(meta, dict):
        raise DetectorError(f"{cfg_path} has no 'meta' object; the checkpoint is damaged, retrain it")
    digest = config.get("weights_sha256")
    if digest != _sha256(weights):
        raise DetectorError(f"{weights} does not match the checksum in {cfg_path}; the checkpoint is damaged or mixed")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights), device=str(device))
    except Exception as e:
        raise DetectorError(f"cannot read {weights}: {e}; the checkpoint is damaged, retrain it") from e
    listed = config.get("tensors")
    if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
        raise DetectorError(f"{cfg_path} has no list of tensor names ('tensors'); the checkpoint is damaged, retrain it")
    if sorted(tensors) != sorted(listed):
        raise DetectorError(f"{weights} tensor names differ from those listed in {cfg_path}; the checkpoint is damaged")
    return tensors, meta


def checkpoint_meta(ckpt_dir: Path) -> dict[str, Any]:
    """The checkpoint's config.json meta (class, shots, backbone...), read without loading any weights."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise DetectorError(f"{path} not found: --checkpoint must be a folder written by `detector train`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DetectorError(f"{path} is not valid JSON ({exc}); retrain or restore the checkpoint") from exc
    return data.get("meta", data) if isinstance(data, dict) else {}


def checkpoint_info(meta: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json and scores.json record about the model: shots k, seed, method, backbone, shot files,
    and whether its weights make the figures meaningful."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    backbone = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else {}
    pretrained = backbone.get("pretrained", cfg.get("pretrained"))
    shots = cfg.get("shots", meta.get("shots"))
    shot_files = meta.get("shots") if isinstance(meta.get("shots"), list) else None
    if isinstance(shots, list):
        shots = len(shots)
    record = meta.get("record") if isinstance(meta.get("record"), dict) else {}
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    captions = "class name (PromptAD templates)" if meta.get("baseline") else (
        f"{prov.get('backend')} ({prov['model']})" if prov.get("model") else prov.get("backend"))
    return json_safe({
        "shots": shots,
        "seed": cfg.get("seed", meta.get("seed")),
        "method": meta.get("baseline") or "finegrainedad",
        "backbone": backbone.get("name", cfg.get("backbone")),
        "pretrained": pretrained,
        "shot_files": shot_files,
        "meaningful": pretrained not in (None, "", "none"),
        "recipe": cfg.get("recipe"),
        "method_options": meta.get("method") if isinstance(meta.get("method"), dict) else None,
        "captions": captions,  # who wrote the caption record: its provenance backend (model)
        "defect_vocab": None if meta.get("baseline") else record.get("defect_vocab"),
        "weights_sha256": backbone.get("weights_sha256"),
    })


def meta_class_name(meta: dict[str, Any], ckpt_dir: Path) -> str:
    """The class a checkpoint was trained for."""
    for key in ("class_name", "class"):
        if meta.get(key):
            return str(meta[key])
    raise DetectorError(f"{ckpt_dir}/{CONFIG_FILE} names no class; pass --class")
