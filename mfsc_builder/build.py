"""The staged MFSC build: ingest -> crop -> caption -> fill -> write, resumable and shardable.

Why staged: each stage's result is stored per sample id (``store.StageStore``), so a crashed or
interrupted build resumes where it stopped and gives the same dataset as an uninterrupted one; the
final datasets are always written from the stored results, never from in-memory objects, so both paths
produce identical bytes. ``--num-shards N --shard-index I`` gives each machine the samples whose stable
hash falls into its shard; every part also processes the (few) reference normal images of every class,
so each part can write complete ``classes`` records and ``merge_builds`` only joins the ``images`` rows.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Self

from fsad_data.atomic import clean_orphans, swap_folder
from fsad_data.config import ConfigError, NonNegativeInt, PositiveFloat, read_config_file, to_config
from mfsc_builder.errors import BuildError, BuildInterrupted
from mfsc_builder.records import SCHEMA_VERSION
from mfsc_builder.store import WorkStore, fingerprint, write_json

log = logging.getLogger(__name__)

PIPELINE_VERSION = 3  # bump when a stage's output changes meaning: old work folders are then refused
BUILD_INFO_NAME = "build_info.json"
STAGES = ("crop", "caption", "fill", "classes")
SPLIT_ORDER = ("train", "test")
# fields that change what is built (others, such as device or concurrency, only change how fast)
_OUTPUT_FIELDS = ("layout", "classes", "captioner", "dtype", "shots", "seed", "defect_vocab", "num_shards",
                  "shard_index", "crop")

Progress = Callable[[str, int, int], None]  # (what, done, total)


# --------------------------------------------------------------------------- configuration
@dataclass
class BuildConfig:
    """Everything ``mfsc build`` needs; loadable from YAML/JSON (``--config``), overridden by flags."""

    source: str = ""
    out: str = ""
    layout: str = "auto"
    classes: list[str] | None = None
    captioner: str = "attributes"
    api_base: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 4
    concurrency: int = 4
    timeout: PositiveFloat = 60.0
    max_retries: NonNegativeInt = 3
    trust_remote_code: bool = False
    shots: int = 1
    seed: int = 0
    shots_file: str | None = None
    defect_vocab: str = "generic"
    num_shards: int = 1
    shard_index: int = 0
    on_error: str = "raise"
    part_size: int = 32
    crop: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str = "configuration") -> BuildConfig:
        """Build from a dict, every value type-checked (``fsad_data.config``); keys may use dashes; unknown keys
        are refused (typos must not pass)."""
        data = dict(data)
        if isinstance(data.get("classes"), str):
            data["classes"] = [c.strip() for c in data["classes"].split(",") if c.strip()]
        try:
            cfg = to_config(cls, data, origin)
        except ConfigError as exc:
            raise BuildError(str(exc)) from None
        cfg.crop = dict(cfg.crop or {})
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> BuildConfig:
        """Load a YAML or JSON file (a mapping of field names to values)."""
        try:
            data = read_config_file(path)
        except ConfigError as exc:
            raise BuildError(str(exc)) from None
        return cls.from_mapping(data, origin=str(path))

    def override(self, **values: Any) -> BuildConfig:
        """A copy with the given fields replaced; None means "not given" and keeps the current value."""
        data = asdict(self)
        for k, v in values.items():
            if k not in data:
                raise BuildError(f"unknown build setting {k!r}")
            if v is not None:
                data[k] = v
        return BuildConfig.from_mapping(data)

    def crop_config(self, textured: bool = False) -> Any:
        """The cropping thresholds; ``textured`` is the class's decision (``_textured_classes``), which an
        explicit ``crop.textured`` setting overrides."""
        from mfsc_builder.crop import CropConfig

        names = {f.name for f in fields(CropConfig)}
        bad = sorted(set(self.crop) - names)
        if bad:
            raise BuildError(f"unknown crop setting(s) {', '.join(bad)}; known: {', '.join(sorted(names))}")
        values = dict(self.crop)
        values.setdefault("textured", textured)
        return CropConfig(**values)

    def validate(self) -> None:
        """Refuse impossible settings before any work starts."""
        if not self.source:
            raise BuildError("no source data set given: mfsc build SOURCE --out DIR")
        if not Path(self.source).is_dir():
            raise BuildError(f"source data set {self.source} is not a folder; check the path")
        if not self.out:
            raise BuildError("no output folder given: use --out DIR")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise BuildError(f"--shard-index {self.shard_index} must be in 0..{self.num_shards - 1} "
                             f"for --num-shards {self.num_shards}")
        if self.shots < 1:
            raise BuildError(f"--shots {self.shots}: at least one reference image per class is needed")
        if self.on_error not in ("raise", "skip"):
            raise BuildError(f"--on-error {self.on_error!r}: use 'raise' or 'skip'")
        if self.batch_size < 1 or self.part_size < 1 or self.concurrency < 1:
            raise BuildError("--batch-size, --concurrency and part_size must be at least 1")
        if self.shots_file and not Path(self.shots_file).is_file():
            raise BuildError(f"shots file {self.shots_file} not found; check the --shots-file path")
        if (self.defect_vocab not in ("generic", "dataset", "model")
                and not Path(self.defect_vocab.removeprefix("file:")).is_file()):
            raise BuildError(f"--defect-vocab {self.defect_vocab!r}: use generic, dataset, model or an existing "
                             "file with one defect state per line")
        self.crop_config()


def _file_sha(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def shard_of(sample_id: str, num_shards: int) -> int:
    """Stable shard of a sample: the same on every machine and Python version (not ``hash()``)."""
    if num_shards == 1:
        return 0
    return int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "big") % num_shards


# --------------------------------------------------------------------------- interruption
class _StopFlag:
    """First SIGINT asks the build to stop after storing what is done; a second one stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# --------------------------------------------------------------------------- results
