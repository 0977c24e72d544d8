"""The offline attribute captioner (MFSC stage 2 without a model): measured, not guessed.

- Colour: the median CIE Lab colour of a region, named by the nearest entry of `COLOUR_TABLE` (sRGB values
  converted to Lab with OpenCV's D65 conversion; plain Euclidean distance, CIE76).
- Texture, from the lightness channel L inside the eroded region:
  smooth    mean gradient magnitude (L units per pixel, after a sigma-1 blur) below `SMOOTH_GRADIENT` and
            fine detail (robust spread, 1.4826 x MAD, of L minus its sigma-3 blur) below `SMOOTH_DETAIL`,
            so a finely ribbed belt or woven cloth that the blur erases is not "smooth" / "plain";
  striped   the region's summed structure tensor is coherent (one dominant gradient direction, coherence
            above `STRIPE_COHERENCE`), or row means + column means explain more than `STRIPE_SEPARABLE` of
            the variance (axis-aligned stripes crossing each other: plaid);
  granular  fine-scale: a sigma-1 Gaussian blur keeps less than `GRANULAR_KEEP` of the L variance;
  textured  anything else (coarse, multi-directional pattern).
  A background that the rules above call smooth is "striped" when it has a grain (`ImageMeasures.grain`):
  wood grain and brushed metal are low-amplitude streaks of one direction that neither the gradient nor the
  detail threshold sees, but their fine-scale structure tensor has an oriented energy (sqrt of the difference
  of its eigenvalues per pixel, blind to isotropic camera noise) of at least `GRAIN_ENERGY` and a coherence of
  at least `GRAIN_COHERENCE`, read `GRAIN_MARGIN` px inside the region so the object's outline is not a grain.
- Shape, from the outer contour, first rule that holds: elongated (min-area-rectangle aspect >= 2.5),
  rectangular (area / min-area-rectangle area >= 0.85), circular (circularity 4*pi*A/P^2 >= 0.75 and
  aspect < 1.35; a square has 0.785 but is caught by the rule before), irregular.
- Count (regions of the same colour and shape are one component with a count), location (3x3 grid word of
  each region) and direction (orientation of the main axis) come from stage 1.
- Names: the class's object noun for the main (largest) part, "<colour> <shape noun>" for the others.
Everything is measured on the stage-1 working copy (`crop.working_image`, the masks' size), so a huge image
costs no more than one of `CropConfig.work_size`; boxes and locations are in original pixels.
Speed (`ImageMeasures`): Lab and the filtered L planes are computed once per image, each region is read inside
its bounding box, and a region's statistics use all its pixels up to `SAMPLE_PIXELS` (so every image up to
256 x 256 is measured on every pixel) and a fixed pseudo-random subset of that many beyond (the same pixels on
every run; `tests/test_analysis_reference.py` compares both with the plain whole-image formulas).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from mfsc_builder.captioners.base import CaptionRequest, CaptionResult, LevelFields
from mfsc_builder.crop import ImageRegions, Region, to_lab
from mfsc_builder.english import a, indefinite
from mfsc_builder.records import ComponentView, DefectView, ForegroundView, ImageView, Provenance

ATTRIBUTES_VERSION = "attributes-v4"  # v2: fine detail breaks "smooth"; v3: glare is shading, thin and small salient parts kept, grained backgrounds; v4: a gap between parts is no highlight, a defect no longer cuts a thin part away

# Named colours (sRGB). Gray levels are spread so that lightness decides among the achromatic names.
COLOUR_TABLE: dict[str, tuple[int, int, int]] = {
    "black": (10, 10, 10),
    "dark grey": (70, 70, 70),
    "grey": (128, 128, 128),
    "silver": (190, 190, 190),
    "white": (250, 250, 250),
    "red": (210, 30, 30),
    "dark red": (120, 15, 20),
    "orange": (245, 135, 20),
    "yellow": (240, 215, 30),
    "beige": (225, 205, 160),
    "brown": (130, 80, 40),
    "green": (40, 170, 50),
    "dark green": (20, 85, 35),
    "cyan": (30, 200, 210),
    "blue": (40, 90, 200),
    "navy": (20, 30, 100),
    "purple": (125, 45, 160),
    "pink": (240, 140, 185),
}
SAMPLE_PIXELS = 256 * 256  # a region's colour and texture statistics read at most about this many of its pixels
SMOOTH_GRADIENT = 1.5
SMOOTH_DETAIL = 2.5
STRIPE_COHERENCE = 0.6
STRIPE_SEPARABLE = 0.6
GRANULAR_KEEP = 0.35
GRAIN_ENERGY = 0.7      # L units per pixel of oriented fine-scale gradient: wood ~1.5, camera noise ~0.05
GRAIN_COHERENCE = 0.25
GRAIN_MARGIN = 9        # px: three times the fine scale's sigma, where an outline still shows in it
SHAPE_NOUNS = {"circular": "round part", "rectangular": "rectangular part", "elongated": "strip",
               "irregular": "part"}
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def _table_lab() -> tuple[list[str], np.ndarray]:
    names = list(COLOUR_TABLE)
    rgb = np.array([COLOUR_TABLE[n] for n in names], np.uint8)[None]
    return names, to_lab(rgb)[0]


_NAMES, _LAB = _table_lab()


def colour_name_lab(lab: np.ndarray) -> str:
    """The nearest named colour of one Lab triple."""
    return _NAMES[int(np.linalg.norm(_LAB - np.asarray(lab, np.float32)[None], axis=1).argmin())]


@lru_cache(maxsize=4)
def _spread(height: int, width: int) -> np.ndarray:
    """A fixed pseudo-random uint16 value per pixel position (seed 0): `_sample` keeps the pixels below a
    threshold, a subset without the aliasing of a regular stride on striped or woven textures."""
    return np.random.default_rng(0).integers(0, 1 << 16, (height, width), dtype=np.uint16)


def _sample(mask: np.ndarray, full: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """`mask` (the `box` part of an image of shape `full`) or, when it holds more than `SAMPLE_PIXELS` pixels,
    about `SAMPLE_PIXELS` of them chosen by position (the same pixels of an image on every call)."""
    n = int(np.count_nonzero(mask))
    if n <= SAMPLE_PIXELS:
        return mask
    y0, y1, x0, x1 = box
    return mask & (_spread(*full)[y0:y1, x0:x1] < (SAMPLE_PIXELS << 16) // n)


class ImageMeasures:
    """The colour and texture measurements of the regions of one image. The Lab image and the filtered
    lightness planes are computed once per image (not once per region); each region is then read inside its
    bounding box, on all its pixels up to `SAMPLE_PIXELS` (every region of an image up to 256 x 256) and on
    a fixed spread subset of that many beyond, so a region's cost stays bounded whatever its size."""

    def __init__(self, image: np.ndarray) -> None:
        self.shape = image.shape[:2]
        self.lab = to_lab(image)
        self._planes: dict[str, np.ndarray] | None = None

    @property
    def planes(self) -> dict[str, np.ndarray]:
        """L, its sigma-1 blur, the gradients of both (Sobel / 8) and the fine scale (L minus its sigma-3 blur)."""
        if self._planes is None:
            L = np.ascontiguousarray(self.lab[..., 0])
            Ls = cv2.GaussianBlur(L, (0, 0), 1.0)
            self._planes = {
                "L": L, "Ls": Ls,
                "gx": cv2.Sobel(Ls, cv2.CV_32F, 1, 0, ksize=3) / 8.0, "gy": cv2.Sobel(Ls, cv2.CV_32F, 0, 1, ksize=3) / 8.0,
                "gx_raw": cv2.Sobel(L, cv2.CV_32F, 1, 0, ksize=3) / 8.0,
                "gy_raw": cv2.Sobel(L, cv2.CV_32F, 0, 1, ksize=3) / 8.0,
                "fine": L - cv2.GaussianBlur(L, (0, 0), 3.0),
            }
        return self._planes

    def _box(self, mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the mask's bounding box grown by `margin`, inside the image."""
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=bool).view(np.uint8))
        H, W = self.shape
        return max(0, y - margin), min(H, y + h + margin), max(0, x - margin), min(W, x + w + margin)

    def _flat(self, pick: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image indices, rows, columns in the box) of the True pixels of `pick` (the `box` part of the image),
        row-major: a plane's `ravel().take(indices)` is its values under the mask, as boolean indexing gives."""
        ys, xs = np.nonzero(pick)
        return (ys + box[0]) * self.shape[1] + (xs + box[2]), ys, xs

    def colour(self, mask: np.ndarray) -> str:
        """Name of the median Lab colour of the masked pixels."""
        y0, y1, x0, x1 = box = self._box(mask, 0)
        pix = self.lab.reshape(-1, 3).take(self._flat(_sample(mask[y0:y1, x0:x1], self.shape, box), box)[0], axis=0)
        if len(pix) == 0:
            return ""
        return colour_name_lab(np.median(pix, axis=0))

    def texture_measures(self, mask: np.ndarray) -> dict[str, float]:
        """gradient (mean |grad L|), coherence (structure tensor), keep (variance kept after a sigma-1 blur),
        separable (row + column means), detail (robust spread of the fine scale), inside the eroded mask."""
        y0, y1, x0, x1 = box = self._box(mask, 3)
        inner = _inner(mask[y0:y1, x0:x1])
        pick = _sample(inner, self.shape, box)
        flat, ys, xs = self._flat(pick, box)
        p = {k: v.ravel().take(flat) for k, v in self.planes.items()}
        grad = float(np.hypot(p["gx"], p["gy"]).mean())
        jxx, jyy, jxy = (p["gx_raw"] ** 2).sum(), (p["gy_raw"] ** 2).sum(), (p["gx_raw"] * p["gy_raw"]).sum()
        tr = jxx + jyy
        coherence = float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / tr) if tr > 1e-9 else 0.0
        var = float(p["L"].var())
        keep = float(p["Ls"].var() / var) if var > 1e-9 else 1.0
        fine = p["fine"]
        detail = float(1.4826 * np.median(np.abs(fine - np.median(fine)))) if fine.size else 0.0
        L = self.planes["L"][y0:y1, x0:x1]
        separable = _separable(L, inner) if pick is inner else _separable_sampled(L, inner, p["L"], ys, xs)
        return {"gradient": grad, "coherence": coherence, "keep": keep, "separable": separable, "detail": detail}

    def grain(self, mask: np.ndarray) -> tuple[float, float]:
        """(oriented energy, coherence) of the fine scale's gradients `GRAIN_MARGIN` px inside the region: a
        grain (wood, brushed metal) has one dominant direction at a low amplitude; noise has none, and a slow
        shading is not in the fine scale."""
        y0, y1, x0, x1 = self._box(mask, 1)
        k = 2 * GRAIN_MARGIN + 1
        inner = cv2.erode(np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8), np.ones((k, k), np.uint8),
                          borderType=cv2.BORDER_REPLICATE) > 0
        n = int(np.count_nonzero(inner))
        if n < 64:
            return 0.0, 0.0
        fine = self.planes["fine"][y0:y1, x0:x1]
        gx, gy = cv2.Sobel(fine, cv2.CV_32F, 1, 0, ksize=3) / 8.0, cv2.Sobel(fine, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        pick = _sample(inner, self.shape, (y0, y1, x0, x1))
        gx, gy = gx[pick].astype(np.float64), gy[pick].astype(np.float64)
        jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
        tr = jxx + jyy
        if tr <= 1e-9:
            return 0.0, 0.0
        aniso = float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2))
        return float(np.sqrt(aniso / len(gx))), aniso / float(tr)

    def texture(self, mask: np.ndarray) -> str:
        m = self.texture_measures(mask)
        if m["gradient"] < SMOOTH_GRADIENT and m["detail"] < SMOOTH_DETAIL:
            return "smooth"
        if m["coherence"] > STRIPE_COHERENCE or m["separable"] > STRIPE_SEPARABLE:
            return "striped"
        if m["keep"] < GRANULAR_KEEP:
            return "granular"
        return "textured"


