"""MFSC records: the typed, JSON-safe form of a caption record and the Hugging Face `Features`.

The three MFSC levels (image view, foreground view, component view), the whole-image caption, the defect
view of anomalous images and the detector's texts. `IMAGES_FEATURES` and `CLASSES_FEATURES` are the
dataset contract with the detector (docs/CONTRACTS.md, schema_version 1); keep them in step with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, Self

SCHEMA_VERSION = 1

REGION_KINDS = ("foreground", "background", "component", "defect")
TEXT_LEVELS = ("image", "background", "component", "relation", "colour", "texture", "shape")
PROVENANCE_STATUSES = ("ok", "retried", "fallback")
LABEL_NAMES = ["normal", "anomaly"]


def _from(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a dict, ignoring unknown keys (newer writers may add fields)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class _Record:
    """The dict form of a nested record (a dataclass): its fields as they are (`asdict`), and back (unknown keys
    ignored). A record whose numbers or lists must be normalised (a cast, float32 rounding) extends one or both."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return _from(cls, data)


@dataclass
class ImageView(_Record):
    """Level 1: the foreground object and the background."""

    foreground: str = ""
    background: str = ""


@dataclass
class ForegroundView(_Record):
    """Level 2: how many components the foreground holds and one sentence on how they relate."""

    count: int = 0
    relation: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"count": int(self.count), "relation": self.relation}


@dataclass
class ComponentView(_Record):
    """Level 3: one visual component with its attributes and a sentence describing it."""

    name: str = ""
    count: int = 1
    location: str = ""
    colour: str = ""
    texture: str = ""
    shape: str = ""
    direction: str = ""
    area: float = 0.0
    sentence: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["count"] = int(self.count)
        d["area"] = float(self.area)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        c = super().from_dict(data)
        c.area = round(float(c.area), 6)  # float32 storage noise must not change a record
        return c


@dataclass
class DefectView(_Record):
    """The defect of an anomalous image; all fields are empty strings for normal images."""

    type: str = ""
    location: str = ""
    size: str = ""
    colour: str = ""
    sentence: str = ""


@dataclass
class RegionView(_Record):
    """A cropped region as stored in the dataset (the mask itself is not stored, only its box and area)."""

    kind: str = "component"
    name: str = ""
    box: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    area: float = 0.0
    location: str = ""
    orientation: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "box": [int(v) for v in self.box],
            "area": float(self.area),
            "location": self.location,
            "orientation": self.orientation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        r = super().from_dict(data)
        r.box = [int(v) for v in r.box]
        r.area = round(float(r.area), 6)
        return r


@dataclass
class Provenance(_Record):
    """Who wrote the level fields: backend, model id and revision, prompt version, ok/retried/fallback, and how
    a model was asked for its answer (`schema.RESPONSE_FORMATS`: json_schema, json_object, prompt; "" for the
    attribute captioner)."""

    backend: str = "attributes"
    model: str = ""
    revision: str = ""
    prompt_version: str = ""
    status: str = "ok"
    response_format: str = ""


@dataclass
class PromptText(_Record):
    """One text group for the detector: normal descriptions and their handcrafted abnormal variants."""

    level: str
    group: str
    normal: list[str] = field(default_factory=list)
    abnormal: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "group": self.group, "normal": list(self.normal),
                "abnormal": list(self.abnormal)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        t = super().from_dict(data)
        t.normal, t.abnormal = list(t.normal), list(t.abnormal)
        return t


class StoredFileLike(Protocol):
    """What a row keeps of a source file (`mfsc_builder.image_files.StoredFile`)."""

    data: bytes | None
    file: str
    size: int
    sha256: str


def _image_value(stored: StoredFileLike | None, path: str | None) -> dict[str, Any] | None:
    """A value that `datasets.Image()` stores: the kept bytes (no path: the row's ``image_file`` names the file),
    nothing in reference mode, or (no stored file given) the path, which `datasets` reads and stores."""
    if stored is not None:
        return None if stored.data is None else {"bytes": stored.data, "path": None}
    return {"bytes": None, "path": str(path)} if path else None


