"""``detector export``: a trained checkpoint as one static graph for ONNX Runtime or OpenVINO.

After training everything FineGrainedAD needs at inference is fixed: the frozen image tower, the cached text
features of both prompt sets and the shots' visual memory. So the whole inference is one graph:

    images  uint8 (B, S, S, 3) RGB, B dynamic, S the backbone's input size
      -> /255, mean/std of the backbone (inside the graph)
      -> Backbone.encode (CLS, V-V patch tokens, taps)
      -> FineGrainedAD.score_features(..., resolution R, "fused")  (PAD, VAD, harmonic fusion, bilinear
         upsampling, Gaussian smoothing: the same code the PyTorch path runs)
    scores  float32 (B,)        maps  float32 (B, R, R)

Text features and memory are constants of the graph; the text tower is not in it. The one setting that
differs from the PyTorch path: ``FineGrainedAD.visual_map`` compares one image at a time with the memory (to
bound memory), a loop a tracer would unroll to a fixed batch size, so the graph asks it for the whole batch at
once (``per_image=False``: the same formula, ``model.memory_distance``, in one product; tests hold both paths
equal to 1e-4 for several batch sizes). The graph is made by
``torch.onnx.export`` with the dynamo exporter (torch.export + onnxscript, opset 18); OpenVINO IR is
converted from that ONNX file by ``openvino.convert_model`` (optional extra). ``export.json`` beside the
graph says what a caller needs (input size and resize rule, normalisation, output names, thresholds, class,
the source checkpoint and the SHA-256 of its files). ``detector.run.runtime`` runs it without torch.
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detector.deploy.api import read_thresholds
from detector.deploy.quantise import (
    Calibration,
    check_drift,
    class_images,
    class_normals,
    drift,
    quantise,
    require_nncf,
)
from detector.errors import DetectorError
from detector.method.model import SMOOTH_SIGMA
from detector.method.scoring import MAP_RESOLUTION
from detector.run.runtime import (
    EXPORT_JSON,
    EXPORT_VERSION,
    FORMATS,
    GRAPH_FILES,
    INPUT_NAME,
    MAX_RESOLUTION,
    OPENVINO_MISSING,
    OUTPUT_NAMES,
)
from detector.store.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_info,
    checkpoint_meta,
    meta_class_name,
)
from detector.store.files import (
    EXPORT_FORMAT,
    OwnOutput,
    check_replaceable,
    has_format,
    json_safe,
    naming_folder,
    output_lock,
)
from detector.store.hub import resolve_checkpoint
from detector.store.saved_detector import load_detector
from detector.store.thresholds import THRESHOLD_FILE
from fsad_data.atomic import staged_folder, write_json_atomic
from fsad_data.digest import file_sha256

PRECISIONS = ("fp32", "fp16", "int8")
OPSET = 18


class ExportGraph(nn.Module):
    """uint8 RGB images (B, S, S, 3) -> (scores (B,), fused maps (B, R, R)) of a trained detector."""

    def __init__(self, model: Any, resolution: int) -> None:
        super().__init__()
        self.model = model
        self.resolution = int(resolution)
        bb = model.backbone
        self.register_buffer("mean", torch.tensor(bb.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(bb.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0  # as Backbone.preprocess: /255, then mean/std
        x = (x - self.mean) / self.std
        scores, maps = self.model.score_features(self.model.backbone.encode(x), self.resolution, "fused",
                                                 per_image=False)  # one product over the dynamic batch axis
        return scores.float(), maps.float()


def _to_onnx(graph: ExportGraph, size: int, path: Path) -> None:
    """torch.onnx's dynamo exporter with a dynamic batch axis; its progress lines are kept off stdout."""
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)  # batch 2: a batch of 1 may specialise
    batch = torch.export.Dim("batch", min=1, max=4096)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamo=True, opset_version=OPSET,
                              dynamic_shapes=({0: batch},), external_data=False)
    except ImportError as exc:
        raise DetectorError(f"the ONNX exporter needs onnx and onnxscript ({exc}); pip install onnx onnxscript "
                            "(or the project's extra: pip install 'finegrained-ad[export]')") from exc