def colour_name(image: np.ndarray, mask: np.ndarray) -> str:
    """Name of the median Lab colour of the masked pixels (`ImageMeasures.colour`)."""
    return ImageMeasures(image).colour(mask)


def texture_measures(image: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """`ImageMeasures.texture_measures` of one region."""
    return ImageMeasures(image).texture_measures(mask)


def texture_name(image: np.ndarray, mask: np.ndarray) -> str:
    """`ImageMeasures.texture` of one region."""
    return ImageMeasures(image).texture(mask)


def _inner(mask: np.ndarray, px: int = 2) -> np.ndarray:
    """The mask eroded by `px` pixels (so object edges do not count as texture), or the mask if that empties."""
    er = cv2.erode(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8), borderType=cv2.BORDER_REPLICATE)
    er = er > 0
    return er if er.sum() >= 16 else mask


def _separable(L: np.ndarray, mask: np.ndarray) -> float:
    """Share of the L variance explained by row means + column means (1 for axis-aligned stripes or plaid,
    ~0 for a checkerboard or noise)."""
    ys, xs = np.nonzero(mask)
    if len(xs) < 16:
        return 0.0
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    v, m = L[y0:y1, x0:x1].astype(np.float64), mask[y0:y1, x0:x1]
    mu = v[m].mean()
    d = np.where(m, v - mu, 0.0)
    rows = d.sum(1) / np.maximum(m.sum(1), 1)
    cols = d.sum(0) / np.maximum(m.sum(0), 1)
    resid = (d - rows[:, None] - cols[None, :])[m]
    total = (d[m] ** 2).mean()
    return float(1.0 - (resid**2).mean() / total) if total > 1e-9 else 0.0


