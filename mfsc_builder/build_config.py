"""The settings of ``mfsc build`` (``BuildConfig``) and the manifest that decides whether stored work is reused.

Why together: the manifest is the part of the config that changes what is built (``OUTPUT_FIELDS`` plus the
captioner's identity and the digests of the input files), so a rerun with another value of any of these is
refused instead of mixing results, while device or concurrency changes only how fast the same thing is built.
Values from files and flags are type-checked by ``fsad_data.config``; ``validate`` refuses impossible
combinations with the flag's name in the message.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Annotated, Any, get_type_hints

from pydantic import Field

from fsad_data.config import ConfigError, PositiveFloat, Seed, StrictInt, read_config_file, to_config
from fsad_data.digest import file_sha256
from fsad_data.samples import Sample
from mfsc_builder.captioners.base import Captioner
from mfsc_builder.captioners.settings import CaptionerSettings
from mfsc_builder.crop import CropConfig
from mfsc_builder.errors import BuildError
from mfsc_builder.image_files import IMAGE_MODES
from mfsc_builder.records import SCHEMA_VERSION
from mfsc_builder.store import fingerprint

# bump when a stage's output changes meaning: old work folders are then refused (4: stage 1 merges shading and keeps
# thin and salient parts, issue 27)
PIPELINE_VERSION = 4
# fields that change what is built (others, such as device, concurrency or workers, only change how fast; and
# `images` only changes how the datasets are written from the stored work, which every run does again)
OUTPUT_FIELDS = ("layout", "classes", "shots", "seed", "defect_vocab", "num_shards", "shard_index", "crop")
BUILTIN_VOCABS = ("generic", "dataset", "model")
MAX_WORKER_TIMEOUT = 86400
_NESTED = ("captioner", "crop")  # mappings that flags and overrides update key by key


def _crop_settings() -> type:
    """``crop:`` as pydantic checks it: CropConfig's fields (the one owner of their names and defaults), each
    optional (None: not given, CropConfig's default applies), whole numbers and true/false strict, numbers finite
    and never true/false, so ``n_colours: true`` or ``max_components: 2.5`` is one line naming the key."""
    strict = {int: StrictInt, bool: Annotated[bool, Field(strict=True)],
              float: Annotated[float, Field(strict=True, allow_inf_nan=False)]}
    hints = get_type_hints(CropConfig)
    return make_dataclass("CropSettings", [(f.name, strict.get(hints[f.name], hints[f.name]) | None, None)
                                           for f in fields(CropConfig)])


CropSettings = _crop_settings()


@dataclass
class BuildConfig:
    """Everything ``mfsc build`` needs; loadable from YAML/JSON (``--config``), overridden by flags."""

    source: str = ""
    out: str = ""
    layout: str = "auto"
    classes: list[str] | None = None
    captioner: CaptionerSettings = field(default_factory=CaptionerSettings)
    shots: StrictInt = 1  # whole numbers only (true, "1", 1.5 refused); ranges checked by validate()
    seed: Seed = 0
    shots_file: str | None = None
    defect_vocab: str = "generic"
    num_shards: StrictInt = 1
    shard_index: StrictInt = 0
    on_error: str = "raise"
    part_size: StrictInt = 32
    crop: CropSettings = field(default_factory=dict)  # checked as CropSettings, kept as a dict of the keys given
    images: str = "embed"  # what the images dataset keeps of each file (image_files.IMAGE_MODES)
    workers: StrictInt | None = None  # processes that crop (and run the attribute captioner); None: every core, <= 8
    worker_timeout: PositiveFloat = 120.0  # seconds the workers may take to start, or to finish one job

    def __post_init__(self) -> None:
        if isinstance(self.captioner, str):  # the short form: captioner="hf:<model>"
            self.captioner = CaptionerSettings(name=self.captioner)
        elif isinstance(self.captioner, Mapping):
            self.captioner = CaptionerSettings(**self.captioner)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str = "configuration") -> BuildConfig:
        """Build from a dict, every value type-checked (``fsad_data.config``); keys may use dashes; unknown keys
        are refused (typos must not pass). ``captioner`` may be a name or a mapping of ``CaptionerSettings``."""
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        moved = sorted(set(data) & {f.name for f in fields(CaptionerSettings)} - set(cls.field_names()))
        if moved:
            raise BuildError(f"{origin}: key '{moved[0]}' is a captioner setting now: write it under captioner:, "
                             f"e.g. captioner: {{name: hf:<model>, {moved[0]}: ...}}")
        if isinstance(data.get("classes"), str):
            data["classes"] = [c.strip() for c in data["classes"].split(",") if c.strip()]
        if isinstance(data.get("captioner"), str):
            data["captioner"] = {"name": data["captioner"]}
        elif isinstance(data.get("captioner"), Mapping):
            data["captioner"] = {str(k).replace("-", "_"): v for k, v in data["captioner"].items()}
        try:
            cfg = to_config(cls, data, origin)
        except ConfigError as exc:
            raise BuildError(str(exc)) from None
        given = cfg.crop if isinstance(cfg.crop, dict) else asdict(cfg.crop)
        cfg.crop = {k: v for k, v in given.items() if v is not None}
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
        """A copy with the given fields replaced; None means "not given" and keeps the current value. The nested
        ``captioner`` and ``crop`` mappings are updated key by key (``captioner={"device": "cuda"}``)."""
        data = asdict(self)
        for k, v in values.items():
            if k not in data:
                raise BuildError(f"unknown build setting {k!r}")
            if k in _NESTED and isinstance(v, str) and k == "captioner":
                v = {"name": v}
            if k in _NESTED and isinstance(v, Mapping):
                data[k] = {**data[k], **{kk: vv for kk, vv in v.items() if vv is not None}}
            elif v is not None:
                data[k] = v
        return BuildConfig.from_mapping(data, origin="flags")

    def crop_config(self, textured: bool = False) -> CropConfig:
        """The cropping thresholds; ``textured`` is the class's decision (``stages.textured_classes``), which an
        explicit ``crop.textured`` setting overrides."""
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
        if self.captioner.batch_size < 1 or self.part_size < 1 or self.captioner.concurrency < 1:
            raise BuildError("--batch-size, --concurrency and part_size must be at least 1")
        if self.images not in IMAGE_MODES:
            raise BuildError(f"--images {self.images!r}: use embed (keep the image files in the dataset) or "
                             "reference (keep only their relative names, sizes and checksums)")
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise BuildError(f"--workers {self.workers}: use 1 (no worker processes) up to 256, or leave it out "
                             "for every core")
        if not 0 < self.worker_timeout <= MAX_WORKER_TIMEOUT:  # NaN fails too
            raise BuildError(f"--worker-timeout {self.worker_timeout:g}: use a number of seconds above 0, at most "
                             f"{MAX_WORKER_TIMEOUT} (a day)")
        if self.shots_file and not Path(self.shots_file).is_file():
            raise BuildError(f"shots file {self.shots_file} not found; check the --shots-file path")
        if self.defect_vocab not in BUILTIN_VOCABS and not Path(self.defect_vocab.removeprefix("file:")).is_file():
            raise BuildError(f"--defect-vocab {self.defect_vocab!r}: use generic, dataset, model or an existing "
                             "file with one defect state per line")
        self.crop_config()


def build_manifest(cfg: BuildConfig, samples: Sequence[Sample], captioner: Captioner) -> dict[str, Any]:
    """What the stored work depends on: ``fingerprint`` (reuse of a work folder) and ``base_fingerprint``
    (the same without the shard: the parts of one sharded build share it)."""
    config: dict[str, Any] = {k: getattr(cfg, k) for k in OUTPUT_FIELDS}
    config["captioner"] = cfg.captioner.name
    config["dtype"] = cfg.captioner.dtype
    config["crop"] = cfg.crop_config().to_dict()
    config["classes"] = sorted(cfg.classes) if cfg.classes else None
    config["shots_file_sha256"] = _file_sha(cfg.shots_file)
    config["defect_vocab_sha256"] = (_file_sha(cfg.defect_vocab.removeprefix("file:"))
                                     if cfg.defect_vocab not in BUILTIN_VOCABS else None)
    config["source_listing_sha256"] = _listing_digest(samples)
    config["schema_version"] = SCHEMA_VERSION
    config["pipeline_version"] = PIPELINE_VERSION
    cap = {"name": captioner.name, "model": captioner.model, "revision": captioner.revision,
           "prompt_version": captioner.prompt_version}
    if getattr(captioner, "response_format", ""):  # model backends: the format asked for first
        cap["response_format"] = captioner.response_format
    if getattr(captioner, "prompt_sha256", ""):  # an edited prompt file must not resume the old answers
        cap["prompt_sha256"] = captioner.prompt_sha256
    base = {k: v for k, v in config.items() if k not in ("num_shards", "shard_index")}
    return {"config": config, "captioner": cap, "fingerprint": fingerprint({"config": config, "captioner": cap}),
            "base_fingerprint": fingerprint({"config": base, "captioner": cap})}


def _file_sha(path: str | None) -> str | None:
    return file_sha256(path) if path else None


def _listing_digest(samples: Sequence[Sample]) -> str:
    """Identity of the source listing (ids, names, sizes): stable across machines and folder moves."""
    h = hashlib.sha256()
    for s in samples:
        size = Path(s.image_path).stat().st_size if Path(s.image_path).exists() else -1
        msize = Path(s.mask_path).stat().st_size if s.mask_path and Path(s.mask_path).exists() else -1
        h.update(f"{s.id}\t{s.file_name}\t{s.label}\t{size}\t{msize}\n".encode())
    return h.hexdigest()
