"""``detector predict``: anomaly maps and scores for new images with a trained checkpoint.

For each input image (files, or folders searched recursively, sorted) it writes into OUT:
- ``maps/<name>.npy``: the anomaly map resized (bilinear) to the image's own size, float32 (H, W);
- ``overlays/<name>.png``: the image with the heat map blended in, one colour scale for the whole run;
- ``masks/<name>.png`` (only with a threshold): 255 where map >= threshold, else 0, at the image's size;
- ``scores.csv`` and ``scores.json``: per image the score (and, with an evaluation's thresholds: ``auto`` or
  an evaluation folder, the anomalous/normal decision at its image F1-max threshold);
- with a threshold, named defects (``detector.defects``): ``defects.json`` (per image every region's box
  in the image's pixels, area, peak/mean score, component, vote share, location, state, sentence),
  ``regions/<name>.png`` (the regions' label map: region k has value k, its mask), the count and the
  sentences in scores.csv/json, and the regions outlined and numbered on the overlays.
``<name>`` is the image's path relative to the common folder of the inputs, extension kept (``x.jpg``,
``sub/x.png``): unique, the same on every run. Images are decoded with ``fsad_data.load_rgb`` (RGB) and
processed in batches; one batch of images is held in memory at a time.

OUT is ours only when it is empty, new, or an earlier ``detector predict`` output (``scores.json`` with the
``PREDICT_FORMAT`` tag); anything else is refused before any work, naming it. The whole run is written to a
temporary folder beside OUT and swapped in at the end, so a rerun never leaves an earlier run's maps beside this
one's and a kill or Ctrl-C leaves the previous OUT whole. Files under OUT (and its temporary siblings) are never
read as inputs (``predict DIR --out DIR/sub``), and an input inside OUT is refused: OUT is replaced.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector import outputs, report
from detector.checkpoint_io import checkpoint_info, checkpoint_meta
from detector.data import load_images
from detector.defects import DEFAULT_MIN_AREA, DEFAULT_MIN_MARGIN, NamingConfig
from detector.errors import DetectorError
from detector.evaluate import Predictor
from detector.outputs import json_safe, write_csv
from detector.scoring import DEFAULT_BRANCH
from detector.thresholds import Thresholds
from fsad_data.atomic import (
    clean_orphans,
    staged_folder,
    write_bytes_atomic,
    write_json_atomic,
    write_png_atomic,
)
from fsad_data.images import is_image_file

PREDICT_FORMAT = "finegrained-ad-predictions"  # scores.json's tag: an --out this command may replace
SCORES_JSON = "scores.json"


@dataclass
class PredictConfig:
    """Flags of ``detector predict``."""

    checkpoint: Path
    inputs: list[Path]
    out: Path
    batch_size: int = 8
    threshold: str = "none"  # "auto" (detector.thresholds), an evaluation folder or file, "none", a number
    resolution: int | None = None  # None: the threshold's evaluation resolution, else 256
    branch: str = DEFAULT_BRANCH
    device: str = "cpu"
    precision: str = "fp32"
    progress: bool = True
    engine: str = "torch"  # torch (the checkpoint), onnx or openvino (a `detector export` folder)
    min_area: float = DEFAULT_MIN_AREA  # named defects: smallest region, fraction of the image
    min_margin: float = DEFAULT_MIN_MARGIN  # named defects: state probability margin, else "unknown"
    on_error: str = "raise"  # an image that does not decode: stop (naming it) or skip it (listed in scores.json)


class ScoredRows(list):
    """The rows of ``predict_paths`` (one dict per scored image), with ``skipped``: {"path", "error"} per image
    left out under ``--on-error skip``."""

    def __init__(self, rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> None:
        super().__init__(rows)
        self.skipped = skipped


def is_prediction_folder(path: Path) -> bool:
    """Whether ``path`` holds an output of ``detector predict`` (its scores.json, tagged or of the older form)."""
    from detector.validate import read_json

    try:
        data = read_json(Path(path) / SCORES_JSON, "")
    except DetectorError:
        return False
    return isinstance(data, dict) and (data.get("format") == PREDICT_FORMAT
                                       or {"branch", "resolution", "threshold", "images"} <= set(data))


def check_predict_out(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an --out that is a file, a non-empty folder that is not an earlier prediction, or
    one that holds an input (it is replaced whole at the end)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DetectorError(f"--out {out} is a file; give a folder for the maps and scores")
    if out.is_dir() and any(out.iterdir()) and not is_prediction_folder(out):
        raise DetectorError(f"--out {out} is not empty and is not an earlier output of `detector predict` (no "
                            f"{SCORES_JSON}); it is never replaced: choose another --out or empty it")
    where = out.resolve()
    for p in map(Path, inputs):
        if p.exists() and p.resolve().is_relative_to(where):
            raise DetectorError(f"the input {p} lies inside --out {out}, which this run replaces; predict never "
                                "reads what it wrote: give images outside --out")


def _output_folders(out: Path) -> list[Path]:
    """OUT and its temporary siblings (``.OUT.tmp-*`` of a run in progress): never read as inputs."""
    out = Path(out).resolve()
    beside = sorted(out.parent.glob(f".{out.name}.*")) if out.parent.is_dir() else []
    return [out, *(p.resolve() for p in beside if p.is_dir())]


def list_inputs(inputs: list[Path], exclude: Path | None = None) -> list[tuple[str, Path]]:
    """(output name, path) for every image: files as given, folders recursively in sorted order.

    The name is the image's path relative to the common folder of all inputs, extension kept (``x.jpg`` and
    ``x.png`` are two images; ``a/000.png`` and ``b/000.png`` too): unique and the same on every run. Files under
    ``exclude`` (the output folder) and its temporary siblings are never inputs, so a rerun does not score its own
    overlays and masks.
    """
    skip = _output_folders(exclude) if exclude is not None else []
    found: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                            and not any(f.resolve().is_relative_to(s) for s in skip))
        elif p.is_file():
            if not is_image_file(p):
                raise DetectorError(f"{p} is not an image (PNG/JPEG/BMP/TIFF); pass images or folders of images")
            found.append(p)
        else:
            raise DetectorError(f"{p} not found; pass image files or folders that exist")
    if not found:
        raise DetectorError(f"no images found in {', '.join(map(str, inputs))}; pass image files or folders"
                            + (f" (files under --out {exclude} are not inputs)" if exclude is not None else ""))
    roots = [Path(p).resolve() if Path(p).is_dir() else Path(p).resolve().parent for p in inputs]
    base = Path(os.path.commonpath(roots))
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for f in found:
        r = f.resolve()
        if r in seen:  # the same file given twice (a file and its folder): scored once
            continue
        seen.add(r)
        out.append((r.relative_to(base).as_posix(), f))
    return out


def resolve_threshold(spec: str | float | None, ckpt_dir: Path, branch: str = DEFAULT_BRANCH) -> Thresholds:
    """``--threshold``: none, a number, auto, or an evaluation folder / threshold.json (``detector.thresholds``)."""
    from detector.thresholds import resolve_threshold as resolve

    return resolve(spec, ckpt_dir, branch)


def map_to_image_size(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an (R, R) map to (H, W) float32 (the map covers the whole image)."""
    import cv2

    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == (height, width):
        return amap.copy()
    return cv2.resize(amap, (width, height), interpolation=cv2.INTER_LINEAR)