@dataclass
class BuildSummary:
    """What a build did: counts, skipped samples, where the datasets are."""

    out: Path
    images: dict[str, int]
    classes: list[str]
    resumed: bool
    computed: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage (crop includes decoding)


@dataclass
class _Context:
    cfg: BuildConfig
    samples: list[Any]
    ref_ids: dict[str, list[Any]]  # class -> reference samples
    source_layout: str
    captioner: Any
    textured: dict[str, bool]  # class -> whole image is the foreground (a surface)


def _object_name(class_name: str) -> str:
    from fsad_data import readable_name

    return readable_name(class_name)


def _source_layout(cfg: BuildConfig, samples: list[Any]) -> str:
    """The layout name recorded in class records (mvtec, visa, visa_raw, realiad, folder)."""
    if cfg.layout != "auto":
        return cfg.layout
    layout = getattr(samples, "layout", "")  # fsad_data's SampleList says which reader ran
    if layout:
        return str(layout)
    from fsad_data import detect_layout

    return str(detect_layout(Path(cfg.source)))


def _is_synthetic(source: Path) -> bool:
    note = source / "license.txt"
    try:
        return note.read_text(encoding="utf-8").startswith("Synthetic anomaly-detection data set made by fsad_data")
    except OSError:
        return False


def _listing_digest(samples: list[Any]) -> str:
    """Identity of the source listing (ids, names, sizes): stable across machines and folder moves."""
    h = hashlib.sha256()
    for s in samples:
        size = Path(s.image_path).stat().st_size if Path(s.image_path).exists() else -1
        msize = Path(s.mask_path).stat().st_size if s.mask_path and Path(s.mask_path).exists() else -1
        h.update(f"{s.id}\t{s.file_name}\t{s.label}\t{size}\t{msize}\n".encode())
    return h.hexdigest()


def _manifest(cfg: BuildConfig, samples: list[Any], captioner: Any) -> dict[str, Any]:
    config = {k: getattr(cfg, k) for k in _OUTPUT_FIELDS}
    config["crop"] = cfg.crop_config().to_dict()
    config["classes"] = sorted(cfg.classes) if cfg.classes else None
    config["shots_file_sha256"] = _file_sha(cfg.shots_file)
    config["defect_vocab_sha256"] = (_file_sha(cfg.defect_vocab.removeprefix("file:"))
                                     if cfg.defect_vocab not in ("generic", "dataset", "model") else None)
    config["source_listing_sha256"] = _listing_digest(samples)
    config["schema_version"] = SCHEMA_VERSION
    config["pipeline_version"] = PIPELINE_VERSION
    cap = {"name": captioner.name, "model": captioner.model, "revision": captioner.revision,
           "prompt_version": captioner.prompt_version}
    if getattr(captioner, "response_format", ""):  # model backends: the format asked for first
        cap["response_format"] = captioner.response_format
    base = {k: v for k, v in config.items() if k not in ("num_shards", "shard_index")}
    return {"config": config, "captioner": cap, "fingerprint": fingerprint({"config": config, "captioner": cap}),
            "base_fingerprint": fingerprint({"config": base, "captioner": cap})}