def _to_openvino(onnx_path: Path, xml_path: Path, precision: str, int8: Int8Step | None) -> dict[str, Any] | None:
    """The ONNX graph as OpenVINO IR (fp16: weights compressed; int8: NNCF-quantised on the class's images and
    refused past its drift limits, ``detector.deploy.quantise``); returns the int8 record for export.json."""
    try:
        import openvino as ov  # optional extra
    except ImportError as exc:
        raise DetectorError(OPENVINO_MISSING) from exc
    ov_model = ov.convert_model(str(onnx_path))
    if int8 is None:
        ov.save_model(ov_model, str(xml_path), compress_to_fp16=(precision == "fp16"))
        return None
    images = class_images(int8.calibration, int8.size, int8.interpolation)
    quantised = quantise(ov_model, images.calibration)
    core, hint = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    figures = drift(core.compile_model(ov_model, "CPU", hint), core.compile_model(quantised, "CPU", hint), images,
                    int8.resolution)
    check_drift(figures, int8.calibration.limits, int8.meaningful)
    ov.save_model(quantised, str(xml_path), compress_to_fp16=False)
    cal = int8.calibration
    return {"tool": "nncf", "nncf_version": str(getattr(require_nncf(), "__version__", None)), "drift": figures, "limits": asdict(cal.limits),
            "auroc_limits_applied": int8.meaningful,
            "calibration": {"data": str(cal.data), "class_name": cal.class_name, "layout": cal.layout,
                            "augmentation": "flips and quarter turns up to the count"}}


@dataclass(frozen=True)
class Int8Step:
    """What the int8 conversion needs beside the graph: the class's images and the graph's input and output."""

    calibration: Calibration
    size: int
    interpolation: str
    resolution: int
    meaningful: bool  # real backbone weights: the AUROC limits apply (random weights score by chance)


EXPORT_OUTPUT = OwnOutput("an earlier export of `detector export`", EXPORT_JSON,
                          lambda path: has_format(path / EXPORT_JSON, EXPORT_FORMAT))


def export_checkpoint(checkpoint: str | Path, fmt: str, out: str | Path, precision: str = "fp32",
                      resolution: int | None = None, calibration: Calibration | None = None) -> Path:
    """Write ``out`` (replaced whole, only when it is empty or an earlier export): the graph + export.json.

    ``resolution``: the map size R (default: the resolution of the checkpoint's stored threshold, else ``MAP_RESOLUTION``,
    as ``detector predict``). ``precision`` fp16 is OpenVINO's fp16 weight compression; int8 is NNCF's
    quantisation, calibrated and checked on the class's images of ``calibration`` (``detector.deploy.quantise``);
    ONNX exports are fp32.
    ``out`` is locked for the run (``detector.store.files.output_lock``: a second export into it is refused at once),
    and a write error that names no file (a full disk) names it.
    """

    out = Path(out)
    lock_at = out.resolve() if out.is_symlink() and out.is_dir() else out  # as staged_folder and predict
    _check_request(fmt, precision, calibration)  # before the lock: a refused request leaves no folder behind
    with output_lock(lock_at, "detector export"), naming_folder(out):
        return _export(checkpoint, fmt, out, precision, resolution, calibration)


def _export(checkpoint: str | Path, fmt: str, out: Path, precision: str, resolution: int | None,
            calibration: Calibration | None) -> Path:
    """Under the lock: check ``out``, load the checkpoint on the CPU in fp32, build the graph and write it."""

    check_replaceable(out, EXPORT_OUTPUT)
    ckpt = resolve_checkpoint(checkpoint)
    meta = checkpoint_meta(ckpt)
    res, thresholds = _resolution_and_thresholds(ckpt, resolution)
    if calibration is not None:  # the class and its images are checked before minutes of loading and tracing
        calibration = calibration if calibration.class_name else Calibration(
            calibration.data, meta_class_name(meta, ckpt), calibration.layout, calibration.limits)
        class_normals(calibration)
    model = load_detector(ckpt, device="cpu", precision="fp32")
    graph = ExportGraph(model, res).eval()
    spec = _export_spec(checkpoint, ckpt, meta, model.backbone, fmt, precision, res, thresholds)
    int8 = None
    if calibration is not None:
        int8 = Int8Step(calibration, model.backbone.image_size, model.backbone.interpolation, res,
                        bool(checkpoint_info(meta).get("meaningful")))
    _write_export(out, graph, model.backbone.image_size, fmt, precision, thresholds, spec, int8)
    return out