def predict_paths(model: Predictor, items: list[tuple[str, Path]], out: Path, *, thresholds: Thresholds,
                  resolution: int = 256, branch: str = DEFAULT_BRANCH, batch_size: int = 8,
                  info: dict[str, Any] | None = None, progress: bool = False,
                  min_area: float = DEFAULT_MIN_AREA, min_margin: float = DEFAULT_MIN_MARGIN,
                  on_error: str = "raise") -> ScoredRows:
    """Score the images in batches and write maps, overlays, masks, named defects, scores.csv and scores.json.
    ``on_error="skip"``: an image that does not decode is left out and listed (scores.json "skipped")."""
    from detector import defects as D

    if on_error not in ("raise", "skip"):
        raise DetectorError(f"--on-error {on_error!r}: use raise or skip")
    out = Path(out)
    skipped: list[dict[str, str]] = []
    (out / "maps").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    named: list[dict[str, Any]] = []
    lo, hi = math.inf, -math.inf
    naming = None  # named defects need a threshold and a model that exposes its token matching
    if thresholds.pixel is not None and hasattr(model, "abnormal_text_features"):
        naming = NamingConfig(thresholds.pixel, min_area, min_margin)
        bank = D.model_state_bank(model)
        object_name = str((getattr(model, "meta", None) or {}).get("object_name") or "")
    bar = outputs.progress(progress, len(items), "predicting")
    for start in range(0, len(items), max(1, batch_size)):
        batch = items[start : start + batch_size]
        if on_error == "skip":
            batch, images = _readable(batch, skipped)
            if not batch:
                bar(len(items[start : start + batch_size]))
                continue
        else:
            images = load_images([p for _, p in batch])
        if naming is not None:
            pred = model.predict(images, resolution=resolution, branch=branch, batch_size=batch_size, tokens=True)
        else:
            pred = model.predict(images, resolution=resolution, branch=branch, batch_size=batch_size)
        for j, ((name, path), img, score, amap) in enumerate(zip(batch, images, pred.scores, pred.maps)):
            full = map_to_image_size(amap, img.shape[0], img.shape[1])
            buf = _npy_bytes(full)
            write_bytes_atomic(out / "maps" / f"{name}.npy", buf)
            lo, hi = min(lo, float(amap.min())), max(hi, float(amap.max()))
            row: dict[str, Any] = {"name": name, "path": str(path), "width": img.shape[1], "height": img.shape[0],
                                   "score": float(score), "map_max": float(amap.max())}
            if thresholds.image is not None:
                row["anomalous"] = bool(score >= thresholds.image)
            if thresholds.pixel is not None:
                mask = full >= thresholds.pixel
                row["mask_fraction"] = float(mask.mean())
                write_png_atomic(out / "masks" / f"{name}.png", mask.astype(np.uint8) * 255)
            if naming is not None:  # named at the image's own size: boxes and masks in its pixels
                ev = D.token_evidence(pred.tokens[j], pred.token_groups[j], bank)
                found, labels = D.name_regions(full, ev, bank, naming, object_name=object_name, tau=float(model.tau))
                write_png_atomic(out / "regions" / f"{name}.png", _label_png(labels))
                row["n_defects"] = len(found)
                row["defects"] = "; ".join(d.sentence for d in found)
                named.append({"name": name, "path": str(path), "regions": f"regions/{name}.png",
                              "defects": [d.to_dict() for d in found]})
            rows.append(row)
        bar(len(items[start : start + batch_size]))
    bar(0, done=True)
    if not rows:
        raise DetectorError(f"none of the {len(items)} image(s) could be read (all skipped); first: "
                            f"{skipped[0]['path']}: {skipped[0]['error']}")
    # second pass: overlays on one colour scale for the run (maps read back, one image at a time)
    for k, row in enumerate(rows):
        img = load_images([row["path"]])[0]
        full = np.load(out / "maps" / f"{row['name']}.npy")
        pic = report.overlay(img, full, None, lo, hi)
        if naming is not None:
            from PIL import Image

            labels = np.asarray(Image.open(out / named[k]["regions"]))
            pic = report.draw_regions(pic, labels, [d["box"] for d in named[k]["defects"]])
        write_png_atomic(out / "overlays" / f"{row['name']}.png", pic)
    write_csv(out / "scores.csv", rows)
    threshold = {"pixel": thresholds.pixel, "image": thresholds.image, "source": thresholds.source}
    if naming is not None:
        write_json_atomic(out / "defects.json", json_safe({
            **(info or {}), "threshold": threshold, "min_area": naming.min_area, "min_margin": naming.min_margin,
            "images": named}))
    write_json_atomic(out / SCORES_JSON, json_safe({
        "format": PREDICT_FORMAT,
        **(info or {}),
        "branch": branch,
        "resolution": resolution,
        "threshold": threshold,
        "colour_scale": [lo, hi],
        "images": [dict(r, defects=n["defects"]) for r, n in zip(rows, named)] if naming is not None else rows,
        **({"skipped": skipped} if skipped else {}),
    }))
    return ScoredRows(rows, skipped)