def _separable_sampled(L: np.ndarray, mask: np.ndarray, values: np.ndarray, ys: np.ndarray, xs: np.ndarray
                       ) -> float:
    """`_separable` of a large region: the mean, row and column means from all its pixels, the variances
    from a subset of them (`values` of `L` at rows `ys`, columns `xs`)."""
    rows_n, cols_n = np.count_nonzero(mask, axis=1), np.count_nonzero(mask, axis=0)
    v = np.where(mask, L, np.float32(0))
    row_sum, col_sum = v.sum(1, dtype=np.float64), v.sum(0, dtype=np.float64)
    mu = row_sum.sum() / max(int(rows_n.sum()), 1)
    rows = (row_sum - rows_n * mu) / np.maximum(rows_n, 1)
    cols = (col_sum - cols_n * mu) / np.maximum(cols_n, 1)
    d = values.astype(np.float64) - mu
    total = (d**2).mean()
    resid = d - rows[ys] - cols[xs]
    return float(1.0 - (resid**2).mean() / total) if total > 1e-9 else 0.0


def shape_measures(mask: np.ndarray) -> dict[str, float]:
    """circularity, aspect (long/short side of the min-area rectangle) and rectangularity of the outer contour
    (traced inside the mask's bounding box plus one pixel, in the image's coordinates)."""
    m8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    x, y, w, h = cv2.boundingRect(m8)
    x0, y0 = max(0, x - 1), max(0, y - 1)
    roi = np.ascontiguousarray(m8[y0: y + h + 1, x0: x + w + 1])
    contours, _ = cv2.findContours(roi, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x0, y0))
    if not contours:
        return {"circularity": 0.0, "aspect": 1.0, "rectangularity": 0.0}
    c = max(contours, key=cv2.contourArea)
    area = float(cv2.contourArea(c))
    perim = float(cv2.arcLength(c, True))
    (_, _), (rw, rh), _ = cv2.minAreaRect(c)
    rw, rh = max(rw, 1.0), max(rh, 1.0)
    return {"circularity": 4 * np.pi * area / perim**2 if perim > 0 else 0.0,
            "aspect": max(rw, rh) / min(rw, rh), "rectangularity": area / (rw * rh)}