@dataclass
class ImageRecord:
    """The MFSC record of one image (train or test), with its regions and, if anomalous, a defect view."""

    id: str
    class_name: str
    object_name: str
    split: str
    label: int
    defect_type: str
    file_name: str
    image_path: str
    mask_path: str | None
    width: int
    height: int
    is_reference: bool = False
    image_view: ImageView = field(default_factory=ImageView)
    foreground_view: ForegroundView = field(default_factory=ForegroundView)
    components: list[ComponentView] = field(default_factory=list)
    caption: str = ""
    regions: list[RegionView] = field(default_factory=list)
    defect: DefectView = field(default_factory=DefectView)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the stage store (paths as strings, nested records as dicts)."""
        return {
            "id": self.id,
            "class_name": self.class_name,
            "object_name": self.object_name,
            "split": self.split,
            "label": int(self.label),
            "defect_type": self.defect_type,
            "file_name": self.file_name,
            "image_path": str(self.image_path),
            "mask_path": None if self.mask_path is None else str(self.mask_path),
            "width": int(self.width),
            "height": int(self.height),
            "is_reference": bool(self.is_reference),
            **_levels_dict(self),
            "regions": [r.to_dict() for r in self.regions],
            "defect": self.defect.to_dict(),
            "provenance": self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        d = _with_levels(data)
        d["regions"] = [RegionView.from_dict(r) for r in d.get("regions") or []]
        d["defect"] = DefectView.from_dict(d.get("defect") or {})
        return _from(cls, d)

    def to_row(self, image: StoredFileLike | None = None, mask: StoredFileLike | None = None) -> dict[str, Any]:
        """The `images` dataset row. ``image``/``mask`` are what `write` keeps of the source files
        (`image_files.StoredFile`: bytes or none, relative name, size, SHA-256); without them the record's
        paths are given to `datasets.Image()` (tests, quick looks) and the file columns stay empty."""
        d = self.to_dict()
        image_path, mask_path = d.pop("image_path"), d.pop("mask_path")
        d["image"] = _image_value(image, image_path)
        d["mask"] = _image_value(mask, mask_path)
        for prefix, stored in (("image", image), ("mask", mask)):
            d[f"{prefix}_file"] = stored.file if stored is not None else ""
            d[f"{prefix}_file_size"] = stored.size if stored is not None else 0
            d[f"{prefix}_sha256"] = stored.sha256 if stored is not None else ""
        return {name: d[name] for name in _get("IMAGES_FEATURES")}


@dataclass
class ClassRecord:
    """The merged MFSC record of one class, built from its reference normal images, plus detector texts."""

    class_name: str
    object_name: str
    source_layout: str = "mvtec"
    reference_images: list[str] = field(default_factory=list)
    reference_selection: str = ""
    image_view: ImageView = field(default_factory=ImageView)
    foreground_view: ForegroundView = field(default_factory=ForegroundView)
    components: list[ComponentView] = field(default_factory=list)
    caption: str = ""
    defect_states: list[str] = field(default_factory=list)
    defect_vocab: str = "generic"
    texts: list[PromptText] = field(default_factory=list)
    provenance: Provenance = field(default_factory=Provenance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "class_name": self.class_name,
            "object_name": self.object_name,
            "source_layout": self.source_layout,
            "reference_images": list(self.reference_images),
            "reference_selection": self.reference_selection,
            **_levels_dict(self),
            "defect_states": list(self.defect_states),
            "defect_vocab": self.defect_vocab,
            "texts": [t.to_dict() for t in self.texts],
            "provenance": self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassRecord:
        d = _with_levels(data)
        d["texts"] = [PromptText.from_dict(t) for t in d.get("texts") or []]
        d["reference_images"] = list(d.get("reference_images") or [])
        d["defect_states"] = list(d.get("defect_states") or [])
        return _from(cls, d)

    def to_row(self) -> dict[str, Any]:
        """The `classes` dataset row (same keys as `CLASSES_FEATURES`)."""
        d = self.to_dict()
        return {name: d[name] for name in _get("CLASSES_FEATURES")}


def _levels_dict(record: ImageRecord | ClassRecord) -> dict[str, Any]:
    """The dict form of what an image record and a class record both describe: the three MFSC levels and the
    whole-image caption (in this key order)."""
    return {
        "image_view": record.image_view.to_dict(),
        "foreground_view": record.foreground_view.to_dict(),
        "components": [c.to_dict() for c in record.components],
        "caption": record.caption,
    }


def _with_levels(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of an image or class record's dict with the nested records both hold read back: the three MFSC
    levels and the provenance."""
    d = dict(data)
    d["image_view"] = ImageView.from_dict(d.get("image_view") or {})
    d["foreground_view"] = ForegroundView.from_dict(d.get("foreground_view") or {})
    d["components"] = [ComponentView.from_dict(c) for c in d.get("components") or []]
    d["provenance"] = Provenance.from_dict(d.get("provenance") or {})
    return d


