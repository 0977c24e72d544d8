"""Drawn inspection scenes with known truth for the offline attribute captioner (stage 1 + attributes): the
easy cases and the hard ones of issue 12 part 2 (an object touching the image border, a defect crossing a
thin part, textured belts and woven cloth behind an object, a real surface). `score(scene)` compares what the
captioner wrote with the truth field by field; `bench/bench_attributes.py` prints the accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SIZE = 192


@dataclass
class Scene:
    name: str
    image: np.ndarray
    surface: bool                      # the whole image is the object (no background)
    background: str                    # "plain", "textured" or "none" (surface)
    background_colour: str | None      # a named colour of attributes.COLOUR_TABLE, or None when not checked
    parts: list[tuple[str, str, str]]  # (colour, shape, location) of each component region, any order
    defect_mask: np.ndarray | None = None
    defect_location: str | None = None
    defect_count: int = 0
    tags: list[str] = field(default_factory=list)


def _canvas(colour: tuple[int, int, int]) -> np.ndarray:
    return np.full((SIZE, SIZE, 3), colour, np.uint8)


def _belt(seed: int, base: int = 70) -> np.ndarray:
    """A conveyor belt: fine horizontal ribs (period 4 px, +-7 L) and a little noise, dark grey."""
    rng = np.random.default_rng(seed)
    y = np.arange(SIZE)[:, None]
    v = base + 7 * np.sign(np.sin(2 * np.pi * y / 4 + seed)) + rng.normal(0, 2, (SIZE, SIZE))
    return np.repeat(np.clip(v, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _cloth(seed: int, colour: tuple[int, int, int] = (225, 205, 160)) -> np.ndarray:
    """Woven cloth: a plain weave of 3 px threads, warp and weft a little lighter / darker than the colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    weave = ((yy // 3 + xx // 3) % 2) * 2 - 1
    shade = 9 * weave + rng.normal(0, 2.5, (SIZE, SIZE))
    img = np.clip(np.asarray(colour, np.float32)[None, None] + shade[..., None], 0, 255)
    return img.astype(np.uint8)


def _carpet(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32), (0, 0), 1.5)
    v = 120 + 40 * noise / noise.std()
    img = np.stack([v * 1.1, v * 0.8, v * 0.55], axis=2)
    return np.clip(img, 0, 255).astype(np.uint8)


def scenes() -> list[Scene]:
    out: list[Scene] = []
    for i in range(3):  # easy: a blue block and a red disc on white
        img = _canvas((250, 250, 250))
        cv2.rectangle(img, (40 + 4 * i, 50), (120 + 4 * i, 140), (40, 90, 200), -1)
        cv2.circle(img, (150, 50), 16, (210, 30, 30), -1)
        out.append(Scene(f"easy-{i}", img, False, "plain", "white",
                         [("blue", "rectangular", "center"), ("red", "circular", "top right")], tags=["easy"]))
    for i in range(3):  # an object entering from the left border over about a third of that side
        img = _canvas((245, 245, 245))
        cv2.rectangle(img, (0, 62 + 3 * i), (90, 126 + 3 * i), (128, 128, 128), -1)
        cv2.circle(img, (140, 100), 18, (40, 170, 50), -1)
        out.append(Scene(f"border-object-{i}", img, False, "plain", "white",
                         [("grey", "rectangular", "left"), ("green", "circular", "right")], tags=["border"]))
    for i in range(3):  # a thin part crossed by a defect
        img = _canvas((250, 250, 250))
        cv2.rectangle(img, (30, 60), (160, 130), (40, 90, 200), -1)
        cv2.rectangle(img, (40, 150), (170, 155 + i), (20, 30, 100), -1)   # a 6-8 px navy strip
        mask = np.zeros((SIZE, SIZE), bool)
        mask[146:162, 96 + 5 * i:104 + 5 * i] = True                        # across the strip
        img[mask & (np.arange(SIZE)[:, None] >= 150) & (np.arange(SIZE)[:, None] <= 155 + i)] = (120, 80, 40)
        out.append(Scene(f"thin-part-defect-{i}", img, False, "plain", "white",
                         [("blue", "rectangular", "center"), ("navy", "elongated", "bottom")],
                         defect_mask=mask, defect_location="bottom", defect_count=1, tags=["thin"]))
    for i in range(3):  # a part on a ribbed conveyor belt
        img = _belt(i)
        cv2.rectangle(img, (60, 55), (135, 140), (240, 215, 30), -1)
        out.append(Scene(f"belt-{i}", img, False, "textured", None, [("yellow", "rectangular", "center")],
                         tags=["textured background"]))
    for i in range(3):  # a part on woven cloth
        img = _cloth(i)
        cv2.circle(img, (96, 96), 40, (20, 85, 35), -1)
        out.append(Scene(f"cloth-{i}", img, False, "textured", None, [("dark green", "circular", "center")],
                         tags=["textured background"]))
    for i in range(3):  # a camera's noise (sigma 1.5) and uneven light on a plain background stay plain
        rng = np.random.default_rng(10 + i)
        shade = np.linspace(-8, 8, SIZE)[None, :, None]
        img = np.clip(_canvas((235, 235, 235)) + shade + rng.normal(0, 1.5, (SIZE, SIZE, 3)), 0, 255)
        img = img.astype(np.uint8)
        cv2.ellipse(img, (96, 100), (55, 30), 20 * i, 0, 360, (245, 135, 20), -1)
        # an ellipse of aspect 1.8 is "irregular" by the shape rules (neither circle nor strip)
        out.append(Scene(f"noisy-plain-{i}", img, False, "plain", "white", [("orange", "irregular", "center")],
                         tags=["noise"]))
    for i in range(2):  # a real surface: carpet-like noise everywhere
        out.append(Scene(f"surface-{i}", _carpet(i), True, "none", None, [], tags=["surface"]))
    return out


def score(scene: Scene) -> dict[str, bool]:
    """Field -> right? for one scene, through crop_regions and the attribute captioner."""
    from mfsc_builder.captioners import CaptionRequest
    from mfsc_builder.captioners.attributes import AttributeCaptioner, colour_name, shape_name
    from mfsc_builder.crop import crop_regions

    regions = crop_regions(scene.image, scene.defect_mask)
    req = CaptionRequest(f"scene/{scene.name}", "part", scene.image, regions,
                         is_anomalous=scene.defect_mask is not None, defect_type="scratch")
    f = AttributeCaptioner().fields(req)
    bg = f.image_view.background
    got: dict[str, bool] = {"surface": regions.textured == scene.surface}
    if scene.background == "none":
        got["background"] = bg == "none"
    else:
        got["background"] = (bg.startswith("plain") == (scene.background == "plain")) and bg != "none"
    if scene.background_colour:
        got["background colour"] = scene.background_colour in bg
    if not scene.surface:
        found = sorted((colour_name(scene.image, r.mask), shape_name(r.mask), r.location)
                       for r in regions.components)
        got["component count"] = len(found) == len(scene.parts)
        want = sorted(scene.parts)
        for k, part in enumerate(want):
            got[f"part {k} colour"] = any(p[0] == part[0] for p in found)
            got[f"part {k} shape"] = any(p[0] == part[0] and p[1] == part[1] for p in found)
            got[f"part {k} location"] = any(p[0] == part[0] and p[2] == part[2] for p in found)
    if scene.defect_mask is not None:
        got["defect count"] = len(regions.defects) == scene.defect_count
        got["defect location"] = f.defect is not None and f.defect.location == scene.defect_location
    return got


def accuracy(items: list[Scene] | None = None) -> tuple[float, dict[str, dict[str, bool]]]:
    """(share of fields right over all scenes, per scene the fields)."""
    per = {s.name: score(s) for s in (items or scenes())}
    total = sum(len(v) for v in per.values())
    right = sum(sum(v.values()) for v in per.values())
    return right / max(total, 1), per
