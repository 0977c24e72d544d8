"""Run an exported detector (``detector export``) with ONNX Runtime or OpenVINO, without torch.

Why its own module: a camera box or a service should score images with only ``onnxruntime`` (or
``openvino``), numpy and Pillow installed. This module imports none of torch, open_clip or the training
stack (a test checks it in a subprocess), and nothing here computes the method: the graph does. What is
left outside the graph is the resize to the fixed input size, done exactly as ``Backbone.preprocess``
does it (Pillow, the backbone's interpolation, straight to S x S with no crop), so the graph sees the same
uint8 pixels as the PyTorch path and gives the same scores and maps.

An export folder holds ``export.json`` (``ExportSpec`` fields, written by ``detector.deploy.export``) and the
graph: ``model.onnx`` (ONNX) or ``model.xml`` + ``model.bin`` (OpenVINO IR).

``export.json`` can be hand-edited or crafted, and its numbers size the buffers here (an input size of 60000 is
60000 x 60000 pixels an image), so ``read_spec`` bounds what it may cost before anything is built: the file's
size before reading (``MAX_SPEC_BYTES``), its nesting while parsing (as ``detector.store.schemas.read_json``, without
that module's pydantic import), and every value this module reads, by type and range (``MAX_INPUT_SIZE``,
``MAX_RESOLUTION``), each refused in one line naming the file and the key. The graph's own input size must match.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detector.errors import DetectorError
from detector.store.files import EXPORT_FORMAT

EXPORT_JSON = "export.json"
EXPORT_VERSION = 1
FORMATS = ("onnx", "openvino")
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")
MAX_SPEC_BYTES = 1 << 20  # export.json is about 2 kB; a megabyte is no export of ours
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 2048  # the backbone's square input (CLIP towers: 224 to 518 px)
MIN_RESOLUTION, MAX_RESOLUTION = 8, 4096  # the maps' side R: (B, R, R) float32, 64 MiB an image at the limit
OPENVINO_MISSING = ("OpenVINO is not installed: pip install openvino (or the project's extra: "
                    "pip install 'finegrained-ad[openvino]')")


@dataclass
class RuntimePrediction:
    """Image scores (B,) and anomaly maps (B, R, R) float32, as ``detector.method.model.Prediction``."""

    scores: np.ndarray
    maps: np.ndarray


def read_spec(folder: Path) -> dict[str, Any]:
    """``folder/export.json``, checked for the fields the runtime reads."""
    path = Path(folder) / EXPORT_JSON
    if not path.is_file():
        raise DetectorError(f"{path} not found: {folder} is not an export folder; run `detector export "
                            "--checkpoint CKPT --format onnx --out DIR` and pass DIR")
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise DetectorError(f"{path}: {size} bytes is too big for an {EXPORT_JSON} (limit {MAX_SPEC_BYTES}); "
                                "export again")
        spec = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise DetectorError(f"cannot read {path}: {exc.strerror or exc}; export again") from None
    except RecursionError:
        raise DetectorError(f"{path} nests its values too deep to be an export of this tool; export again") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetectorError(f"{path} is not valid JSON ({exc}); export again") from None
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise DetectorError(f"{path} is not a FineGrainedAD export (format != {EXPORT_FORMAT!r}); export again")
    if spec.get("format_version") != EXPORT_VERSION:
        raise DetectorError(f"{path}: export format_version {spec.get('format_version')!r}, this runtime reads "
                            f"{EXPORT_VERSION}; export again with this version")
    inp = spec.get("input")
    if spec.get("engine") not in FORMATS or not isinstance(inp, dict) or "size" not in inp \
            or "resolution" not in spec:
        raise DetectorError(f"{path}: engine, input.size or resolution missing; export again")
    _check_values(spec, path)
    return spec


def _whole(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi  # not bool, not 64.0


def _check_values(spec: dict[str, Any], path: Path) -> None:
    """Every value of ``spec`` this module or ``detector predict`` reads, by type and range; one line naming the
    key otherwise (before any buffer is sized by it)."""
    def bad(key: str, value: Any, expected: str) -> DetectorError:
        text = repr(value)
        return DetectorError(f"{path}: {key} {text if len(text) <= 60 else text[:57] + '...'}: expected "
                             f"{expected}; export again")

    inp = spec["input"]
    size = inp["size"]
    if not (isinstance(size, list) and len(size) == 2 and size[0] == size[1]
            and all(_whole(v, MIN_INPUT_SIZE, MAX_INPUT_SIZE) for v in size)):
        raise bad("input.size", size, f"[S, S], S a whole number from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} "
                  "(the backbone's square input)")
    if not _whole(spec["resolution"], MIN_RESOLUTION, MAX_RESOLUTION):
        raise bad("resolution", spec["resolution"], f"a whole number from {MIN_RESOLUTION} to {MAX_RESOLUTION}")
    resize = inp.get("resize", {})
    if not isinstance(resize, dict) or not isinstance(resize.get("interpolation", "bicubic"), str):
        raise bad("input.resize", resize, 'a mapping with "interpolation": "bicubic" or "bilinear"')
    for key, kinds in (("branch", str), ("precision", str), ("checkpoint_meta", dict)):
        if spec.get(key) is not None and not isinstance(spec[key], kinds):
            raise bad(key, spec[key], "a mapping" if kinds is dict else "text")


def graph_input(images: list[np.ndarray], size: int, interpolation: str = "bicubic") -> np.ndarray:
    """RGB uint8 (H, W, 3) arrays -> the graph's input (B, S, S, 3) uint8, resized with Pillow as
    ``Backbone.preprocess`` resizes (the export and its int8 calibration feed the graph the same way)."""
    resample = Image.BILINEAR if interpolation == "bilinear" else Image.BICUBIC
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise DetectorError(f"image {i} has shape {arr.shape} and dtype {arr.dtype}; expected RGB uint8 "
                                "(H, W, 3): load images with fsad_data.load_rgb")
        pil = Image.fromarray(np.ascontiguousarray(arr))
        out[i] = np.asarray(pil if pil.size == (size, size) else pil.resize((size, size), resample=resample))
    return out


class ExportedModel:
    """An export folder loaded into ONNX Runtime or OpenVINO; ``predict`` has ``FineGrainedAD.predict``'s shape."""

    def __init__(self, folder: Path, spec: dict[str, Any], engine: str, run: Any) -> None:
        self.folder = Path(folder)
        self.spec = spec
        self.engine = engine
        self._run = run  # (B, S, S, 3) uint8 -> (scores, maps)
        self.image_size = int(spec["input"]["size"][0])
        self.resolution = int(spec["resolution"])
        self.interpolation = str(spec["input"].get("resize", {}).get("interpolation", "bicubic"))

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 (H, W, 3) arrays -> (B, S, S, 3) uint8, resized as ``Backbone.preprocess`` resizes."""
        return graph_input(images, self.image_size, self.interpolation)

    def predict(self, images: list[np.ndarray], resolution: int | None = None, branch: str = "fused",
                batch_size: int = 8) -> RuntimePrediction:
        """Scores (B,) and maps (B, R, R) of RGB uint8 images, ``batch_size`` at a time."""
        if resolution is not None and int(resolution) != self.resolution:
            raise DetectorError(f"{self.folder} was exported at resolution {self.resolution}, not {resolution}; "
                                f"drop --resolution or export again with --resolution {resolution}")
        if branch != self.spec.get("branch", "fused"):
            raise DetectorError(f"{self.folder} holds the {self.spec.get('branch', 'fused')} branch only; "
                                "predict with --branch fused or use the PyTorch checkpoint")
        scores, maps = [], []
        for start in range(0, len(images), max(1, batch_size)):
            s, m = self._run(self.preprocess(images[start : start + batch_size]))
            scores.append(np.asarray(s, dtype=np.float32).reshape(-1))
            maps.append(np.asarray(m, dtype=np.float32))
        if not scores:
            r = self.resolution
            return RuntimePrediction(np.zeros(0, np.float32), np.zeros((0, r, r), np.float32))
        return RuntimePrediction(np.concatenate(scores), np.concatenate(maps))


def _onnx_runner(graph: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort  # optional extra
    except ImportError as exc:
        raise DetectorError("onnxruntime is not installed: pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    if threads:
        opts.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(graph), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise DetectorError(f"ONNX Runtime cannot load {graph} ({exc}); export again") from exc

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, m = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        return s, m

    run.input_shape = list(session.get_inputs()[0].shape)  # type: ignore[attr-defined]  # ["batch", S, S, 3]
    return run


def _openvino_runner(graph: Path, device: str, threads: int | None, precision: str) -> Any:
    try:
        import openvino as ov  # optional extra
    except ImportError as exc:
        raise DetectorError(OPENVINO_MISSING) from exc
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
    if precision in ("fp32", "int8"):  # else the CPU plugin may compute in bf16 where the CPU has it (1e-3 off)
        config["INFERENCE_PRECISION_HINT"] = "f32"
    try:
        compiled = core.compile_model(str(graph), device.upper() if device else "CPU", config)
    except Exception as exc:
        raise DetectorError(f"OpenVINO cannot load {graph} on {device} ({exc}); export again") from exc
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = compiled({INPUT_NAME: x})
        return res[outputs[0]], res[outputs[1]]

    try:
        run.input_shape = [d.get_length() if d.is_static else None  # type: ignore[attr-defined]
                           for d in compiled.input(INPUT_NAME).get_partial_shape()]
    except (AttributeError, RuntimeError, TypeError):  # an OpenVINO without these calls: checked when it runs
        run.input_shape = None  # type: ignore[attr-defined]
    return run


def load_exported(folder: str | Path, engine: str | None = None, device: str = "cpu",
                  threads: int | None = None) -> ExportedModel:
    """Load an export folder with ``engine`` (default: the one it was exported for).

    OpenVINO also reads an ONNX export directly; ONNX Runtime needs an ONNX export.
    """
    folder = Path(folder)
    spec = read_spec(folder)
    engine = engine or spec["engine"]
    if engine not in FORMATS:
        raise DetectorError(f"engine {engine!r}: use one of {', '.join(FORMATS)}")
    graph = folder / GRAPH_FILES[spec["engine"]]
    if not graph.is_file():
        raise DetectorError(f"{graph} not found; the export in {folder} is incomplete, export again")
    if engine == "onnx":
        if spec["engine"] != "onnx":
            raise DetectorError(f"{folder} is an OpenVINO export; run it with --engine openvino, or export "
                                "again with --format onnx")
        if device not in ("cpu", "CPU"):
            raise DetectorError(f"device {device!r}: this runtime runs ONNX exports on the CPU; use --device cpu")
        run = _onnx_runner(graph, threads)
    else:
        run = _openvino_runner(graph, "CPU" if device == "cpu" else device, threads,
                               str(spec.get("precision", "fp32")))
    shape = getattr(run, "input_shape", None)
    if isinstance(shape, list) and len(shape) == 4 and all(isinstance(v, int) for v in shape[1:3]) \
            and list(shape[1:3]) != list(spec["input"]["size"]):
        raise DetectorError(f"{folder / EXPORT_JSON}: input.size {spec['input']['size']} but {graph.name} takes "
                            f"{shape[1]} x {shape[2]} images; the folder mixes two exports: export again")
    return ExportedModel(folder, spec, engine, run)