def _check_request(fmt: str, precision: str, calibration: Calibration | None) -> None:
    """Refuse a format or precision the export cannot write before anything is loaded."""
    if fmt not in FORMATS:
        raise DetectorError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise DetectorError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and fmt == "onnx":
        raise DetectorError("--precision fp16 is OpenVINO's fp16 weight compression: use --format openvino, or "
                            "--precision fp32 for ONNX")
    if precision == "int8" and (fmt != "openvino" or calibration is None):
        raise DetectorError("--precision int8 is OpenVINO's post-training quantisation, calibrated on the class's "
                            "normal images: use --format openvino with --data ROOT (the data set it was trained on)")
    if precision != "int8" and calibration is not None:
        raise DetectorError("--data, --class and --max-drift calibrate an int8 export: add --precision int8, or "
                            "leave them out")
    if precision == "int8":
        require_nncf()
    if fmt == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            raise DetectorError(OPENVINO_MISSING) from exc


def _resolution_and_thresholds(ckpt: Path, resolution: int | None) -> tuple[int, dict[str, Any] | None]:
    """The map size R (given, else the stored threshold's, else the default) and the stored thresholds where
    they were picked at R (maps of another size would make them meaningless)."""

    thresholds = read_thresholds(ckpt)
    res = int(resolution or (thresholds or {}).get("resolution") or MAP_RESOLUTION)
    if not 8 <= res <= MAX_RESOLUTION:  # the runtime refuses an export.json outside these (detector.run.runtime)
        raise DetectorError(f"--resolution {res}: use from 8 to {MAX_RESOLUTION} pixels")
    if thresholds and thresholds.get("resolution") not in (None, res):
        thresholds = None  # picked at another resolution: not valid for these maps
    return res, thresholds


def _export_spec(checkpoint: str | Path, ckpt: Path, meta: dict[str, Any], bb: Any, fmt: str, precision: str,
                 res: int, thresholds: dict[str, Any] | None) -> dict[str, Any]:
    """``export.json``: what a caller needs to feed the graph and read its outputs, and where it came from."""

    cfg = json.loads((ckpt / CONFIG_FILE).read_text(encoding="utf-8"))
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "engine": fmt,
        "files": [GRAPH_FILES[fmt]] + (["model.bin"] if fmt == "openvino" else []),
        "precision": precision,
        "opset": OPSET,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                  "size": [bb.image_size, bb.image_size], "batch": "dynamic",
                  "resize": {"interpolation": bb.interpolation, "library": "Pillow",
                             "rule": f"resize to {bb.image_size} x {bb.image_size} outside the graph, no crop"},
                  "normalisation": {"in_graph": True, "scale": "1/255", "mean": list(bb.mean),
                                    "std": list(bb.std)}},
        "outputs": {"scores": {"dtype": "float32", "shape": ["batch"]},
                    "maps": {"dtype": "float32", "shape": ["batch", res, res]}},
        "resolution": res,
        "branch": "fused",
        "smoothing_sigma": SMOOTH_SIGMA,
        "thresholds": thresholds,
        "class_name": meta.get("class_name"),
        "object_name": meta.get("object_name"),
        "checkpoint": {"source": str(checkpoint), "weights_sha256": file_sha256(ckpt / WEIGHTS_FILE),
                       "config_sha256": file_sha256(ckpt / CONFIG_FILE), "format_version": cfg.get("format_version")},
        "checkpoint_meta": {"class_name": meta.get("class_name"), **checkpoint_info(meta)},
        "torch_version": torch.__version__,
    }


def _write_export(out: Path, graph: ExportGraph, size: int, fmt: str, precision: str,
                  thresholds: dict[str, Any] | None, spec: dict[str, Any], int8: Int8Step | None = None) -> None:
    """The graph (ONNX, converted to OpenVINO IR if asked), the thresholds and ``export.json``, staged so that
    ``out`` is replaced whole or not at all."""

    with staged_folder(out) as tmp:
        onnx_path = tmp / GRAPH_FILES["onnx"]
        _to_onnx(graph, size, onnx_path)
        if fmt == "openvino":
            record = _to_openvino(onnx_path, tmp / GRAPH_FILES["openvino"], precision, int8)
            if record is not None:
                spec["int8"] = json_safe(record)  # the drift figures, the limits they passed, how it was calibrated
            onnx_path.unlink()
        if thresholds:  # `detector predict --threshold auto` and Detector.load read it as from a checkpoint
            write_json_atomic(tmp / THRESHOLD_FILE, {"fused": thresholds})
        write_json_atomic(tmp / EXPORT_JSON, spec)
