"""``detector predict``: anomaly maps and scores for new images with a trained checkpoint.

For each input image (files, or folders searched recursively, sorted) it writes into OUT:
- ``maps/<stem>.npy`` (unless ``maps=False``, ``--no-maps``): the anomaly map resized (bilinear) to the image's
  own size, float32 (H, W);
- ``overlays/<stem>.png`` (unless ``overlays=False``, ``--no-overlays``): the image with the heat map blended
  in, one colour scale for the whole run, above a caption band (``detector.eval.overlay_caption``: the verdict, the
  score against the image threshold, the named defects' sentences);
- ``masks/<stem>.png`` (only with a threshold): 255 where map >= threshold, else 0, at the image's size;
- ``scores.csv`` and ``scores.json``: per image the score (and, with an image threshold, the anomalous/normal
  decision) and the paths of its files in OUT (``map``, ``overlay``, ``mask``, ``regions``: only those written);
- with a threshold, named defects (``detector.eval.defects``): ``defects.json`` (per image every region's box
  in the image's pixels, area, peak/mean score, component, vote share, location, state, sentence),
  ``regions/<stem>.png`` (the regions' label map: region k has value k, its mask), the count and the
  sentences in scores.csv/json, and the regions outlined and numbered on the overlays.
An image's ``name`` (scores.csv) is its path relative to the common folder of the inputs, extension kept
(``x.jpg``, ``sub/x.png``): unique, the same on every run. Its files are named by ``output_stems``: the name
without its extension (``good/000.png`` -> ``overlays/good/000.png``; a file name too long for the file system
is shortened, with a hash of the name). Images are decoded with ``fsad_data.load_rgb`` (RGB) and processed in
batches; one batch of images is held in memory at a time.

Large images are scored, not refused: one of more than ``MAX_IMAGE_PIXELS`` pixels (a line-scan frame, a 12000 x
12000 picture) is decoded reduced by a whole factor to at most that many (``load_rgb(..., max_pixels=)``: JPEG
scaled while decoding, other formats box-averaged), the model sees that copy (it works at its fixed input size
either way) and its map, mask, regions, overlay and defect boxes are at that size. scores.csv/json record the
file's own ``width`` and ``height`` and the ``scale`` of its files (1.0, or e.g. 0.333 for a third of each side).

OUT is locked for the run (``detector.store.files.output_lock``: a second run into it is refused at once). OUT is ours
only when it is empty, new, or an earlier ``detector predict`` output (``scores.json`` with the
``PREDICTIONS_FORMAT`` tag); anything else is refused before any work, naming it. The whole run is written to a
temporary folder beside OUT and swapped in at the end, so a rerun never leaves an earlier run's maps beside this
one's and a kill or Ctrl-C leaves the previous OUT whole. Files under OUT (and its temporary siblings) are never
read as inputs (``predict DIR --out DIR/sub``), and an input inside OUT is refused: OUT is replaced.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detector.errors import DetectorError
from detector.eval import report
from detector.eval.defects import DEFAULT_MIN_AREA, DEFAULT_MIN_MARGIN
from detector.eval.overlay_caption import add_caption, caption_lines
from detector.eval.postprocess import Decisions, ImageResult, namer_for, postprocess, run_model
from detector.method.scoring import DEFAULT_BRANCH, MAP_RESOLUTION
from detector.run import outputs
from detector.run.evaluate import Predictor, ScoringSettings
from detector.run.outputs import write_csv
from detector.run.runtime import load_exported
from detector.store.checkpoint import checkpoint_info, checkpoint_meta
from detector.store.files import (
    DEFECTS_JSON,
    PREDICTIONS_FORMAT,
    SCORES_CSV,
    OwnOutput,
    check_replaceable,
    has_format,
    json_safe,
    naming_folder,
    output_lock,
)
from detector.store.hub import resolve_checkpoint
from detector.store.thresholds import Thresholds
from detector.store.thresholds import resolve_threshold as resolve
from fsad_data import DataError
from fsad_data.atomic import (
    clean_orphans,
    staged_folder,
    write_bytes_atomic,
    write_json_atomic,
    write_png_atomic,
)
from fsad_data.images import image_size, is_image_file, load_rgb

SCORES_JSON = "scores.json"
MAX_IMAGE_PIXELS = 25_000_000  # an image of more pixels (above a 20 MP camera frame) is decoded reduced to this
MAX_NAME_BYTES = 200  # an output file's stem, in UTF-8 bytes: with "_jpeg", "-k", ".npy" and the atomic write's
#                       temporary name (+14) it stays within the 255 bytes of a file name


@dataclass
class PredictConfig:
    """Flags of ``detector predict``."""

    checkpoint: Path
    inputs: list[Path]
    out: Path
    batch_size: int = 8
    threshold: str = "none"  # "auto" (detector.store.thresholds), an evaluation folder or file, "none", a number
    image_threshold: float | None = None  # decides `anomalous` over the threshold's own (detector.store.thresholds)
    resolution: int | None = None  # None: the threshold's evaluation resolution, else MAP_RESOLUTION
    branch: str = DEFAULT_BRANCH
    device: str = "cpu"
    precision: str = "fp32"
    progress: bool = True
    engine: str = "torch"  # torch (the checkpoint), onnx or openvino (a `detector export` folder)
    min_area: float = DEFAULT_MIN_AREA  # named defects: smallest region, fraction of the image
    min_margin: float = DEFAULT_MIN_MARGIN  # named defects: state probability margin, else "unknown"
    on_error: str = "raise"  # an image that does not decode: stop (naming it) or skip it (listed in scores.json)
    overlays: bool = True  # overlays/: the slowest output on large images (PNG encoding)
    maps: bool = True  # maps/: float32 .npy, 4 bytes per pixel of every image


class ScoredRows(list):
    """The rows of ``predict_paths`` (one dict per scored image), with ``skipped``: {"path", "error"} per image
    left out under ``--on-error skip``."""

    def __init__(self, rows: list[dict[str, Any]], skipped: list[dict[str, str]]) -> None:
        super().__init__(rows)
        self.skipped = skipped


PREDICTIONS_OUTPUT = OwnOutput("an earlier output of `detector predict`", SCORES_JSON, lambda path: has_format(
    path / SCORES_JSON, PREDICTIONS_FORMAT, frozenset({"branch", "resolution", "threshold", "images"})))


def check_predict_out(out: Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an --out this command may not replace (``detector.store.files``), or one that
    holds an input (it is replaced whole at the end)."""
    out = Path(out)
    check_replaceable(out, PREDICTIONS_OUTPUT)
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
    """(name, path) for every image: files as given, folders recursively in sorted order.

    The name is the image's path relative to the common folder of all inputs, extension kept (``x.jpg`` and
    ``x.png`` are two images; ``a/000.png`` and ``b/000.png`` too): unique and the same on every run (its files
    in OUT are named by ``output_stems``). Files under
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


OUTPUT_FILES = {"map": ("maps", ".npy"), "overlay": ("overlays", ".png"), "mask": ("masks", ".png"),
                "regions": ("regions", ".png")}  # an image's files in OUT: scores.csv column -> (folder, extension)


def output_stems(names: list[str]) -> list[str]:
    """The stem of each image's files in OUT (``overlays/<stem>.png``, ``maps/<stem>.npy``): its name without
    the extension (``good/000.png`` -> ``good/000``), so no file reads ``000.png.png``.

    A file name whose stem is longer than ``MAX_NAME_BYTES`` (UTF-8) is cut there and ends with ``~`` and 12
    hex digits of the SHA-256 of the whole name (``<first 187 bytes>~3f2c1b9e0d4a``): valid on the file system
    and the same on every run.
    Names that would share a stem keep their extension in it (``x.jpg`` and ``x.png`` -> ``x_jpg``, ``x_png``);
    one still taken (an input named ``x_jpg.png``, which keeps ``x_jpg``), or whose file would be a folder of
    another's (``x.png`` beside a folder ``x.png/``), gets ``-2``, ``-3``, ... Stems are compared case-folded, so
    they stay distinct on a case-insensitive file system too. Unique for unique names, and the same for the same
    inputs on every run.
    """
    def split(name: str) -> tuple[str, str]:
        base = name.rsplit("/", 1)[-1]
        plain, ext = (name.rsplit(".", 1)[0], name.rsplit(".", 1)[1]) if "." in base.lstrip(".") else (name, "")
        return _short_stem(plain, name), ext

    parts = [split(n) for n in names]
    folders = {"/".join(n.split("/")[:k]).casefold() for n in names for k in range(1, n.count("/") + 1)}
    exts = {ext for _, ext in OUTPUT_FILES.values()}

    def free(stem: str, taken: set[str]) -> bool:
        key = stem.casefold()
        return key not in taken and not any(f"{key}{ext}" in folders for ext in exts)

    count: dict[str, int] = {}
    for plain, _ in parts:
        count[plain.casefold()] = count.get(plain.casefold(), 0) + 1
    stems: list[str | None] = [plain if count[plain.casefold()] == 1 and free(plain, set()) else None
                               for plain, _ in parts]
    taken = {s.casefold() for s in stems if s is not None}
    for i, (plain, ext) in enumerate(parts):
        if stems[i] is not None:
            continue
        stem = f"{plain}_{ext}" if ext else plain
        k = 1
        while not free(candidate := stem if k == 1 else f"{stem}-{k}", taken):
            k += 1
        stems[i] = candidate
        taken.add(candidate.casefold())
    return [s for s in stems if s is not None]


def _short_stem(plain: str, name: str) -> str:
    """``plain`` with its last component cut to ``MAX_NAME_BYTES`` (UTF-8, whole characters) and marked with a hash
    of ``name`` when it is longer; as it is otherwise."""
    folder, sep, last = plain.rpartition("/")
    size = len(last.encode("utf-8", "surrogateescape"))
    if size <= MAX_NAME_BYTES:
        return plain
    tag = "~" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    keep, used = [], 0
    for ch in last:
        n = len(ch.encode("utf-8", "surrogateescape"))
        if used + n > MAX_NAME_BYTES - len(tag):
            break
        keep.append(ch)
        used += n
    return f"{folder}{sep}{''.join(keep)}{tag}"


def output_file(kind: str, stem: str) -> str:
    """An image's file of ``kind`` (``OUTPUT_FILES``) relative to OUT, as scores.csv and defects.json record it."""
    folder, ext = OUTPUT_FILES[kind]
    return f"{folder}/{stem}{ext}"