def _features() -> tuple[Any, Any]:
    """Build both `Features` objects (datasets is imported lazily: importing records stays cheap)."""
    from datasets import ClassLabel, Features, Image, List, Value

    s = Value("string")
    image_view = {"foreground": s, "background": s}
    foreground_view = {"count": Value("int32"), "relation": s}
    components = List({
        "name": s, "count": Value("int32"), "location": s, "colour": s, "texture": s, "shape": s,
        "direction": s, "area": Value("float32"), "sentence": s,
    })
    provenance = {"backend": s, "model": s, "revision": s, "prompt_version": s, "status": s,
                  "response_format": s}
    images = Features({
        "id": s,
        "class_name": s,
        "object_name": s,
        "split": s,
        "label": ClassLabel(names=LABEL_NAMES),
        "defect_type": s,
        "file_name": s,
        "image": Image(),
        "mask": Image(),
        "image_file": s,
        "image_file_size": Value("int64"),
        "image_sha256": s,
        "mask_file": s,
        "mask_file_size": Value("int64"),
        "mask_sha256": s,
        "width": Value("int32"),
        "height": Value("int32"),
        "is_reference": Value("bool"),
        "image_view": image_view,
        "foreground_view": foreground_view,
        "components": components,
        "caption": s,
        "regions": List({
            "kind": s, "name": s, "location": s, "orientation": s,
            "box": List(Value("int32")), "area": Value("float32"),
        }),
        "defect": {"type": s, "location": s, "size": s, "colour": s, "sentence": s},
        "provenance": provenance,
    })
    classes = Features({
        "schema_version": Value("int32"),
        "class_name": s,
        "object_name": s,
        "source_layout": s,
        "reference_images": List(s),
        "reference_selection": s,
        "image_view": image_view,
        "foreground_view": foreground_view,
        "components": components,
        "caption": s,
        "defect_states": List(s),
        "defect_vocab": s,
        "texts": List({"level": s, "group": s, "normal": List(s), "abnormal": List(s)}),
        "provenance": provenance,
    })
    return images, classes


_CACHE: dict[str, Any] = {}


def _get(name: str) -> Any:
    if not _CACHE:
        _CACHE["IMAGES_FEATURES"], _CACHE["CLASSES_FEATURES"] = _features()
    return _CACHE[name]


def __getattr__(name: str) -> Any:
    """Lazy module attributes IMAGES_FEATURES / CLASSES_FEATURES (avoid importing datasets at import)."""
    if name in ("IMAGES_FEATURES", "CLASSES_FEATURES"):
        return _get(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