def summary_line(rows: list[dict[str, Any]], out: Path) -> str:
    """What ``detector predict`` did, in one line: images, how many the image threshold flags, named regions,
    and which of its files and folders OUT holds."""
    parts = [f"{len(rows)} image(s) scored"]
    if any("anomalous" in r for r in rows):
        parts.append(f"{sum(r.get('anomalous') is True for r in rows)} flagged anomalous (image threshold)")
    named = any("n_defects" in r for r in rows)
    if named:
        parts.append(f"{sum(int(r.get('n_defects') or 0) for r in rows)} region(s) named")
    files = ["scores.csv", "scores.json"] + (["defects.json"] if named else []) + \
        (["masks/"] if any("mask_fraction" in r for r in rows) else []) + (["regions/"] if named else []) + \
        ["overlays/", "maps/"]
    return f"{', '.join(parts)}; in {out}: {', '.join(files)}"


def _readable(batch: list[tuple[str, Path]], skipped: list[dict[str, str]]) -> tuple[list[tuple[str, Path]],
                                                                                     list[np.ndarray]]:
    """The items of ``batch`` whose image decodes, with their pixels; the others appended to ``skipped``."""
    from fsad_data import DataError

    kept, images = [], []
    for name, path in batch:
        try:
            images.append(load_images([path])[0])
        except DataError as exc:
            skipped.append({"path": str(path), "error": str(exc)})
            continue
        kept.append((name, path))
    return kept, images


