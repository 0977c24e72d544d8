"""Checkpoint folder I/O: ``model.safetensors`` (tensors) + ``config.json`` (metadata), written atomically.

Why this shape: safetensors holds only raw tensors (no code runs on load, unlike a pickle), and the JSON beside it
carries everything else (config, caption record, backbone name...) in a form people can read.  The two files are
written into a temporary sibling folder which then replaces the target, so a crash never leaves a half-written
checkpoint under the target name; ``config.json`` also records the SHA-256 of the weights so a mismatched pair is
caught on load.  Loading refuses pickles outright (a ``*.pt``/``*.bin``/``*.pkl`` where the safetensors should
be is an error, never unpickled).

``detector.store.saved_detector`` builds the FineGrainedAD save/load on top of these two functions.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import DetectorError
from detector.method.weights import PICKLE_SUFFIXES, is_random_weights
from detector.store.files import CHECKPOINT_FORMAT, OwnOutput, check_replaceable, has_format, json_safe
from detector.store.schemas import read_json
from fsad_data.atomic import staged_folder, write_bytes_atomic, write_text_atomic
from fsad_data.digest import file_sha256

if TYPE_CHECKING:  # torch and safetensors are imported where tensors are read or written: reading a checkpoint's
    import torch  # meta (checkpoint_meta, eval/predict start-up, the benchmark's bookkeeping) needs neither
    from torch import Tensor

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TIMINGS_FILE = "timings.json"  # run-to-run timings, kept out of config.json (byte-identical checkpoints)
FORMAT_VERSION = 1  # the folder container's version; the meta inside has its own (saved_detector.META_FORMAT_VERSION)


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


def is_checkpoint_folder(path: Path) -> bool:
    """Whether ``path`` holds a checkpoint this tool wrote: a config.json with the checkpoint's format tag (a
    Hugging Face model folder has a config.json too: the tag decides)."""
    return has_format(Path(path) / CONFIG_FILE, CHECKPOINT_FORMAT)


CHECKPOINT_OUTPUT = OwnOutput("a checkpoint folder of `detector train`", f"{CONFIG_FILE} with format "
                              f"{CHECKPOINT_FORMAT!r}", is_checkpoint_folder)


def safetensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of ``tensors`` with its JSON header's keys sorted: safetensors writes the metadata in
    hash-map order, which changes from one process to the next; sorted, the same tensors give the same bytes."""
    from safetensors.torch import save  # torch: reading a checkpoint's meta stays torch-free

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    ordered = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(ordered) > n:  # never: the same keys and values in another order have the same length
        return data
    return data[:8] + ordered.ljust(n, b" ") + data[8 + n :]


def save_checkpoint(directory: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any],
                    extra_files: dict[str, Any] | None = None) -> Path:
    """Write ``directory/model.safetensors`` + ``directory/config.json``; replace an old checkpoint only when done.

    Tensors are saved from CPU, contiguous, with their dtype.  ``meta`` must be plain JSON (tuples come back as
    lists).  The same tensors and meta give byte-identical files. ``extra_files``: more JSON files of the folder
    (``timings.json``: what changes from run to run stays out of config.json). An existing folder that is not a
    checkpoint of this tool (``CHECKPOINT_OUTPUT``) is never overwritten.
    """
    out = Path(directory)
    check_replaceable(out, CHECKPOINT_OUTPUT)
    if not isinstance(meta, dict):
        raise DetectorError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    _check_json(meta)
    from torch import Tensor  # torch: only where tensors are written (see the imports)

    for name, content in (extra_files or {}).items():
        _check_json(content, name)
    for k, v in tensors.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise DetectorError(f"checkpoint tensor {k!r} is not a (str, Tensor) pair; store other values in meta")

    try:
        with staged_folder(out) as tmp:  # complete beside `out`, then swapped in; the old one is kept until then
            plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
            blob = safetensors_bytes(plain, {"format": CHECKPOINT_FORMAT, "format_version": str(FORMAT_VERSION)})
            write_bytes_atomic(tmp / WEIGHTS_FILE, blob)
            config = {
                "format": CHECKPOINT_FORMAT,
                "format_version": FORMAT_VERSION,
                "weights": WEIGHTS_FILE,
                "weights_sha256": hashlib.sha256(blob).hexdigest(),
                "tensors": sorted(plain),
                "meta": meta,
            }
            write_text_atomic(tmp / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n")
            for name, content in (extra_files or {}).items():
                write_text_atomic(tmp / name, json.dumps(content, indent=2, sort_keys=True, allow_nan=False) + "\n")
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

    config = read_json(cfg_path, "the checkpoint is damaged: retrain or restore it")
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        raise DetectorError(f"{cfg_path} is not a FineGrainedAD checkpoint config (format != {CHECKPOINT_FORMAT!r})")
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
    if digest != file_sha256(weights):
        raise DetectorError(f"{weights} does not match the checksum in {cfg_path}; the checkpoint is damaged or mixed")
    from safetensors.torch import load_file  # torch: see safetensors_bytes

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

    data = read_json(path, "retrain or restore the checkpoint")
    meta = data.get("meta", data) if isinstance(data, dict) else None
    if not isinstance(meta, dict):
        raise DetectorError(f"{path} holds no 'meta' mapping; retrain or restore the checkpoint")
    return meta


def shot_files(meta: dict[str, Any]) -> list[str] | None:
    """The shot images' file names a checkpoint records (``meta.shots``; None when it has no list)."""
    shots = meta.get("shots")
    return [str(s) for s in shots] if isinstance(shots, list) else None


def shot_count(meta: dict[str, Any]) -> int | None:
    """k, the number of normal shots: the training config's ``shots``, else the length of the shot list."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    k = cfg.get("shots")
    if k is None:
        files = shot_files(meta)
        k = len(files) if files is not None else meta.get("shots")
    return k if isinstance(k, int) and not isinstance(k, bool) else None


def backbone_name(meta: dict[str, Any]) -> str | None:
    """The backbone's open_clip name: the registered ``model_name`` (when ``name`` is a JSON config's path), else
    ``name``, else the training config's ``backbone``."""
    if isinstance(meta.get("backbone"), str):  # an export's meta names it plainly
        return meta["backbone"]
    backbone = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else {}
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    name = backbone.get("model_name") or backbone.get("name") or cfg.get("backbone")
    return str(name) if name else None


def checkpoint_info(meta: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json and scores.json record about the model: shots k, seed, method, backbone, shot files,
    and whether its weights make the figures meaningful."""
    cfg = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    backbone = meta.get("backbone") if isinstance(meta.get("backbone"), dict) else {}
    pretrained = backbone.get("pretrained", cfg.get("pretrained"))
    record = meta.get("record") if isinstance(meta.get("record"), dict) else {}
    prov = record.get("provenance") if isinstance(record.get("provenance"), dict) else {}
    captions = "class name (PromptAD templates)" if meta.get("baseline") else (
        f"{prov.get('backend')} ({prov['model']})" if prov.get("model") else prov.get("backend"))
    return json_safe({
        "shots": shot_count(meta),
        "seed": cfg.get("seed", meta.get("seed")),
        "method": meta.get("baseline") or "finegrainedad",
        "backbone": backbone_name(meta),
        "pretrained": pretrained,
        "shot_files": shot_files(meta),
        "meaningful": not is_random_weights(pretrained),
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