def shape_name(mask: np.ndarray) -> str:
    m = shape_measures(mask)
    if m["aspect"] >= 2.5:
        return "elongated"
    if m["rectangularity"] >= 0.85:
        return "rectangular"
    if m["circularity"] >= 0.75 and m["aspect"] < 1.35:
        return "circular"
    return "irregular"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(noun: str, n: int) -> str:
    """English plural of the last word for n != 1 ("round part" -> "round parts", "brush" -> "brushes")."""
    if n == 1:
        return noun
    if noun.endswith(("s", "x", "sh", "ch", "z")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def join_words(words: list[str]) -> str:
    words = [w for w in words if w]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def size_word(area_of_foreground: float) -> str:
    """small / medium / large relative to the foreground."""
    if area_of_foreground < 0.02:
        return "small"
    if area_of_foreground < 0.1:
        return "medium"
    return "large"


@dataclass
class _Part:
    region: Region
    colour: str
    texture: str
    shape: str


def _group_name(obj: str, first: _Part, main: bool, one_group: bool, one_part: bool, textured: bool) -> str:
    """A group's name before de-duplication: the surface of a textured class, the object itself (its only
    part), the object's body (the main group of one part), else "<colour> <shape noun>"."""
    if textured:
        return f"{obj} surface"
    if main and one_group and one_part:
        return obj
    if main and one_part:
        return f"{obj} body"
    return f"{first.colour} {SHAPE_NOUNS[first.shape]}"


def _component(name: str, group: list[_Part], img: ImageMeasures, textured: bool) -> ComponentView:
    """The component of a group of parts of one colour and shape: its count, where the parts lie (up to three
    grid words), their direction (one, else "mixed"), texture, area, and a sentence that names none of it
    twice (an adjective already in the name is left out)."""
    first, n = group[0], len(group)
    union = np.any([p.region.mask for p in group], axis=0)
    locations = list(dict.fromkeys(p.region.location for p in group))
    location = join_words(locations[:3])
    directions = list(dict.fromkeys(p.region.orientation for p in group))
    direction = directions[0] if len(directions) == 1 else "mixed"
    texture = first.texture if n == 1 else img.texture(union)
    area = float(sum(p.region.area for p in group))
    noun = plural(name, n)
    name_words = set(name.split())
    adjs = [texture]
    if first.colour not in name:
        adjs.append(first.colour)
    if not (name_words & set(SHAPE_NOUNS[first.shape].split())) or first.shape == "irregular":
        adjs.append(first.shape)
    phrase = " ".join([*adjs, noun])
    article = number_word(n) if n > 1 else indefinite(phrase)
    where = "filling the image" if textured else f"at the {location}"
    sentence = f"{article} {phrase} {where}"
    if direction not in ("none", "mixed") and not textured:
        sentence += f", {direction}"
    return ComponentView(name, n, location, first.colour, texture, first.shape, direction, round(area, 6), sentence)


class AttributeCaptioner:
    """Offline captioner from image measurements (see the module docstring for every rule)."""

    name = "attributes"
    model = "opencv"
    revision = ATTRIBUTES_VERSION
    prompt_version = ""
    runs_beside_crop = True  # pure CPU work on the pixels: the build runs it in its crop workers

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return [CaptionResult(self.fields(r), self.provenance()) for r in requests]

    def propose_defects(self, object_name: str, image: np.ndarray) -> list[str] | None:
        return None

    def provenance(self, status: str = "ok") -> Provenance:
        return Provenance(self.name, self.model, self.revision, self.prompt_version, status)

    def fields(self, req: CaptionRequest) -> LevelFields:
        """The level fields of one request."""
        regs, obj = req.regions, req.object_name
        img = ImageMeasures(req.image)  # Lab and the texture planes once for all regions of the image
        parts = [_Part(r, img.colour(r.mask), img.texture(r.mask), shape_name(r.mask)) for r in regs.components]
        background = self._background(img, regs)
        groups: dict[tuple[str, str], list[int]] = {}
        for i, p in enumerate(parts):
            groups.setdefault((p.colour, p.shape), []).append(i)
        main_key = (parts[0].colour, parts[0].shape) if parts else None
        components: list[ComponentView] = []
        region_names = [""] * len(parts)
        used: set[str] = set()
        for key, idx in groups.items():
            name = _group_name(obj, parts[idx[0]], key == main_key, len(groups) == 1, len(idx) == 1, regs.textured)
            base, k = name, 2
            while name in used:
                name, k = f"{base} {k}", k + 1
            used.add(name)
            for i in idx:
                region_names[i] = name
            components.append(_component(name, [parts[i] for i in idx], img, regs.textured))
        relation = self._relation(obj, components, parts, region_names, regs)
        fg = ForegroundView(count=sum(c.count for c in components), relation=relation)
        listing = join_words([c.sentence.split(" at the ")[0].split(" filling")[0] for c in components])
        if regs.textured:
            caption = f"a {obj} surface: {listing}, filling the whole image"
        else:
            caption = f"{a(obj)} made of {listing}, on {a(background + ' background')}"
        defect = self._defect(req, img) if req.is_anomalous else None
        return LevelFields(ImageView(obj, background), fg, components, caption, defect, region_names)

    def _background(self, img: ImageMeasures, regs: ImageRegions) -> str:
        if regs.textured or regs.background.empty:
            return "none"
        colour = img.colour(regs.background.mask)
        tex = img.texture(regs.background.mask)
        if tex == "smooth":
            energy, coherence = img.grain(regs.background.mask)
            if energy >= GRAIN_ENERGY and coherence >= GRAIN_COHERENCE:
                tex = "striped"
        return f"plain {colour}" if tex == "smooth" else f"{tex} {colour}"

    def _relation(self, obj: str, comps: list[ComponentView], parts: list[_Part], names: list[str],
                  regs: ImageRegions) -> str:
        if regs.textured:
            return f"one continuous {comps[0].texture if comps else ''} {obj} surface".replace("  ", " ")
        if len(parts) <= 1:
            return f"a single {comps[0].name if comps else obj} in the {regs.foreground.location or 'center'}"
        main = parts[0].region
        out = []
        for comp in comps[: 4]:
            if comp.name == names[0]:
                continue
            boxes = np.array([parts[i].region.box for i, n in enumerate(names) if n == comp.name])
            union_box = (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())
            rel = _relative(union_box, main.box)
            verb = "is" if comp.count == 1 else "are"
            out.append(f"the {plural(comp.name, comp.count)} {verb} {rel} the {names[0]}")
        return "; ".join(out) if out else f"{number_word(len(parts))} {plural(names[0], len(parts))} side by side"

    def _defect(self, req: CaptionRequest, img: ImageMeasures) -> DefectView:
        kind = (req.defect_type or "defect").replace("_", " ")
        defects = req.regions.defects
        if not defects:
            return DefectView(kind, "", "", "", f"{indefinite(kind)} {kind} defect")
        union = np.any([d.mask for d in defects], axis=0)
        whole = Region.from_mask("defect", "defect", union, req.regions.size)
        fg_area = max(req.regions.foreground.area, 1e-9)
        size = size_word(whole.area / fg_area)
        colour = img.colour(union)
        count = f"{number_word(len(defects))} " if len(defects) > 1 else "a "
        noun = "areas" if len(defects) > 1 else "area"
        sentence = f"{count}{size} {colour} {kind} {noun} at the {whole.location} of the {req.object_name}"
        return DefectView(kind, whole.location, size, colour, sentence)


def _relative(a: tuple[int, ...], b: tuple[int, ...]) -> str:
    """Where box a lies relative to box b (both in original pixels): inside / above / below / left of / right of."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    if ax0 >= bx0 and ay0 >= by0 and ax1 <= bx1 and ay1 <= by1:
        return "inside"
    acx, acy = (ax0 + ax1) / 2, (ay0 + ay1) / 2
    bcx, bcy = (bx0 + bx1) / 2, (by0 + by1) / 2
    dx, dy = acx - bcx, acy - bcy
    if abs(dx) >= abs(dy):
        return "right of" if dx > 0 else "left of"
    return "below" if dy > 0 else "above"
