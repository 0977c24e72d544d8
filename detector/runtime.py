"""Run an exported detector (``detector export``) with ONNX Runtime or OpenVINO, without torch.

Why its own module: a camera box or a service should score images with only ``onnxruntime`` (or
``openvino``), numpy and Pillow installed. This module imports none of torch, open_clip or the training
stack (a test checks it in a subprocess), and nothing here computes the method: the graph does. What is
left outside the graph is the resize to the fixed input size, done exactly as ``Backbone.preprocess``
does it (Pillow, the backbone's interpolation, straight to S x S with no crop), so the graph sees the same
uint8 pixels as the PyTorch path and gives the same scores and maps.

An export folder holds ``export.json`` (``ExportSpec`` fields, written by ``detector.export``) and the
graph: ``model.onnx`` (ONNX) or ``model.xml`` + ``model.bin`` (OpenVINO IR).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import DetectorError

EXPORT_JSON = "export.json"
EXPORT_FORMAT = "finegrained-ad-export"
EXPORT_VERSION = 1
FORMATS = ("onnx", "openvino")
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")
OPENVINO_MISSING = ("OpenVINO is not installed: pip install openvino (or the project's extra: "
                    "pip install 'finegrained-ad[openvino]')")


@dataclass
class RuntimePrediction:
    """Image scores (B,) and anomaly maps (B, R, R) float32, as ``detector.model.Prediction``."""

    scores: np.ndarray
    maps: np.ndarray


def read_spec(folder: Path) -> dict[str, Any]:
    """``folder/export.json``, checked for the fields the runtime reads."""
    path = Path(folder) / EXPORT_JSON
    if not path.is_file():
        raise DetectorError(f"{path} not found: {folder} is not an export folder; run `detector export "
                            "--checkpoint CKPT --format onnx --out DIR` and pass DIR")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetectorError(f"{path} is not valid JSON ({exc}); export again") from exc
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        raise DetectorError(f"{path} is not a FineGrainedAD export (format != {EXPORT_FORMAT!r}); export again")
    if spec.get("format_version") != EXPORT_VERSION:
        raise DetectorError(f"{path}: export format_version {spec.get('format_version')!r}, this runtime reads "
                            f"{EXPORT_VERSION}; export again with this version")
    inp = spec.get("input")
    if spec.get("engine") not in FORMATS or not isinstance(inp, dict) or not isinstance(inp.get("size"), list) \
            or not isinstance(spec.get("resolution"), int):
        raise DetectorError(f"{path}: engine, input.size or resolution missing; export again")
    return spec


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
        from PIL import Image

        s = self.image_size
        resample = Image.BILINEAR if self.interpolation == "bilinear" else Image.BICUBIC
        out = np.empty((len(images), s, s, 3), dtype=np.uint8)
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise DetectorError(f"image {i} has shape {arr.shape} and dtype {arr.dtype}; expected RGB uint8 "
                                    "(H, W, 3): load images with fsad_data.load_rgb")
            pil = Image.fromarray(np.ascontiguousarray(arr))
            out[i] = np.asarray(pil if pil.size == (s, s) else pil.resize((s, s), resample=resample))
        return out

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
        import onnxruntime as ort
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

    return run


def _openvino_runner(graph: Path, device: str, threads: int | None, precision: str) -> Any:
    try:
        import openvino as ov
    except ImportError as exc:
        raise DetectorError(OPENVINO_MISSING) from exc
    core = ov.Core()
    config: dict[str, Any] = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
    if precision == "fp32":  # else the CPU plugin may compute in bf16 where the CPU has it (1e-3 off)
        config["INFERENCE_PRECISION_HINT"] = "f32"
    try:
        compiled = core.compile_model(str(graph), device.upper() if device else "CPU", config)
    except Exception as exc:
        raise DetectorError(f"OpenVINO cannot load {graph} on {device} ({exc}); export again") from exc
    outputs = [compiled.output(name) for name in OUTPUT_NAMES]

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        res = compiled({INPUT_NAME: x})
        return res[outputs[0]], res[outputs[1]]

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
    return ExportedModel(folder, spec, engine, run)