# --------------------------------------------------------------------------- stages
def _load_sample(sample: Any) -> tuple[Any, Any]:
    """(RGB image, defect mask or None) of a sample, with the size check of load_mask."""
    from fsad_data import load_mask, load_rgb

    image = load_rgb(sample.image_path)
    mask = None
    if sample.mask_path is not None:
        h, w = image.shape[:2]
        mask = load_mask(sample.mask_path, size=(w, h), image_path=sample.image_path)
    return image, mask


def _surface_voters(refs: list[Any], samples: list[Any], class_name: str) -> list[Any]:
    """The normal images that decide a class's surface question: its references, then its other normal
    training images by file name, up to ``crop.SURFACE_VOTERS`` (the same on every machine and shard)."""
    from mfsc_builder.crop import SURFACE_VOTERS

    ids = {s.id for s in refs}
    more = sorted((s for s in samples if s.class_name == class_name and s.split == "train" and s.label == 0
                   and s.id not in ids), key=lambda s: s.file_name)
    return (list(refs) + more)[:max(SURFACE_VOTERS, len(refs))]


def _textured_classes(cfg: BuildConfig, refs: dict[str, list[Any]], all_samples: list[Any] | None = None
                      ) -> dict[str, bool]:
    """Per class, once: is it a surface filling the frame? By its name or by a clear majority of several of
    its normal images (``crop.class_is_textured``), so an unknown surface class is found, every image of a
    class gets the same kind of record, and one odd reference cannot flip the class. Unreadable images do
    not vote (with on_error=skip)."""
    from fsad_data import DataError, load_rgb
    from mfsc_builder.crop import class_is_textured, working_image

    config = cfg.crop_config()
    out = {}
    for cls, refs_of in sorted(refs.items()):
        if "textured" in cfg.crop:
            out[cls] = bool(cfg.crop["textured"])
            continue
        images = []
        for s in _surface_voters(refs_of, all_samples or [], cls):
            try:
                images.append(working_image(load_rgb(s.image_path), config.work_size))
            except DataError:
                if cfg.on_error == "raise":
                    raise
        out[cls] = class_is_textured(cls, images, config)
    return out