def resolve_threshold(spec: str | float | None, ckpt_dir: Path, branch: str = DEFAULT_BRANCH,
                      image: float | None = None) -> Thresholds:
    """``--threshold``: none, a number, auto, or an evaluation folder / threshold.json, and ``--image-threshold``
    (``detector.store.thresholds``)."""

    return resolve(spec, ckpt_dir, branch, image)


@dataclass(frozen=True, kw_only=True)
class PredictSettings(ScoringSettings):
    """How ``predict_paths`` scores and what it writes, shared by its steps (score the batches -> overlays -> tables)."""

    thresholds: Thresholds
    on_error: str = "raise"
    overlays: bool = True
    maps: bool = True


@dataclass
class _Scored:
    """What the batch pass gathers: a row per scored image, its named defects (with a namer), the images left
    out, and the range of the model's maps (the overlays' one colour scale for the run)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    named: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    lo: float = math.inf
    hi: float = -math.inf


def predict_paths(model: Predictor, items: list[tuple[str, Path]], out: Path, s: PredictSettings) -> ScoredRows:
    """Score the images and write maps, overlays, masks, named defects, scores.csv and scores.json into ``out``
    (``on_error="skip"``: an image that does not decode is left out and listed; ``overlays`` / ``maps`` False:
    those files are not written and cost nothing): score every batch (maps, masks, regions), then the
    overlays (they wait for the run's colour scale), then the tables."""

    if s.on_error not in ("raise", "skip"):
        raise DetectorError(f"--on-error {s.on_error!r}: use raise or skip")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = dict(zip((n for n, _ in items), output_stems([n for n, _ in items])))
    decisions = Decisions(s.thresholds.pixel, s.thresholds.image,
                          namer_for(model, s.thresholds.pixel, s.min_area, s.min_margin))
    # the overlays wait for the run's colour scale: each image's map at the model's resolution is kept here
    scratch = tempfile.TemporaryDirectory(prefix=".overlay-maps-", dir=out) if s.overlays else None
    try:
        scored = _score_items(model, items, out, s, decisions, stems, scratch)
        if scratch is not None:
            _overlay_pass(out, scored, Path(scratch.name), decisions)
    finally:
        if scratch is not None:
            scratch.cleanup()
    _write_tables(out, scored, s, decisions)
    return ScoredRows(scored.rows, scored.skipped)


def _score_items(model: Predictor, items: list[tuple[str, Path]], out: Path, s: PredictSettings,
                 decisions: Decisions, stems: dict[str, str], scratch: Any) -> _Scored:
    """The batch pass: read each batch (skipping what does not decode, with ``on_error="skip"``), score it,
    post-process it (``detector.eval.postprocess``) and write each image's files."""
    scored = _Scored()
    kinds = [k for k, wanted in (("map", s.maps), ("overlay", s.overlays), ("mask", decisions.pixel is not None),
                                 ("regions", decisions.namer is not None)) if wanted]
    bar = outputs.progress(s.progress, len(items), "predicting")
    for start in range(0, len(items), max(1, s.batch_size)):
        batch = items[start : start + s.batch_size]
        if s.on_error == "skip":
            batch, images, sizes = _readable(batch, scored.skipped)
            if not batch:
                bar(len(items[start : start + s.batch_size]))
                continue
        else:
            images, sizes = _load_images([p for _, p in batch])
        pred = run_model(model, images, decisions, resolution=s.resolution, branch=s.branch,
                         batch_size=s.batch_size)
        for (name, path), (width, height), result in zip(batch, sizes, postprocess(pred, images, decisions)):
            row = _image_row(name, path, width, height, result)
            row.update((kind, output_file(kind, stems[name])) for kind in kinds)
            _write_image_files(out, row, result, scored, scratch)
            scored.rows.append(row)
        bar(len(items[start : start + s.batch_size]))
    bar(0, done=True)
    if not scored.rows:
        raise DetectorError(f"none of the {len(items)} image(s) could be read (all skipped); first: "
                            f"{scored.skipped[0]['path']}: {scored.skipped[0]['error']}")
    return scored


def _image_row(name: str, path: Path, width: int, height: int, result: ImageResult) -> dict[str, Any]:
    """An image's row of scores.csv/json (without its files): size and scale, score, map maximum, and what the
    thresholds decide."""
    amap = result.model_map
    row: dict[str, Any] = {"name": name, "path": str(path), "width": width, "height": height,
                           "scale": round(result.map.shape[1] / width, 6), "score": result.score,
                           "map_max": float(amap.max())}
    if result.anomalous is not None:
        row["anomalous"] = result.anomalous
    if result.mask is not None:
        row["mask_fraction"] = float(result.mask.mean())
    if result.defects is not None:  # named at the image's own size: boxes and masks in its pixels
        row["n_defects"] = len(result.defects)
        row["defects"] = "; ".join(d.sentence for d in result.defects)
    return row


def _write_image_files(out: Path, row: dict[str, Any], result: ImageResult, scored: _Scored, scratch: Any
                       ) -> None:
    """An image's map, mask and regions into OUT, its model map kept for the overlay pass, its defects noted."""
    amap = result.model_map
    scored.lo, scored.hi = min(scored.lo, float(amap.min())), max(scored.hi, float(amap.max()))
    if "map" in row:
        write_bytes_atomic(out / row["map"], _npy_bytes(result.map))
    if scratch is not None:
        np.save(Path(scratch.name) / f"{len(scored.rows)}.npy", np.asarray(amap, dtype=np.float32))
    if result.mask is not None:
        write_png_atomic(out / row["mask"], result.mask.astype(np.uint8) * 255)
    if result.defects is not None and result.labels is not None:
        write_png_atomic(out / row["regions"], _label_png(result.labels))
        scored.named.append({"name": row["name"], "path": row["path"], "regions": row["regions"],
                             "defects": [d.to_dict() for d in result.defects]})


def _overlay_pass(out: Path, scored: _Scored, scratch: Path, decisions: Decisions) -> None:
    """The second pass: overlays on one colour scale for the run, one image at a time."""
    for k, row in enumerate(scored.rows):
        amap = np.load(scratch / f"{k}.npy")
        _write_overlay(out / row["overlay"], _load_images([row["path"]])[0][0], amap, (scored.lo, scored.hi), row,
                       decisions.image, scored.named[k] if decisions.namer is not None else None, out)


def _write_tables(out: Path, scored: _Scored, s: PredictSettings, decisions: Decisions) -> None:
    """scores.csv, defects.json (with a namer) and scores.json, last."""
    write_csv(out / SCORES_CSV, scored.rows)
    threshold = {"pixel": s.thresholds.pixel, "image": s.thresholds.image, "source": s.thresholds.source}
    info = s.info or {}
    if decisions.namer is not None:
        config = decisions.namer.config
        write_json_atomic(out / DEFECTS_JSON, json_safe({
            **info, "threshold": threshold, "min_area": config.min_area, "min_margin": config.min_margin,
            "images": scored.named}))
    images = scored.rows
    if decisions.namer is not None:
        images = [dict(r, defects=n["defects"]) for r, n in zip(scored.rows, scored.named)]
    write_json_atomic(out / SCORES_JSON, json_safe({
        "format": PREDICTIONS_FORMAT,
        **info,
        "branch": s.branch,
        "resolution": s.resolution,
        "threshold": threshold,
        "colour_scale": [scored.lo, scored.hi],
        "images": images,
        **({"skipped": scored.skipped} if scored.skipped else {}),
    }))


OVERLAY_PNG_LEVEL = 1  # zlib level of the overlays: ~6x faster than the default 6 on large pictures, ~15% larger


def _write_overlay(path: Path, image: np.ndarray, amap: np.ndarray, scale: tuple[float, float],
                   row: dict[str, Any], image_threshold: float | None, named: dict[str, Any] | None,
                   out: Path) -> None:
    """One overlay: the heat map on the run's colour scale, the named regions outlined and numbered, and the
    caption band (verdict, score against the image threshold, the defects' sentences in region order)."""

    pic = report.overlay(image, amap, None, *scale)  # the map resized to the image as maps/ holds it
    sentences = None
    if named is not None:

        labels = np.asarray(Image.open(out / named["regions"]))
        pic = report.draw_regions(pic, labels, [d["box"] for d in named["defects"]])
        sentences = [d["sentence"] for d in named["defects"]]
    lines = caption_lines(row["score"], image_threshold, row.get("anomalous"), sentences)
    write_png_atomic(path, add_caption(pic, lines), compress_level=OVERLAY_PNG_LEVEL)


def summary_line(rows: list[dict[str, Any]], out: Path) -> str:
    """What ``detector predict`` did, in one line: images, how many the image threshold flags, named regions,
    and which of its files and folders OUT holds (a folder only when the rows record files in it)."""
    parts = [f"{len(rows)} image(s) scored"]
    if any("anomalous" in r for r in rows):
        parts.append(f"{sum(r.get('anomalous') is True for r in rows)} flagged anomalous (image threshold)")
    named = any("n_defects" in r for r in rows)
    if named:
        parts.append(f"{sum(int(r.get('n_defects') or 0) for r in rows)} region(s) named")
    files = [SCORES_CSV, SCORES_JSON] + ([DEFECTS_JSON] if named else []) + \
        [f"{OUTPUT_FILES[kind][0]}/" for kind in ("mask", "regions", "overlay", "map") if any(kind in r for r in rows)]
    return f"{', '.join(parts)}; in {out}: {', '.join(files)}"


def _load_images(paths: list[str | Path]) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """The RGB pixels of each file, reduced to at most ``MAX_IMAGE_PIXELS`` (``fsad_data.load_rgb``), and the
    file's own (width, height)."""
    images, sizes = [], []
    for p in paths:
        images.append(load_rgb(p, max_pixels=MAX_IMAGE_PIXELS))
        sizes.append(image_size(p))  # the header: the file's own size, also of an image decoded reduced
    return images, sizes


def _readable(batch: list[tuple[str, Path]], skipped: list[dict[str, str]]) -> tuple[
        list[tuple[str, Path]], list[np.ndarray], list[tuple[int, int]]]:
    """The items of ``batch`` whose image decodes, with their pixels and own sizes; the others appended to
    ``skipped``."""

    kept, images, sizes = [], [], []
    for name, path in batch:
        try:
            (img,), (size,) = _load_images([path])
        except DataError as exc:
            skipped.append({"path": str(path), "error": str(exc)})
            continue
        kept.append((name, path))
        images.append(img)
        sizes.append(size)
    return kept, images, sizes


def _label_png(labels: np.ndarray) -> np.ndarray:
    """A region label map as an 8-bit PNG array (16-bit beyond 255 regions)."""
    return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def run_predict(config: PredictConfig) -> ScoredRows:
    """``detector predict``: load the checkpoint (or export, local or Hub) once, then score every input image.
    OUT is locked for the run (a second run into it is refused at once, naming it); a write error that names no
    file (a full disk) names OUT."""
    out = Path(config.out)
    if out.is_symlink() and out.is_dir():
        out = out.resolve()  # the folder the link names is the output (staged_folder replaces it there)
    with output_lock(out, "detector predict"), naming_folder(out):
        return _run_predict(config, out)


def _run_predict(config: PredictConfig, out: Path) -> ScoredRows:

    check_predict_out(out, list(config.inputs))
    clean_orphans(out)  # what a killed run left beside OUT (never read as inputs either way)
    ckpt = resolve_checkpoint(config.checkpoint)
    exported = None
    if config.engine == "torch":
        meta = checkpoint_meta(ckpt)
    else:

        exported = load_exported(ckpt, engine=config.engine, device=config.device)
        meta = exported.spec.get("checkpoint_meta") or {}
    items = list_inputs(list(config.inputs), exclude=out)
    thresholds = resolve_threshold(config.threshold, ckpt, config.branch, config.image_threshold)
    resolution = config.resolution or thresholds.resolution or (exported.resolution if exported else MAP_RESOLUTION)
    if thresholds.resolution and resolution != thresholds.resolution:
        raise DetectorError(f"--resolution {resolution} differs from the resolution {thresholds.resolution} "
                            f"the threshold was picked at ({thresholds.source}); drop --resolution or "
                            "pass a threshold value")
    if exported is not None:
        model: Any = exported
        info = {"checkpoint": str(config.checkpoint), **meta, "engine": config.engine}
    else:
        # torch: only a checkpoint needs it, an export runs without
        from detector.store.saved_detector import load_detector

        model = load_detector(ckpt, device=config.device, precision=config.precision)
        info = {"checkpoint": str(config.checkpoint), "class_name": meta.get("class_name"),
                **checkpoint_info(meta), "engine": "torch"}
    with staged_folder(out) as tmp:  # the whole run, then swapped in: never one run's maps beside another's
        return predict_paths(model, items, tmp, PredictSettings(
            thresholds=thresholds, resolution=resolution, branch=config.branch, batch_size=config.batch_size, info=info,
            progress=config.progress, min_area=config.min_area, min_margin=config.min_margin,
            on_error=config.on_error, overlays=config.overlays, maps=config.maps))
