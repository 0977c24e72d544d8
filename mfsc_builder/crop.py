"""MFSC stage 1, mask cropping: foreground/background, component and defect regions of one image.

Foreground: a background colour model from the image border (median Lab colour of a border strip), the
per-pixel Lab distance to it thresholded by Otsu (never below `min_delta`), cleaned by morphology and
optionally refined by GrabCut. When the border itself is not one colour, or the "foreground" covers much of
the border (stripes of a surface such as carpet, wood or fabric), or almost nothing / almost everything is
foreground, the whole image is the foreground (the textured fallback). Components: the foreground's colours
are clustered (k-means in Lab, close centres merged), and each colour's connected parts above a minimum
area become one component region. Defects: connected parts of the ground-truth mask.

Large images: the stage works on a working copy whose longer side is at most `CropConfig.work_size`
(downscaled with INTER_AREA; the ground-truth mask by area coverage, see `working_mask`), so its memory is
bounded whatever the image size. Region masks are at the working size; boxes, areas, locations and
orientations are mapped back to the original image. Images at or below the limit are used as they are.

Boxes are (x0, y0, x1, y1) in original pixels with x1, y1 exclusive (slice bounds); areas are fractions of
the image.

Speed, with the same results (`tests/test_analysis_reference.py`): Lab is computed once per image, region
geometry comes from exact integer moments (`Moments`), morphology runs inside the mask's grown bounding box,
and each pixel's nearest colour centre is found in float32 and re-decided in float64 where float32 could err.
"""
from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from fsad_data.grid import LOCATION_WORDS, location_word  # noqa: F401  (the one grid convention, re-exported)
from mfsc_builder.errors import BuildError
from mfsc_builder.shading import merge_shading

ORIENTATIONS = ("horizontal", "vertical", "diagonal", "none")
# MVTec-AD / VisA classes that are a surface filling the whole frame (no background to separate).
TEXTURED_CLASSES = frozenset({"carpet", "grid", "leather", "tile", "wood", "fabric"})


SURFACE_VOTERS = 8     # normal images that vote on a class's surface decision
SURFACE_SHARE = 0.6    # share of them that must look like a surface


def is_textured_class(class_name: str) -> bool:
    """True for known surface classes (the whole image is the foreground); others are decided per image."""
    return class_name.strip().lower() in TEXTURED_CLASSES