def _caption_request(sample: Any, image: Any, regions: Any) -> Any:
    from mfsc_builder.captioners import CaptionRequest

    return CaptionRequest(
        sample_id=sample.id, object_name=_object_name(sample.class_name), image=image, regions=regions,
        is_anomalous=bool(sample.label), defect_type=sample.defect_type.replace("_", " ") if sample.label else "",
    )


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def _run_stages(ctx: _Context, work: WorkStore, todo: list[Any], stop: _StopFlag,
                progress: Progress | None
                ) -> tuple[dict[str, dict], dict[str, int], list[tuple[str, str]], dict[str, float]]:
    """Crop, caption and fill every sample of ``todo`` not stored yet; returns the fill results."""
    from fsad_data import DataError
    from mfsc_builder.captioners import CaptionResult
    from mfsc_builder.crop import ImageRegions, crop_regions, working_image
    from mfsc_builder.fill import image_record

    cfg = ctx.cfg
    crop_st, cap_st, fill_st = work.stage("crop"), work.stage("caption"), work.stage("fill")
    crops, caps, fills = crop_st.load(), cap_st.load(), fill_st.load()
    ref_ids = {s.id for refs in ctx.ref_ids.values() for s in refs}
    computed = {"crop": 0, "caption": 0, "fill": 0}
    seconds = dict.fromkeys(("crop", "crop_wait", "caption", "fill", "store"), 0.0)
    skipped: list[tuple[str, str]] = []
    pending = [s for s in todo if s.id not in fills]
    total, done = len(todo), len(todo) - len(pending)
    if progress:
        progress("images", done, total)

    def fail(sample: Any, exc: Exception) -> None:
        if cfg.on_error == "raise":
            raise exc
        skipped.append((sample.id, str(exc)))
        log.warning("skipped %s: %s", sample.id, exc)

    def prepare(batch: list[Any]) -> tuple[dict[str, tuple[Any, Any]], list[tuple[str, dict]], float]:
        """Decode and crop a few samples; runs in a helper thread, ahead of the captioner."""
        t0 = time.perf_counter()
        loaded: dict[str, tuple[Any, Any]] = {}
        new_crops: list[tuple[str, dict]] = []
        for s in batch:
            try:
                if s.id in crops and s.id in caps:  # only the fill is missing: no pixels needed
                    loaded[s.id] = (None, ImageRegions.from_dict(crops[s.id]))
                    continue
                image, mask = _load_sample(s)
                crop_cfg = cfg.crop_config(ctx.textured[s.class_name])
                if s.id in crops:
                    regions = ImageRegions.from_dict(crops[s.id])
                else:
                    regions = crop_regions(image, mask, crop_cfg)
                    new_crops.append((s.id, regions.to_dict()))
            except (DataError, BuildError) as exc:
                fail(s, exc)
                continue
            # the captioner sees the working copy the masks belong to; the original is not kept
            loaded[s.id] = (working_image(image, crop_cfg.work_size), regions)
        return loaded, new_crops, time.perf_counter() - t0

    # parts of `part_size` samples, each cut into captioner batches; the helper thread decodes and
    # crops up to about one part ahead, so a model backend never waits for the CPU stages
    chunks = list(_chunks(pending, cfg.part_size))
    batches = [b for c in chunks for b in _chunks(c, cfg.batch_size)]
    lookahead = max(2, -(-cfg.part_size // cfg.batch_size))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfsc-crop")
    queue: deque[Any] = deque(pool.submit(prepare, b) for b in batches[:lookahead])
    next_batch = len(queue)
    try:
        for chunk in chunks:
            new_crops: list[tuple[str, dict]] = []
            loaded: dict[str, tuple[Any, Any]] = {}
            for batch in _chunks(chunk, cfg.batch_size):
                t0 = time.perf_counter()
                got_loaded, got_crops, crop_secs = queue.popleft().result()
                seconds["crop_wait"] += time.perf_counter() - t0
                seconds["crop"] += crop_secs
                if next_batch < len(batches) and not stop.requested:
                    queue.append(pool.submit(prepare, batches[next_batch]))
                    next_batch += 1
                loaded.update(got_loaded)
                new_crops += got_crops
                need = [s for s in batch if s.id in got_loaded and s.id not in caps]
                if not need or stop.requested:
                    continue
                reqs = [_caption_request(s, *loaded[s.id]) for s in need]
                t0 = time.perf_counter()
                try:
                    results = ctx.captioner.caption(reqs)
                    if len(results) != len(reqs):
                        raise BuildError(f"captioner {ctx.captioner.name} returned {len(results)} results for "
                                         f"{len(reqs)} images; this is a backend bug, please report it")
                except BuildError:
                    if cfg.on_error == "raise":
                        raise
                    results = []
                    for s, r in zip(need, reqs):  # find the sample that fails, keep the others
                        try:
                            results.append(ctx.captioner.caption([r])[0])
                        except BuildError as one:
                            fail(s, one)
                            results.append(None)
                got = [(s.id, r.to_dict()) for s, r in zip(need, results) if r is not None]
                t1 = time.perf_counter()
                seconds["caption"] += t1 - t0
                cap_st.append(got)
                seconds["store"] += time.perf_counter() - t1
                caps.update(got)
                computed["caption"] += len(got)

            t0 = time.perf_counter()
            crop_st.append(new_crops)
            crops.update(new_crops)
            computed["crop"] += len(new_crops)
            seconds["store"] += time.perf_counter() - t0
            new_fills: list[tuple[str, dict]] = []
            t0 = time.perf_counter()
            for s in chunk:
                if s.id not in loaded or s.id not in caps:
                    continue
                rec = image_record(s, loaded[s.id][1], CaptionResult.from_dict(caps[s.id]),
                                   object_name=_object_name(s.class_name), is_reference=s.id in ref_ids)
                new_fills.append((s.id, rec.to_dict()))
            t1 = time.perf_counter()
            seconds["fill"] += t1 - t0
            fill_st.append(new_fills)
            seconds["store"] += time.perf_counter() - t1
            fills.update(new_fills)
            computed["fill"] += len(new_fills)
            done += len(chunk)
            if progress:
                progress("images", done, total)
            if stop.requested:
                raise BuildInterrupted(
                    f"interrupted: {len(fills)} of {total} images are stored in {work.dir}; "
                    "run the same command again to resume"
                )
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return fills, computed, skipped, seconds


def _class_records(ctx: _Context, work: WorkStore, fills: dict[str, dict]) -> dict[str, dict]:
    """One merged record per class from its reference images' stored records (stage "classes")."""
    from fsad_data import shots_selection
    from mfsc_builder.fill import class_record, defect_vocab_label, defect_vocabulary
    from mfsc_builder.records import ImageRecord

    cfg = ctx.cfg
    st = work.stage("classes")
    stored = st.load()
    new: list[tuple[str, dict]] = []
    for cls, refs in sorted(ctx.ref_ids.items()):
        if cls in stored:
            continue
        recs = [ImageRecord.from_dict(fills[s.id]) for s in refs if s.id in fills]
        if not recs:
            msg = f"class {cls}: none of its reference images could be captioned; check them or choose others"
            if cfg.on_error == "raise":
                raise BuildError(msg)
            log.warning(msg)
            continue
        object_name = _object_name(cls)
        vocab = cfg.defect_vocab
        states = _model_defects(ctx, refs[0], object_name) if vocab == "model" else None
        if vocab == "model" and not states:  # the backend cannot propose: say honestly what was used
            log.warning("class %s: the captioner proposed no defect states; using the generic list", cls)
            vocab = "generic"
        if states is None or not states:
            states = defect_vocabulary(vocab, ctx.samples, cls)
        selection = shots_selection(cfg.shots, cfg.seed, cfg.shots_file)
        rec = class_record(cls, object_name, recs, defect_states=list(states), defect_vocab=defect_vocab_label(vocab),
                           source_layout=ctx.source_layout, reference_selection=selection)
        new.append((cls, rec.to_dict()))
    st.append(new)
    stored.update(new)
    return stored


def _model_defects(ctx: _Context, ref: Any, object_name: str) -> list[str] | None:
    from fsad_data import load_rgb

    propose = getattr(ctx.captioner, "propose_defects", None)
    if propose is None:
        return None
    return propose(object_name, load_rgb(ref.image_path))


# --------------------------------------------------------------------------- writing
def _png(array: Any) -> bytes:
    """PNG bytes of an RGB (H, W, 3) or gray (H, W) uint8 array (deterministic for the same pixels)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _image_rows(records: list[dict]) -> Iterator[dict]:
    """``images`` rows with the image and mask re-encoded as PNG bytes (RGB, 0/255 masks)."""
    import numpy as np

    from fsad_data import load_mask, load_rgb
    from mfsc_builder.records import ImageRecord

    for d in records:
        rec = ImageRecord.from_dict(d)
        image = load_rgb(rec.image_path)
        mask = None
        if rec.mask_path:
            m = load_mask(rec.mask_path, size=(image.shape[1], image.shape[0]), image_path=rec.image_path)
            mask = _png(m.astype(np.uint8) * 255)
        yield rec.to_row(image=_png(image), mask=mask)


def write_datasets(out: Path, image_records: Mapping[str, list[dict]], class_records: list[dict]) -> None:
    """Write ``out/images`` (DatasetDict of the splits present) and ``out/classes`` atomically."""
    import datasets

    from mfsc_builder.records import CLASSES_FEATURES, IMAGES_FEATURES, ClassRecord

    out = Path(out)
    with _staged_datasets(out, ".write-", "datasets") as tmp:
        splits = {}
        for split in sorted(image_records, key=_split_key):
            recs = image_records[split]
            if not recs:
                continue
            try:
                splits[split] = datasets.Dataset.from_generator(
                    _image_rows, features=IMAGES_FEATURES, gen_kwargs={"records": recs},
                    cache_dir=str(tmp / "cache" / split), split=datasets.NamedSplit(split),
                )
            except Exception as exc:  # datasets wraps errors of the generator: show the user's one
                from fsad_data import DataError

                cause: BaseException | None = exc
                while cause is not None and not isinstance(cause, DataError | BuildError):
                    cause = cause.__cause__
                if cause is not None:
                    raise cause from None
                raise
        if not splits:
            raise BuildError(f"nothing to write to {out}: no image was captioned (see the warnings above)")
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "images"))
        rows = [ClassRecord.from_dict(c).to_row() for c in class_records]
        datasets.Dataset.from_list(rows, features=CLASSES_FEATURES).save_to_disk(str(tmp / "classes"))
        del splits


def _split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


@contextlib.contextmanager
def _staged_datasets(out: Path, prefix: str, what: str) -> Iterator[Path]:
    """A temporary folder inside ``out`` where ``images`` and ``classes`` are saved; on success both replace
    the published ones, on any failure nothing published changes. Library progress bars are off meanwhile."""
    import datasets

    out.mkdir(parents=True, exist_ok=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out))
    try:
        yield tmp
        swap_folder(tmp / "images", out / "images")
        swap_folder(tmp / "classes", out / "classes")
    except OSError as exc:
        raise BuildError(f"could not write the {what} under {out}: {exc}; check free space, then rerun "
                         "(finished stages and earlier outputs are kept)") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            datasets.enable_progress_bars()


def _group_by_split(records: list[dict]) -> dict[str, list[dict]]:
    """Records per split (train, test, then others), each sorted by id: the datasets' row order."""
    out: dict[str, list[dict]] = {}
    for d in sorted(records, key=lambda r: r["id"]):
        out.setdefault(d["split"], []).append(d)
    return {k: out[k] for k in sorted(out, key=_split_key)}


# --------------------------------------------------------------------------- the run
def run_build(cfg: BuildConfig, *, force: bool = False, progress: Progress | None = None,
              captioner: Any = None) -> BuildSummary:
    """Build (or resume) the MFSC datasets of ``cfg.source`` into ``cfg.out``."""
    from fsad_data import read_dataset, select_shots

    cfg.validate()
    out = Path(cfg.out)
    work = WorkStore(out / "work")
    samples = read_dataset(Path(cfg.source), layout=cfg.layout, classes=cfg.classes, on_error=cfg.on_error)
    if not samples:
        raise BuildError(f"no images found in {cfg.source} (layout {cfg.layout}); check the path and --layout")
    class_names = sorted({s.class_name for s in samples})
    refs = {c: list(select_shots(samples, c, cfg.shots, cfg.seed, shots_file=cfg.shots_file)) for c in class_names}
    if captioner is None:
        from mfsc_builder.captioners import make_captioner

        captioner = make_captioner(
            cfg.captioner, api_base=cfg.api_base, device=cfg.device, dtype=cfg.dtype, batch_size=cfg.batch_size,
            concurrency=cfg.concurrency, timeout=cfg.timeout, max_retries=cfg.max_retries,
            trust_remote_code=cfg.trust_remote_code)
    manifest = _manifest(cfg, samples, captioner)
    ctx = _Context(cfg, samples, refs, _source_layout(cfg, samples), captioner,
                   _textured_classes(cfg, refs, samples))
    ref_ids = {s.id for rs in refs.values() for s in rs}
    mine = [s for s in samples if shard_of(s.id, cfg.num_shards) == cfg.shard_index]
    todo = sorted({s.id: s for s in mine + [s for s in samples if s.id in ref_ids]}.values(), key=lambda s: s.id)

    work.lock()  # before --force wipes anything: never pull the floor from under a running build
    try:
        # temp folders of a build killed while writing (never read; with the lock held none is in use)
        for stale in out.glob(".write-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for sub in ("images", "classes"):
            clean_orphans(out / sub)
        if force:
            for p in work.dir.iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.name != ".lock":
                    p.unlink()
            for sub in ("images", "classes"):
                shutil.rmtree(out / sub, ignore_errors=True)
            (out / BUILD_INFO_NAME).unlink(missing_ok=True)
        resumed = work.open(manifest)
        with _StopFlag() as stop:
            fills, computed, skipped, seconds = _run_stages(ctx, work, todo, stop, progress)
        skipped = [(str(k.path), k.message) for k in getattr(samples, "skipped", [])] + skipped
        t0 = time.perf_counter()
        classes = _class_records(ctx, work, fills)
        t1 = time.perf_counter()
        mine_ids = {s.id for s in mine}
        image_recs = _group_by_split([fills[i] for i in sorted(mine_ids) if i in fills])
        if progress:
            progress("writing", 0, 1)
        write_datasets(out, image_recs, [classes[c] for c in sorted(classes)])
        seconds.update({"classes": t1 - t0, "write": time.perf_counter() - t1})
        info = {
            "schema_version": SCHEMA_VERSION,
            "source_name": Path(cfg.source).resolve().name,
            "source_layout": ctx.source_layout,
            "synthetic": _is_synthetic(Path(cfg.source)),
            "num_shards": cfg.num_shards,
            "shard_index": cfg.shard_index,
            "fingerprint": manifest["fingerprint"],
            "base_fingerprint": manifest["base_fingerprint"],
            "captioner": dict(manifest["captioner"], response_formats_used=_formats_used(image_recs)),
            "config": manifest["config"],
            "images": {k: len(v) for k, v in image_recs.items()},
            "classes": sorted(classes),
            "textured_classes": sorted(c for c, t in ctx.textured.items() if t),
            "skipped": [list(x) for x in skipped],
        }
        write_json(out / BUILD_INFO_NAME, info)
        if progress:
            progress("writing", 1, 1)
    finally:
        work.unlock()
    return BuildSummary(out, info["images"], info["classes"], resumed, computed, skipped, seconds)


def _formats_used(image_recs: dict[str, list[dict]]) -> dict[str, int]:
    """How many image records' answers were asked for in each response format (a server may refuse the
    record schema mid-build; records from the attribute captioner have none)."""
    from collections import Counter

    used = Counter(r["provenance"].get("response_format", "") for rs in image_recs.values() for r in rs)
    return {k: used[k] for k in sorted(used) if k}


# --------------------------------------------------------------------------- merge
def merge_builds(parts: list[Path], out: Path) -> BuildSummary:
    """Join the outputs of ``--num-shards N`` parts into one build equal to a single-machine build."""
    import datasets

    if not parts:
        raise BuildError("mfsc merge needs at least one part folder")
    infos = []
    for p in parts:
        path = Path(p) / BUILD_INFO_NAME
        if not path.exists():
            raise BuildError(f"{path} not found: {p} is not a finished `mfsc build` output; finish that part first")
        infos.append(json.loads(path.read_text(encoding="utf-8")))
    n = infos[0]["num_shards"]
    if any(i["base_fingerprint"] != infos[0]["base_fingerprint"] for i in infos):
        bad = next(p for p, i in zip(parts, infos) if i["base_fingerprint"] != infos[0]["base_fingerprint"])
        raise BuildError(f"{bad} was built with another configuration or captioner than {parts[0]}; "
                         "rebuild it with the same settings")
    indices = sorted(i["shard_index"] for i in infos)
    if any(i["num_shards"] != n for i in infos) or indices != list(range(n)):
        raise BuildError(f"parts cover shard indices {indices} of --num-shards {n}; give each of 0..{n - 1} "
                         "exactly once")
    images = [datasets.load_from_disk(str(Path(p) / "images")) for p in parts]
    classes = [datasets.load_from_disk(str(Path(p) / "classes")) for p in parts]
    first = classes[[i["shard_index"] for i in infos].index(0)]
    for p, c in zip(parts, classes):
        if c.to_list() != first.to_list():
            log.warning("class records of %s differ from shard 0's (a non-deterministic captioner?); "
                        "shard 0's are kept", p)
    out = Path(out)
    with _staged_datasets(out, ".merge-", "merged datasets") as tmp:
        splits = {}
        present = sorted({s for d in images for s in d}, key=_split_key)
        for split in present:
            joined = datasets.concatenate_datasets([d[split] for d in images if split in d])
            ids = joined["id"]
            if len(set(ids)) != len(ids):
                raise BuildError(f"the parts share image ids in split {split}; were they built with different "
                                 "--num-shards? rebuild them")
            order = sorted(range(len(ids)), key=ids.__getitem__)
            splits[split] = joined.select(order)
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "images"))
        first.save_to_disk(str(tmp / "classes"))
    info = dict(infos[0])
    info.update({"num_shards": 1, "shard_index": 0, "merged_from": [str(Path(p).resolve()) for p in parts],
                 "images": {s: splits[s].num_rows for s in splits},
                 "skipped": [x for i in infos for x in i.get("skipped", [])]})
    info.pop("fingerprint", None)
    write_json(out / BUILD_INFO_NAME, info)
    return BuildSummary(out, info["images"], info["classes"], False, {}, [tuple(x) for x in info["skipped"]])