def _label_png(labels: np.ndarray) -> np.ndarray:
    """A region label map as an 8-bit PNG array (16-bit beyond 255 regions)."""
    return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def run_predict(config: PredictConfig) -> ScoredRows:
    """``detector predict``: load the checkpoint (or export, local or Hub) once, then score every input image."""
    from detector.hub import resolve_checkpoint

    out = Path(config.out)
    if out.is_symlink() and out.is_dir():
        out = out.resolve()  # the folder the link names is the output (staged_folder replaces it there)
    check_predict_out(out, list(config.inputs))
    clean_orphans(out)  # what a killed run left beside OUT (never read as inputs either way)
    ckpt = resolve_checkpoint(config.checkpoint)
    exported = None
    if config.engine == "torch":
        meta = checkpoint_meta(ckpt)
    else:
        from detector.runtime import load_exported

        exported = load_exported(ckpt, engine=config.engine, device=config.device)
        meta = exported.spec.get("checkpoint_meta") or {}
    items = list_inputs(list(config.inputs), exclude=out)
    thresholds = resolve_threshold(config.threshold, ckpt, config.branch)
    resolution = config.resolution or thresholds.resolution or (exported.resolution if exported else 256)
    if thresholds.resolution and resolution != thresholds.resolution:
        raise DetectorError(f"--resolution {resolution} differs from the resolution {thresholds.resolution} "
                            f"the threshold was picked at ({thresholds.source}); drop --resolution or "
                            "pass a threshold value")
    if exported is not None:
        model: Any = exported
        info = {"checkpoint": str(config.checkpoint), **meta, "engine": config.engine}
    else:
        from detector.model import load_detector

        model = load_detector(ckpt, device=config.device, precision=config.precision)
        info = {"checkpoint": str(config.checkpoint), "class_name": meta.get("class_name"),
                **checkpoint_info(meta), "engine": "torch"}
    with staged_folder(out) as tmp:  # the whole run, then swapped in: never one run's maps beside another's
        return predict_paths(model, items, tmp, thresholds=thresholds, resolution=resolution,
                             branch=config.branch, batch_size=config.batch_size, info=info,
                             progress=config.progress, min_area=config.min_area, min_margin=config.min_margin,
                             on_error=config.on_error)
