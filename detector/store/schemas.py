"""The checks of the files the detector reads back: checkpoint ``config.json``, ``threshold.json``, caption records,
benchmark cell ``metrics.json``.

Why one module: each of these files can be hand-edited, truncated by a kill, copied from elsewhere or crafted,
and each bad one must give one line naming the file, the key and what is expected, never a traceback and never a
silent default. ``read_json`` bounds what a file may cost (size, nesting, UTF-8) before anything is built; the
typed checks are pydantic models (the same library and wording as ``fsad_data.config`` for settings files).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from detector.errors import DetectorError
from fsad_data.config import Seed, StrictInt, TextFileProblem, describe_error, read_utf8, type_adapter

MAX_JSON_BYTES = 256 << 20  # a checkpoint config with its caption record is kilobytes; this only stops absurd files
T = TypeVar("T")

Finite = Annotated[float, Field(strict=True, allow_inf_nan=False)]  # the tools write numbers: "0.5" or true is damage


def read_json(path: str | Path, fix: str) -> Any:
    """The JSON value in ``path``; a file that is too big, not UTF-8, not JSON or nested too deep is one
    ``DetectorError`` line naming the file and ending with ``fix`` (what the user should do)."""
    path = Path(path)
    try:
        text = read_utf8(path, MAX_JSON_BYTES)
    except TextFileProblem as p:
        words = f" is not valid JSON (not UTF-8 text: {p.binary})" if p.binary else str(p)
        raise DetectorError(f"{path}{words}; {fix}") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise DetectorError(f"{path} nests its values too deep to be a file this tool wrote; {fix}") from None
    except ValueError as exc:
        raise DetectorError(f"{path} is not valid JSON ({exc}); {fix}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check(model: type[T] | Any, data: Any, where: str, fix: str, prefix: str = "") -> T:
    """``data`` validated against a pydantic model or type; the first problem as one line naming ``where``."""
    adapter = model if isinstance(model, TypeAdapter) else type_adapter(model)
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        detail = describe_error(exc)
        if prefix:
            detail = detail.replace("key '", f"key '{prefix}", 1).replace(f"key '{prefix}(top level)'",
                                                                         f"key '{prefix.rstrip('.')}'")
        raise DetectorError(f"{where}: {detail}; {fix}") from None


class _Open(BaseModel):
    """Unknown keys are kept (a newer writer may add some); the known ones must have the right type."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# --------------------------------------------------------------------------- checkpoint config.json meta
class BackboneMeta(_Open):
    name: str
    pretrained: str | None = None
    tap_layers: list[StrictInt] | None = None
    init_seed: Seed = 0


class CheckpointMeta(_Open):
    """What ``load_detector`` reads from a checkpoint's meta (``detector.method.model``)."""

    backbone: BackboneMeta
    object_name: str
    pixel_names: Annotated[list[str], Field(min_length=1)]
    image_names: Annotated[list[str], Field(min_length=1)]
    tau: Finite
    n_memory: Annotated[int, Field(strict=True, ge=1)]
    prompt_config_pixel: dict[str, Any]
    prompt_config_image: dict[str, Any]
    record: dict[str, Any] | None = None


def check_checkpoint_meta(meta: Any, config_path: Path, tensor_names: list[str] | None = None) -> CheckpointMeta:
    """The typed meta of a checkpoint; with ``tensor_names``, also the counts the meta claims against the tensors
    really stored (checked before anything is built from those counts)."""
    fix = "retrain or restore the checkpoint"
    m = check(CheckpointMeta, meta, str(config_path), fix, prefix="meta.")
    if tensor_names is not None:
        stored = sum(1 for n in tensor_names if n.startswith("memory."))
        if m.n_memory != stored:
            raise DetectorError(f"{config_path}: meta.n_memory is {m.n_memory} but the weights hold {stored} "
                                f"memory.* tensors; {fix}")
    return m


# --------------------------------------------------------------------------- threshold.json
class ThresholdEntry(_Open):
    pixel_threshold: Finite | None = None
    image_threshold: Finite | None = None
    resolution: Annotated[int, Field(strict=True, ge=8)] | None = None
    checkpoint_sha256: str | None = None


THRESHOLD_FILE = TypeAdapter(dict[str, ThresholdEntry])


def read_threshold_file(path: Path) -> dict[str, ThresholdEntry]:
    """Every branch's entry of a ``threshold.json`` written by ``detector eval``, checked."""
    fix = "run `detector eval` again or pass --threshold FLOAT"
    data = read_json(path, fix)
    if not isinstance(data, dict):
        raise DetectorError(f"{path} must hold a mapping of branch -> thresholds (as `detector eval` writes it), "
                            f"not a {type(data).__name__}; {fix}")
    return check(THRESHOLD_FILE, data, str(path), fix)


# --------------------------------------------------------------------------- caption records
class TextEntry(_Open):
    level: str
    group: str
    normal: Annotated[list[str], Field(min_length=1)]
    abnormal: list[str]


TEXTS = TypeAdapter(Annotated[list[TextEntry], Field(min_length=1)])


def check_record_texts(texts: Any, where: str, class_name: str) -> None:
    """A class record's ``texts``: a non-empty list of {level, group, normal, abnormal} entries."""
    check(TEXTS, texts, f"{where}: class '{class_name}'", "rebuild the captions with `mfsc build`", prefix="texts")


# --------------------------------------------------------------------------- benchmark cells
class CellMetrics(_Open):
    metrics: dict[str, Finite | None]
    meaningful: bool = True


def read_cell_metrics(path: Path) -> CellMetrics:
    """A finished benchmark cell's metrics.json (damaged or hand-edited: one line naming it)."""
    fix = "delete that cell's metrics.json to rerun the cell, or remove the cell folder"
    data = read_json(path, fix)
    return check(CellMetrics, data, str(path), fix)