@dataclass
class CropConfig:
    """Thresholds of the cropping stage (Lab distances are in CIE Lab units, areas are image fractions)."""

    border: float = 0.03            # width of the border strip that models the background, fraction of side
    min_delta: float = 12.0         # a pixel this far (Lab) from the background colour may be foreground
    border_spread: float = 14.0     # median Lab distance of border pixels above this: textured, no background
    border_touch: float = 0.08      # foreground on more than this fraction of the border strip: textured,
    border_enter_touch: float = 0.3  # unless it is an object entering from the border: at most this much of
    border_enter_runs: int = 2       # the strip, in at most this many contiguous stretches of the outer ring
    min_foreground: float = 0.005   # less foreground than this: textured fallback (nothing found)
    max_foreground: float = 0.97    # more than this: textured fallback
    textured: bool = False          # force the textured fallback (e.g. for TEXTURED_CLASSES)
    grabcut: bool = False           # refine the Otsu mask with a few GrabCut iterations (slower)
    n_colours: int = 4              # k of the k-means colour clustering inside the foreground
    merge_delta: float = 18.0       # colour cluster centres closer than this (Lab) are one colour
    min_component: float = 0.004    # component regions smaller than this are dropped, unless salient:
    min_salient: float = 0.0003     # down to this, a compact part that stands out of what surrounds it by
    salient_delta: float = 36.0     # at least this (Lab) is kept: an LED, a screw head (see component_masks)
    edge_strength: float = 3.0      # Lab units per px across the outline of a faint part (see _faint_parts)
    max_components: int = 6         # keep the largest ones
    sam_model: str | None = None    # local path of a transformers SAM model (optional component masks)
    sam_device: str = "cpu"
    sam_points_per_side: int = 32   # prompt grid of automatic mask generation
    sam_iou_thresh: float = 0.88    # SAM's predicted-IoU filter
    sam_stability_thresh: float = 0.95
    seed: int = 0
    work_size: int = 1024           # longest side (px) of the working copy that is cropped and captioned

    def __post_init__(self) -> None:
        if isinstance(self.work_size, bool) or not isinstance(self.work_size, int) or self.work_size < 64:
            raise BuildError(f"crop setting work_size={self.work_size!r}: use a whole number of pixels >= 64 "
                             "(default 1024)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _u8(mask: np.ndarray) -> np.ndarray:
    """A bool mask as a contiguous 0/1 uint8 image for OpenCV (a view, no copy, when it already is one)."""
    return np.ascontiguousarray(mask, dtype=bool).view(np.uint8)


def grown_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """(rows, columns) slices of the mask's bounding box grown by `margin` pixels, inside the image. Morphology
    with a kernel of radius r on this part, with margin > 2r, gives what it gives on the whole mask (outside
    the box the mask is empty and stays so), at the cost of the box instead of the image."""
    x, y, w, h = cv2.boundingRect(_u8(mask))
    H, W = mask.shape[:2]
    return slice(max(0, y - margin), min(H, y + h + margin)), slice(max(0, x - margin), min(W, x + w + margin))


@dataclass(frozen=True)
class Moments:
    """Bounding box (x0, y0, x1, y1), pixel count, sums and second sums of a mask's pixel coordinates, exact
    integers: OpenCV's binary image moments of the box (integer sums per row, exact in doubles for any box
    up to 8192 px a side), moved to the image origin in Python integers. Instead of listing the pixels
    (`np.nonzero`) for each of box, area, centre and orientation."""

    box: tuple[int, int, int, int]
    n: int
    sx: int
    sy: int
    sxx: int
    sxy: int
    syy: int

    @classmethod
    def of(cls, mask: np.ndarray) -> Moments:
        m8 = _u8(mask)
        x, y, w, h = cv2.boundingRect(m8)
        m = cv2.moments(m8[y: y + h, x: x + w], binaryImage=True)
        n, sx, sy, sxx, sxy, syy = (int(m[k]) for k in ("m00", "m10", "m01", "m20", "m11", "m02"))
        return cls((x, y, x + w, y + h), n, sx + n * x, sy + n * y, sxx + 2 * x * sx + n * x * x,
                   sxy + x * sy + y * sx + n * x * y, syy + 2 * y * sy + n * y * y)

    def covariance(self, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
        """The sample covariance (n - 1) of the scaled pixel coordinates, from the exact integer sums."""
        n, d = self.n, self.n * (self.n - 1)
        cxx, cxy, cyy = (n * self.sxx - self.sx**2) / d, (n * self.sxy - self.sx * self.sy) / d, \
            (n * self.syy - self.sy**2) / d
        return np.array([[cxx * scale[0] ** 2, cxy * scale[0] * scale[1]],
                         [cxy * scale[0] * scale[1], cyy * scale[1] ** 2]])


def orientation_of(mask: np.ndarray, min_elongation: float = 1.6, scale: tuple[float, float] = (1.0, 1.0),
                   moments: Moments | None = None) -> str:
    """Main-axis direction from second moments; "none" when the region is not elongated. `scale` (x, y) maps
    mask pixels to original pixels (a working-size mask whose two sides were rounded differently)."""
    mom = moments or Moments.of(mask)
    if mom.n < 3:
        return "none"
    evals, evecs = np.linalg.eigh(mom.covariance(scale))
    if evals[0] <= 1e-9:
        ratio = np.inf
    else:
        ratio = float(np.sqrt(evals[1] / evals[0]))
    if ratio < min_elongation:
        return "none"
    vx, vy = evecs[:, 1]
    angle = np.degrees(np.arctan2(abs(vy), abs(vx)))  # 0 = horizontal, 90 = vertical
    if angle < 22.5:
        return "horizontal"
    if angle > 67.5:
        return "vertical"
    return "diagonal"


@dataclass
class Region:
    """One region of an image: its mask and where it is."""

    kind: str                  # foreground | background | component | defect
    name: str
    mask: np.ndarray           # (h, w) bool, at the working size
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    area: float = 0.0
    location: str = ""
    orientation: str = "none"

    @classmethod
    def from_mask(cls, kind: str, name: str, mask: np.ndarray, size: tuple[int, int] | None = None) -> Region:
        """Measure box, area, location and orientation of a mask, in the pixels of an original image of
        `size` (width, height) when the mask is a downscaled (working-size) copy of it."""
        mask = np.asarray(mask, dtype=bool)
        h, w = mask.shape
        big_w, big_h = size or (w, h)
        sx, sy = big_w / w, big_h / h
        mom = Moments.of(mask)
        if mom.n == 0:
            return cls(kind, name, mask, (0, 0, 0, 0), 0.0, "", "none")
        box = mom.box
        if (big_w, big_h) != (w, h):  # a working pixel covers [x * sx, (x + 1) * sx) of the original
            box = (math.floor(box[0] * sx), math.floor(box[1] * sy),
                   min(big_w, math.ceil(box[2] * sx)), min(big_h, math.ceil(box[3] * sy)))
        return cls(kind, name, mask, box, float(mom.n) / float(h * w),
                   location_word((mom.sx / mom.n + 0.5) * sx, (mom.sy / mom.n + 0.5) * sy, big_w, big_h),
                   orientation_of(mask, scale=(sx, sy), moments=mom))

    @property
    def empty(self) -> bool:
        return self.area <= 0.0

    def crop(self, image: np.ndarray, masked: bool = False) -> np.ndarray:
        """The box crop of the original `image`; with `masked`, pixels outside the region are set to 0 (the
        working-size mask scaled to the image with INTER_NEAREST)."""
        x0, y0, x1, y1 = self.box
        out = np.array(image[y0:y1, x0:x1], copy=True)
        if masked:
            keep = self.mask
            if keep.shape != image.shape[:2]:
                keep = cv2.resize(keep.view(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
            out[~keep[y0:y1, x0:x1]] = 0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "mask": encode_mask(self.mask), "box": list(self.box),
                "area": self.area, "location": self.location, "orientation": self.orientation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        return cls(d["kind"], d["name"], decode_mask(d["mask"]), tuple(int(v) for v in d["box"]),
                   float(d["area"]), d["location"], d["orientation"])


def encode_mask(mask: np.ndarray) -> str:
    """A bool mask as base64 of a 1-bit-content PNG (lossless, small, JSON-safe)."""
    ok, buf = cv2.imencode(".png", np.asarray(mask, dtype=np.uint8) * 255)
    if not ok:
        raise BuildError("could not PNG-encode a region mask; this is a bug, please report it")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def decode_mask(text: str) -> np.ndarray:
    buf = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    m = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise BuildError("a stored region mask is not a valid PNG; delete the crop stage store and rebuild")
    return m > 0


@dataclass
class ImageRegions:
    """All regions of one image, as the captioner and the template filler see them."""

    foreground: Region
    background: Region
    components: list[Region] = field(default_factory=list)
    defects: list[Region] = field(default_factory=list)
    textured: bool = False
    size: tuple[int, int] = (0, 0)  # (width, height) of the original image; the masks are at the working size

    def all(self) -> list[Region]:
        return [self.foreground, self.background, *self.components, *self.defects]

    def to_dict(self) -> dict[str, Any]:
        return {"foreground": self.foreground.to_dict(), "background": self.background.to_dict(),
                "components": [r.to_dict() for r in self.components],
                "defects": [r.to_dict() for r in self.defects], "textured": bool(self.textured),
                "size": [int(v) for v in self.size]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRegions:
        return cls(Region.from_dict(d["foreground"]), Region.from_dict(d["background"]),
                   [Region.from_dict(r) for r in d["components"]], [Region.from_dict(r) for r in d["defects"]],
                   bool(d["textured"]), (int(d["size"][0]), int(d["size"][1])))


def working_size(width: int, height: int, work_size: int) -> tuple[int, int]:
    """(width, height) of the working copy: the image's own size at or below `work_size`, else the longer
    side scaled to `work_size` (the shorter side kept at 8 px or more, the smallest image cropped)."""
    longest = max(width, height)
    if longest <= work_size:
        return width, height
    return (min(width, max(8, round(width * work_size / longest))),
            min(height, max(8, round(height * work_size / longest))))


def working_image(image: np.ndarray, work_size: int) -> np.ndarray:
    """The working copy of an RGB image (INTER_AREA, which averages instead of aliasing); the image
    itself when it is at or below the limit. Cropping and captioning both see this copy."""
    h, w = image.shape[:2]
    size = working_size(w, h, work_size)
    return image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def working_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool mask at the working `size` (width, height): working pixels at least half covered (INTER_AREA
    coverage), so areas stay unbiased; if that leaves nothing of a non-empty mask, every touched pixel, so a
    defect smaller than half a working pixel does not vanish."""
    if mask.shape[::-1] == size:
        return mask
    cover = cv2.resize(mask.view(np.uint8) * np.uint8(255), size, interpolation=cv2.INTER_AREA)
    half = cover >= 128
    return half if half.any() else cover > 0


def to_lab(image: np.ndarray) -> np.ndarray:
    """RGB uint8 -> CIE Lab float32 with L in 0..100 and a, b in about -128..127 (of RGB / 255 in float32)."""
    return cv2.cvtColor(np.divide(image, np.float32(255.0), dtype=np.float32), cv2.COLOR_RGB2Lab)


def lab_distance(lab: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Euclidean (CIE76) distance of every Lab pixel (..., 3) to the colour `ref`: the same arithmetic as
    `np.linalg.norm(lab - ref, axis=-1)` (squares added in channel order), a channel at a time, ~10x faster."""
    d = [lab[..., c] - ref[c] for c in range(3)]
    return np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])


def _check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8):
        raise BuildError(f"crop_regions needs an RGB uint8 (H, W, 3) array, got "
                         f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}; "
                         "load images with fsad_data.images.load_rgb")
    if min(image.shape[:2]) < 8:
        raise BuildError(f"image of size {image.shape[1]}x{image.shape[0]} is too small to crop (need >= 8 px)")


def _border_pixels(lab: np.ndarray, frac: float) -> np.ndarray:
    h, w = lab.shape[:2]
    b = max(1, round(frac * min(h, w)))
    c = lab.shape[2]
    return np.concatenate([lab[:b].reshape(-1, c), lab[-b:].reshape(-1, c),
                           lab[b:-b, :b].reshape(-1, c), lab[b:-b, -b:].reshape(-1, c)])


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes (background pockets not connected to the image border) become foreground."""
    inv = (~mask).astype(np.uint8)
    n, lab = cv2.connectedComponents(inv, connectivity=4)
    hole = np.ones(n, bool)
    hole[0] = False  # label 0 is the mask itself
    hole[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = False
    return mask | hole[lab]


def foreground_mask(image: np.ndarray, config: CropConfig, ignore: np.ndarray | None = None,
                    lab: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """(foreground mask, textured) by the border colour model; textured means the whole image.
    Pixels in `ignore` (a known defect) do not take part in the decision and are foreground afterwards
    unless the image is textured, so a defect cannot turn a surface into an "object" or cut a notch.
    `lab` is `to_lab(image)` when the caller has it already."""
    mask, textured, _ref = _foreground(image, config, ignore, lab)
    return mask, textured


def background_colour(lab: np.ndarray, config: CropConfig) -> np.ndarray:
    """The background's reference colour: the median Lab colour of the border strip."""
    return np.median(_border_pixels(lab, config.border), axis=0)


def _foreground(image: np.ndarray, config: CropConfig, ignore: np.ndarray | None,
                lab: np.ndarray | None) -> tuple[np.ndarray, bool, np.ndarray | None]:
    """`foreground_mask`, and the background's reference colour (None when textured before it is read)."""
    h, w = image.shape[:2]
    full = np.ones((h, w), bool)
    if config.textured:
        return full, True, None
    lab = to_lab(image) if lab is None else lab
    border = _border_pixels(lab, config.border)
    ref = np.median(border, axis=0)
    if float(np.median(lab_distance(border, ref))) > config.border_spread:
        return full, True, ref
    dist = lab_distance(lab, ref)
    if ignore is not None and ignore.any():
        dist[ignore] = 0.0
    scaled = np.clip(dist * (255.0 / max(float(dist.max()), 1e-6)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    thr = max(float(otsu) * max(float(dist.max()), 1e-6) / 255.0, config.min_delta)
    mask = dist > thr
    k = max(1, round(min(h, w) / 100))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    box = grown_box(mask, 2 * k + 2)
    m8 = np.zeros((h, w), np.uint8)
    m8[box] = cv2.morphologyEx(cv2.morphologyEx(_u8(mask[box]), cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    mask = _fill_holes(m8 > 0)
    if thr > config.min_delta:
        faint = _faint_parts(mask, dist, config, ignore if ignore is not None and ignore.any() else None)
        if faint is not None:
            mask = _fill_holes(mask | faint)
    if ignore is not None and ignore.any():
        touch_ignored = float(_border_pixels(mask[..., None].astype(np.float32), config.border).mean())
        if mask.any() and touch_ignored <= config.border_touch:
            mask = _fill_holes(mask | ignore)
    if config.grabcut and mask.any() and not mask.all():
        mask = _grabcut(image, mask, config.seed)
    frac = float(mask.mean())
    touch = float(_border_pixels(mask[..., None].astype(np.float32), config.border).mean())
    if frac < config.min_foreground or frac > config.max_foreground:
        return full, True, ref
    if touch > config.border_touch and not _enters_from_border(mask, touch, config):
        return full, True, ref
    return mask, False, ref


def _faint_parts(mask: np.ndarray, dist: np.ndarray, config: CropConfig, ignore: np.ndarray | None = None
                 ) -> np.ndarray | None:
    """Parts that Otsu's threshold and the opening lost, or None: a thin silver shaft on white, the plain
    metal of a polished bar between its bands. Otsu splits the distances where the strong parts are; a part
    only `min_delta` from the background falls below it, and the opening (a kernel of 2% of the side)
    erases anything thinner than that. Candidates are the connected parts above `min_delta`, outside the
    mask, opened by 3 x 3 only (a 1-2 px anti-aliased rim goes, a 4 px shaft stays), of at least
    `min_component` of the image. A candidate is kept when its outline is an edge: the median Lab distance
    gradient on it is at least `edge_strength` per px. Light falling off across a plain background makes no
    edge, so uneven light stays background.

    Pixels of `ignore` (a known defect, whose distances the caller zeroed) join the candidate pieces they
    touch, as `component_masks` joins parts through a defect: a defect across a thin shaft does not cut it
    into pieces too small to keep. Only a piece's own pixels count towards its size and are returned, and
    its outline is read away from the defect (whose zeroed distances would make an edge of anything)."""
    h, w = mask.shape
    min_px = max(1, int(np.ceil(config.min_component * h * w)))
    cand = (dist > config.min_delta) & ~mask
    if int(np.count_nonzero(cand)) < min_px:
        return None
    cand = cv2.morphologyEx(_u8(cand), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    joined = cand if ignore is None else cand | _touching(ignore, cand)
    n, cc, stats, _ = cv2.connectedComponentsWithStats(_u8(joined), connectivity=8)
    big = np.flatnonzero(np.bincount(cc[cand], minlength=n)[1:] >= min_px) + 1
    if len(big) == 0:
        return None
    near_defect = None if ignore is None else cv2.dilate(_u8(ignore), np.ones((3, 3), np.uint8)) > 0
    keep = np.zeros((h, w), bool)
    for i in big:
        x, y, bw, bh = (int(v) for v in stats[i, :4])
        rows, cols = slice(max(0, y - 2), min(h, y + bh + 2)), slice(max(0, x - 2), min(w, x + bw + 2))
        part = (cc[rows, cols] == i) & cand[rows, cols]
        p8 = part.view(np.uint8)
        ring = (cv2.dilate(p8, np.ones((3, 3), np.uint8)) > 0) & ~(cv2.erode(p8, np.ones((3, 3), np.uint8)) > 0)
        if near_defect is not None:
            ring &= ~near_defect[rows, cols]
        if not ring.any():
            continue
        d = dist[rows, cols]
        gx, gy = cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3) / 8.0, cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        if float(np.median(np.hypot(gx[ring], gy[ring]))) >= config.edge_strength:
            keep[rows, cols] |= part
    return keep if keep.any() else None


def _enters_from_border(mask: np.ndarray, touch: float, config: CropConfig) -> bool:
    """An object that enters the image from one side or a corner (a part cut by the frame) touches the border
    in a few contiguous stretches and never on two opposite sides; a surface (a stripe of a fabric spans
    the image), or a mask leaking along a shaded border, touches it in many places, on opposite sides or
    nearly all round. True for the first: the image keeps its background."""
    top, bottom, left, right = mask[0, :].any(), mask[-1, :].any(), mask[:, 0].any(), mask[:, -1].any()
    if (top and bottom) or (left and right):
        return False
    ring = np.concatenate([mask[0, :], mask[1:, -1], mask[-1, -2::-1], mask[-2:0:-1, 0]]).astype(np.int8)
    runs = int((np.diff(np.concatenate([ring[-1:], ring])) == 1).sum())
    return touch <= config.border_enter_touch and 1 <= runs <= config.border_enter_runs


def _grabcut(image: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    cv2.setRNGSeed(seed)
    gc = np.where(mask, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    er = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    gc[er] = cv2.GC_FGD
    b = max(1, min(mask.shape) // 50)
    gc[:b], gc[-b:], gc[:, :b], gc[:, -b:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), gc, None, bgd, fgd, 3, cv2.GC_INIT_WITH_MASK)
    return (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)


def colour_clusters(image: np.ndarray, mask: np.ndarray, config: CropConfig, lab: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(label map, Lab centres): k-means in Lab on the masked pixels, centres closer than merge_delta merged,
    each pixel labelled with its nearest centre. The label map is -1 outside the mask; labels are ordered by
    pixel count, largest first, and the centres (of the labels that have pixels) in that order. `lab` is
    `to_lab(image)` when the caller has it already."""
    lab = to_lab(image) if lab is None else lab
    flat = np.flatnonzero(mask)
    channels = [lab[..., c].ravel().take(flat) for c in range(3)]  # the masked pixels, one array per channel
    labels = np.full(mask.shape, -1, np.int32)
    if len(flat) == 0:
        return labels, np.zeros((0, 3))
    rng = np.random.default_rng(config.seed)
    pick = slice(None) if len(flat) <= 6000 else rng.choice(len(flat), 6000, replace=False)
    sample = np.stack([ch[pick] for ch in channels], axis=1)
    k = max(1, min(config.n_colours, len(np.unique(sample.round(0), axis=0))))
    if k > 1:
        cv2.setRNGSeed(config.seed)
        crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.1)
        _, _, centres = cv2.kmeans(sample.astype(np.float32), k, None, crit, 3, cv2.KMEANS_PP_CENTERS)
    else:
        centres = sample.mean(axis=0, keepdims=True)
    centres = _merge_centres(sample, centres, config.merge_delta)
    lbl = nearest_centre(channels, centres)
    counts = np.bincount(lbl, minlength=len(centres))
    order = np.argsort(-counts, kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    labels.ravel()[flat] = remap[lbl]
    return labels, centres[order][counts[order] > 0]


def nearest_centre(channels: list[np.ndarray], centres: np.ndarray) -> np.ndarray:
    """Index of the nearest of the Lab `centres` (k, 3) for each pixel (`channels`: L, a, b as 1-D float32
    arrays), the first on ties: exactly the argmin of the float64 distances (`lab_distance`). Found with
    float32 distances at half the memory traffic; where the nearest two are closer than twice float32's
    error bound (4e-5 of their sum, with an 8x margin), the pixel is decided again in float64."""
    n, k = len(channels[0]), len(centres)
    lbl = np.zeros(n, np.intp)
    if k == 1:
        return lbl
    best = second = np.empty(0, np.float32)
    for j, c in enumerate(np.asarray(centres, np.float32)):
        t = channels[0] - c[0]
        acc = t * t
        for ch, cc in ((channels[1], c[1]), (channels[2], c[2])):
            np.subtract(ch, cc, out=t)
            t *= t
            acc += t
        if j == 0:
            best, second = acc, np.full(n, np.inf, np.float32)
            continue
        closer = acc < best
        np.minimum(second, np.where(closer, best, acc), out=second)
        np.minimum(best, acc, out=best)
        lbl[closer] = j
    unsure = np.flatnonzero(second - best <= np.float32(2.1e-4) * (best + second + 2))
    if len(unsure):
        sub = np.stack([ch[unsure] for ch in channels], axis=-1)
        lbl[unsure] = np.stack([lab_distance(sub, c) for c in np.asarray(centres, np.float64)]).argmin(axis=0)
    return lbl


def _merge_centres(sample: np.ndarray, centres: np.ndarray, delta: float) -> np.ndarray:
    """Agglomerate centres closer than `delta`, re-estimating each merged centre from its pixels."""
    centres = np.asarray(centres, np.float64)
    while len(centres) > 1:
        d = np.linalg.norm(centres[:, None] - centres[None], axis=2)
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] >= delta:
            break
        lbl = np.linalg.norm(sample[:, None] - centres[None], axis=2).argmin(axis=1)
        merged = sample[(lbl == i) | (lbl == j)]
        new = merged.mean(axis=0) if len(merged) else (centres[i] + centres[j]) / 2
        centres = np.vstack([np.delete(centres, [i, j], axis=0), new[None]])
    return centres


def component_masks(image: np.ndarray, foreground: np.ndarray, config: CropConfig,
                    bridge: np.ndarray | None = None, lab: np.ndarray | None = None,
                    background: np.ndarray | None = None) -> list[np.ndarray]:
    """Component masks: connected parts of each foreground colour, largest first, small ones dropped, the
    parts of one lit surface merged (`shading.merge_shading`: a highlight band or a reflection is not a
    part). Pixels of `bridge` (a known defect, left out of the components) still connect the parts of one
    colour they touch, so a defect across a thin part does not cut it in two.

    Size: a part below `min_component` (0.4% of the image: noise, a speck of another colour) is dropped
    unless it is salient, which a labeller would name (an LED, a screw head): at least `min_salient`, compact
    (its area at least 0.7 of its convex hull's), inside the image, and its median colour at least
    `salient_delta` (default 36 Lab) from the median colour of the ring around it.

    Background taken in: the foreground's closing fills a narrow gap between two parts (up to about 2% of
    the side) and the notches of a part's outline with background. Foreground pixels within `min_delta` of
    the background's colour (`background`, the Lab reference colour; read from the border when not given)
    and connected to the pixels outside the object are background (`_pockets`): a part made mostly of them
    is dropped, they join no parts when shading is merged, and a piece of the background's colour touching
    them or the outside is no highlight (see `merge_shading`). An enclosed hole (a nut's) is not touched."""
    lab = to_lab(image) if lab is None else lab
    labels, _ = colour_clusters(image, foreground, config, lab)
    h, w = foreground.shape
    k = max(1, round(min(h, w) / 150))
    # all the work inside the box of the foreground and the bridge (a bridge part must stay whole)
    rows, cols = grown_box(foreground if bridge is None else foreground | bridge, 2 * k + 2)
    labels, bridge = labels[rows, cols], None if bridge is None else bridge[rows, cols]
    box_lab = lab[rows, cols]
    parts: list[np.ndarray] = []
    for c in range(int(labels.max()) + 1):
        parts.extend(_colour_parts(labels, c, bridge, box_lab, config, (rows.start, cols.start), (h, w)))
    if len(parts) > 1:
        fg = foreground[rows, cols]
        outside = ~fg if bridge is None else ~(fg | bridge)
        ref = background_colour(lab, config) if background is None else background
        pocket = _pockets(fg, outside, box_lab, ref, config.min_delta)
        if pocket is not None:
            at = np.flatnonzero(pocket)
            parts = [p for p in parts if 2 * int(np.count_nonzero(p.ravel()[at])) <= int(np.count_nonzero(p))]
            fg, outside = fg & ~pocket, outside | pocket
        if len(parts) > 1:
            parts = merge_shading(parts, box_lab, fg, reach=3 * k + 1, background=(ref, outside))
    ranked = []
    for part in parts:
        y, x = divmod(int(np.argmax(part)), part.shape[1])
        ranked.append((int(np.count_nonzero(part)), (y + rows.start) * w + x + cols.start, part))
    ranked.sort(key=lambda p: (p[0], -p[1]), reverse=True)
    out = []
    for _size, _first, part in ranked[: config.max_components]:
        full = np.zeros((h, w), bool)
        full[rows, cols] = part
        out.append(full)
    return out


def _colour_parts(labels: np.ndarray, c: int, bridge: np.ndarray | None, lab: np.ndarray, config: CropConfig,
                  origin: tuple[int, int], shape: tuple[int, int]) -> list[np.ndarray]:
    """The parts of colour `c` of `labels` (the foreground's box, at `origin` in an image of `shape`): its
    connected parts after an opening (a kernel of 1/150 of the side) of at least `min_component`, joined
    through `bridge`; the thin parts the opening removed (`_thin_parts`); and the salient small ones."""
    h, w = shape
    min_px = max(1, int(np.ceil(config.min_component * h * w)))
    min_small = max(9, int(np.ceil(config.min_salient * h * w)))
    k = max(1, round(min(h, w) / 150))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    raw = labels == c
    m = cv2.morphologyEx(raw.view(np.uint8), cv2.MORPH_OPEN, kernel) > 0
    parts = _thin_parts(raw & ~m, min_px, bridge)
    joined = m if bridge is None else m | _touching(bridge, m)
    n, cc = cv2.connectedComponents(joined.view(np.uint8), connectivity=8)
    sizes = np.bincount(cc[m], minlength=n)  # a part's own pixels (bridge pixels only join)
    parts.extend((cc == i) & m for i in np.flatnonzero(sizes[1:] >= min_px) + 1)
    small = np.flatnonzero((sizes[1:] >= min_small) & (sizes[1:] < min_px)) + 1
    for i in small[np.argsort(-sizes[small], kind="stable")][:8]:
        part = (cc == i) & m
        if _salient(part, lab, config, origin, shape):
            # what the opening took from so small a part (a glint's hole grown into a notch) comes back
            grown = (cv2.dilate(part.view(np.uint8), kernel) > 0) & raw
            parts.append(part | (_fill_holes(grown) & (cv2.dilate(part.view(np.uint8), kernel) > 0)))
    return parts


def _pockets(fg: np.ndarray, outside: np.ndarray, lab: np.ndarray, ref: np.ndarray, delta: float
             ) -> np.ndarray | None:
    """Foreground pixels within `delta` (Lab) of the background colour `ref`, in connected parts that touch
    `outside` (8-neighbourhood): background that the foreground's closing took in. None when there are none."""
    near = fg & (lab_distance(lab, ref) < delta)
    if not near.any():
        return None
    _n, cc = cv2.connectedComponents(near.view(np.uint8), connectivity=8)
    hit = np.unique(cc[(cv2.dilate(_u8(outside), np.ones((3, 3), np.uint8)) > 0) & near])
    hit = hit[hit > 0]
    return np.isin(cc, hit) if len(hit) else None


def _thin_parts(removed: np.ndarray, min_px: int, bridge: np.ndarray | None = None) -> list[np.ndarray]:
    """Thin parts that a colour's opening removed (a shaft, a wire narrower than the kernel), each at least
    `min_px`: what is left of `removed` after a 3 x 3 opening, which takes the 1-2 px mixed-colour rims at
    the edges of other parts and the noise. Pixels of `bridge` (a known defect) join the pieces they touch,
    as in `component_masks`; only a part's own pixels count and are returned."""
    if int(np.count_nonzero(removed)) < min_px:
        return []
    thin = cv2.morphologyEx(removed.view(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    joined = thin if bridge is None else thin | _touching(bridge, thin)
    n, cc = cv2.connectedComponents(joined.view(np.uint8), connectivity=8)
    sizes = np.bincount(cc[thin], minlength=n)
    return [(cc == i) & thin for i in np.flatnonzero(sizes[1:] >= min_px) + 1]


def _salient(part: np.ndarray, lab: np.ndarray, config: CropConfig, origin: tuple[int, int],
             shape: tuple[int, int]) -> bool:
    """A small part a labeller would name: compact, not cut by the image's edge, and far in colour from
    the ring (3 px) around it. Read inside the part's box grown by 4 px."""
    x, y, bw, bh = cv2.boundingRect(part.view(np.uint8))
    if y + origin[0] == 0 or x + origin[1] == 0 or y + bh + origin[0] >= shape[0] or x + bw + origin[1] >= shape[1]:
        return False
    r = slice(max(0, y - 4), y + bh + 4), slice(max(0, x - 4), x + bw + 4)
    p = part[r]
    contours, _ = cv2.findContours(p.view(np.uint8).copy(), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.contourArea(cv2.convexHull(np.concatenate(contours))) if contours else 0.0
    if hull <= 0 or np.count_nonzero(p) < 0.7 * hull:
        return False
    ring = (cv2.dilate(p.view(np.uint8), np.ones((7, 7), np.uint8)) > 0) & ~p
    sub = lab[r]
    return float(np.linalg.norm(np.median(sub[p], axis=0) - np.median(sub[ring], axis=0))) >= config.salient_delta


def _touching(bridge: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The connected parts of `bridge` that touch `mask` (8-neighbourhood)."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    _n, cc = cv2.connectedComponents(bridge.astype(np.uint8), connectivity=8)
    hit = np.unique(cc[grown & bridge])
    return np.isin(cc, hit[hit > 0])


def defect_regions(defect_mask: np.ndarray, size: tuple[int, int] | None = None) -> list[Region]:
    """One region per 8-connected part of the (working-size) ground-truth mask, largest first; geometry in
    the pixels of an original image of `size` (width, height)."""
    n, cc, stats, _ = cv2.connectedComponentsWithStats(defect_mask.astype(np.uint8), connectivity=8)
    idx = sorted(range(1, n), key=lambda i: (-int(stats[i, cv2.CC_STAT_AREA]), i))
    return [Region.from_mask("defect", f"defect {j + 1}", cc == i, size) for j, i in enumerate(idx)]


@lru_cache(maxsize=2)
def _sam_pipeline(path: str, device: str) -> Any:
    """The mask-generation pipeline of a local SAM model, loaded once per process."""
    from transformers import pipeline

    return pipeline("mask-generation", model=path, device=device)


def _sam_components(image: np.ndarray, foreground: np.ndarray, config: CropConfig) -> list[np.ndarray]:
    """Component masks from a local transformers SAM model (automatic mask generation), clipped to the
    foreground, small ones dropped, largest first; used only when `config.sam_model` is set."""
    if not Path(str(config.sam_model)).exists():
        raise BuildError(f"SAM model folder not found: {config.sam_model}. Pass a local folder saved with "
                         "save_pretrained (e.g. facebook/sam-vit-base downloaded beforehand), or drop --sam-model")
    try:
        gen = _sam_pipeline(str(config.sam_model), config.sam_device)
        out = gen(Image.fromarray(image), points_per_batch=64, points_per_crop=config.sam_points_per_side,
                  pred_iou_thresh=config.sam_iou_thresh, stability_score_thresh=config.sam_stability_thresh)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise BuildError(f"SAM model at {config.sam_model} could not run ({exc}); check the folder holds a "
                         "transformers SAM checkpoint, or drop --sam-model") from exc
    h, w = foreground.shape
    min_px = max(1, int(np.ceil(config.min_component * h * w)))
    proposals = []
    for m in out.get("masks", []):
        m = np.asarray(m, bool)
        if m.shape != (h, w):
            m = cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        proposals.append(m & foreground)
    proposals.sort(key=lambda x: -int(x.sum()))
    parts: list[np.ndarray] = []
    taken = np.zeros((h, w), bool)
    for m in proposals:  # overlapping proposals: each pixel stays in the larger one
        m = m & ~taken
        if m.sum() >= min_px:
            parts.append(m)
            taken |= m
    parts.sort(key=lambda x: -int(x.sum()))
    return parts[: config.max_components]


def class_is_textured(class_name: str, reference_images: list[np.ndarray], config: CropConfig | None = None
                      ) -> bool:
    """One decision per class (so all its images get the same kind of record): a known surface class, or
    the textured fallback on at least `SURFACE_SHARE` of the given normal images. Give several (the build
    passes up to `SURFACE_VOTERS` normal training images, the references first), so one odd image (a close-up,
    a part touching the frame) cannot decide the class."""
    config = config or CropConfig()
    if config.textured or is_textured_class(class_name):
        return True
    if not reference_images:
        return False
    votes = [foreground_mask(working_image(img, config.work_size), config)[1] for img in reference_images]
    return sum(votes) >= SURFACE_SHARE * len(votes)


def crop_regions(image: np.ndarray, defect_mask: np.ndarray | None = None,
                 config: CropConfig | None = None) -> ImageRegions:
    """Stage 1 for one image: foreground, background, components and (with a mask) defect regions, found on
    the working copy (`working_image`) and measured in the pixels of `image`."""
    config = config or CropConfig()
    _check_image(image)
    h, w = image.shape[:2]
    if defect_mask is not None:
        defect_mask = np.asarray(defect_mask)
        if defect_mask.shape[:2] != (h, w):
            raise BuildError(f"defect mask of size {defect_mask.shape[1]}x{defect_mask.shape[0]} does not match "
                             f"its image of size {w}x{h}; fix or re-export the mask")
        defect_mask = defect_mask if defect_mask.dtype == bool else defect_mask != 0
    size = (w, h)
    image = working_image(image, config.work_size)
    if defect_mask is not None:
        defect_mask = working_mask(defect_mask, image.shape[1::-1])
    lab = None if config.textured else to_lab(image)  # once per image: the foreground and the colours read it
    fg, textured, ref = _foreground(image, config, defect_mask, lab)
    foreground = Region.from_mask("foreground", "foreground", fg, size)
    background = Region.from_mask("background", "background", ~fg, size)
    # components describe the normal parts: defect pixels are left out of them
    normal_fg = fg & ~defect_mask if defect_mask is not None and not textured else fg
    if not normal_fg.any():
        normal_fg = fg
    if config.sam_model:
        comps = _sam_components(image, normal_fg, config)
    elif textured:
        comps = [fg]
    else:
        comps = component_masks(image, normal_fg, config,
                                bridge=defect_mask if defect_mask is not None and not textured else None, lab=lab,
                                background=ref)
    if not comps:
        comps = [normal_fg]
    components = [Region.from_mask("component", f"component {i + 1}", m, size) for i, m in enumerate(comps)]
    defects = defect_regions(defect_mask, size) if defect_mask is not None and defect_mask.any() else []
    return ImageRegions(foreground, background, components, defects, textured, size)
