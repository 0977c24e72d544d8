"""MFSC stage 2, captioning: the request/result types and the `Captioner` protocol (the backend registry is
`captioners/__init__.py`; this module imports no backend, every backend imports it).

A captioner turns one image and its regions (stage 1) into the MFSC level fields: image view, foreground
view, component views, a caption and, for anomalous images, a defect view. Every backend returns the same
types, so the rest of the build does not know which one ran; `Provenance` records which did, and whether the
answer was used as given ("ok"), after one retry ("retried") or replaced by attribute fields ("fallback").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mfsc_builder.crop import ImageRegions
from mfsc_builder.records import ComponentView, DefectView, ForegroundView, ImageView, Provenance


@dataclass
class CaptionRequest:
    """One image to caption. `defect_type` is the source folder's defect name (readable), "" if normal."""

    sample_id: str
    object_name: str
    image: np.ndarray
    regions: ImageRegions
    is_anomalous: bool = False
    defect_type: str = ""


@dataclass
class LevelFields:
    """The MFSC level fields of one image. `region_names[i]` is the component name that covers
    `regions.components[i]` (several regions may share one name when a component has count > 1)."""

    image_view: ImageView
    foreground_view: ForegroundView
    components: list[ComponentView]
    caption: str
    defect: DefectView | None = None
    region_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"image_view": self.image_view.to_dict(), "foreground_view": self.foreground_view.to_dict(),
                "components": [c.to_dict() for c in self.components], "caption": self.caption,
                "defect": None if self.defect is None else self.defect.to_dict(),
                "region_names": list(self.region_names)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LevelFields:
        return cls(ImageView.from_dict(d["image_view"]), ForegroundView.from_dict(d["foreground_view"]),
                   [ComponentView.from_dict(c) for c in d["components"]], d["caption"],
                   None if d.get("defect") is None else DefectView.from_dict(d["defect"]),
                   list(d.get("region_names") or []))


@dataclass
class CaptionResult:
    """The level fields of one request and who produced them."""

    fields: LevelFields
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        return {"fields": self.fields.to_dict(), "provenance": self.provenance.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionResult:
        return cls(LevelFields.from_dict(d["fields"]), Provenance.from_dict(d["provenance"]))


@runtime_checkable
class Captioner(Protocol):
    """A captioning backend. `name` is the backend ("attributes", "hf", "openai"). A backend that is pure CPU
    work on the pixels sets ``runs_beside_crop = True`` and must pickle: the build then runs it in its crop
    workers (``mfsc_builder.workers``)."""

    name: str
    model: str
    revision: str
    prompt_version: str

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        """Level fields for each request, in order."""
        ...

    def propose_defects(self, object_name: str, image: np.ndarray) -> list[str] | None:
        """Plausible defect states for the class seen on a normal image; None when the backend cannot say."""
        ...
