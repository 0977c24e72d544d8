"""The fast analysis (crop stage 1 and the attribute captioner's measurements) gives what the plain formulas
give. Each reference below states the rule as written before the speed work (whole-image arrays, pixel
lists, float64 norms, one Lab conversion per use); the fast code must agree exactly on every image of the
demo set, where no region exceeds `SAMPLE_PIXELS`, and by name on large textures, where it samples."""
import cv2
import numpy as np
import pytest

from fsad_data import load_mask, load_rgb
from fsad_data.grid import location_word
from mfsc_builder import crop
from mfsc_builder.captioners import attributes as A
from mfsc_builder.crop import CropConfig, Region


# ----------------------------------------------------------------------------------------------- references
def ref_lab(image):
    return cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def ref_orientation(mask):
    ys, xs = np.nonzero(mask)
    if len(xs) < 3:
        return "none"
    evals, evecs = np.linalg.eigh(np.cov(np.stack([xs * 1.0, ys * 1.0])))
    if (np.inf if evals[0] <= 1e-9 else np.sqrt(evals[1] / evals[0])) < 1.6:
        return "none"
    angle = np.degrees(np.arctan2(abs(evecs[1, 1]), abs(evecs[0, 1])))
    return "horizontal" if angle < 22.5 else "vertical" if angle > 67.5 else "diagonal"


def ref_geometry(mask):
    """(box, area, location, orientation) of a full-size mask from its pixel list."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if len(xs) == 0:
        return (0, 0, 0, 0), 0.0, "", "none"
    return ((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), len(xs) / (h * w),
            location_word(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, w, h), ref_orientation(mask))


def ref_fill_holes(mask):
    _n, lab = cv2.connectedComponents((~mask).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return mask | ((lab > 0) & ~np.isin(lab, border))


def ref_foreground(image, config, ignore):
    """The border colour model on the whole image (no box), float64 norms, np.isin hole filling."""
    h, w = image.shape[:2]
    full = np.ones((h, w), bool)
    lab = ref_lab(image)
    border = crop._border_pixels(lab, config.border)
    ref = np.median(border, axis=0)
    if float(np.median(np.linalg.norm(border - ref, axis=1))) > config.border_spread:
        return full, True
    dist = np.linalg.norm(lab - ref, axis=2)
    if ignore is not None and ignore.any():
        dist[ignore] = 0.0
    scaled = np.clip(dist * (255.0 / max(float(dist.max()), 1e-6)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = dist > max(float(otsu) * max(float(dist.max()), 1e-6) / 255.0, config.min_delta)
    k = max(1, round(min(h, w) / 100))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    m8 = cv2.morphologyEx(cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    mask = ref_fill_holes(m8 > 0)
    touch = float(crop._border_pixels(mask[..., None].astype(np.float32), config.border).mean())
    if ignore is not None and ignore.any() and mask.any() and touch <= config.border_touch:
        mask = ref_fill_holes(mask | ignore)
    frac = float(mask.mean())
    touch = float(crop._border_pixels(mask[..., None].astype(np.float32), config.border).mean())
    if frac < config.min_foreground or frac > config.max_foreground:
        return full, True
    if touch > config.border_touch and not crop._enters_from_border(mask, touch, config):
        return full, True
    return mask, False


def ref_components(labels, bridge, config):
    """Connected parts of each colour label over the whole image, one full-image comparison per part."""
    h, w = labels.shape
    min_px = max(1, int(np.ceil(config.min_component * h * w)))
    k = max(1, round(min(h, w) / 150))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    parts = []
    for c in range(int(labels.max()) + 1):
        m = cv2.morphologyEx((labels == c).astype(np.uint8), cv2.MORPH_OPEN, kernel)
        joined = m if bridge is None else (m > 0) | crop._touching(bridge, m > 0)
        n, cc = cv2.connectedComponents(np.asarray(joined, np.uint8), connectivity=8)
        for i in range(1, n):
            part = (cc == i) & (m > 0)
            if part.sum() >= min_px:
                parts.append(part)

    def first(m):
        ys, xs = np.nonzero(m)
        return int(ys[0]), int(xs[0])

    parts.sort(key=lambda m: (-int(m.sum()), *first(m)))
    return parts[: config.max_components]


def ref_colour(image, mask):
    pix = ref_lab(image)[mask]
    return A.colour_name_lab(np.median(pix, axis=0)) if len(pix) else ""


def ref_texture_measures(image, mask):
    """Every statistic over every pixel of the eroded region, on whole-image planes."""
    L = ref_lab(image)[..., 0].astype(np.float32)
    er = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
    inner = er if er.sum() >= 16 else mask
    Ls = cv2.GaussianBlur(L, (0, 0), 1.0)
    gx, gy = cv2.Sobel(Ls, cv2.CV_32F, 1, 0, ksize=3) / 8.0, cv2.Sobel(Ls, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    rx, ry = cv2.Sobel(L, cv2.CV_32F, 1, 0, ksize=3) / 8.0, cv2.Sobel(L, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    jxx, jyy, jxy = (rx**2)[inner].sum(), (ry**2)[inner].sum(), (rx * ry)[inner].sum()
    var = float(L[inner].var())
    fine = (L - cv2.GaussianBlur(L, (0, 0), 3.0))[inner]
    ys, xs = np.nonzero(inner)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    v, m = L[box].astype(np.float64), inner[box]
    d = np.where(m, v - v[m].mean(), 0.0)
    resid = (d - (d.sum(1) / np.maximum(m.sum(1), 1))[:, None] - (d.sum(0) / np.maximum(m.sum(0), 1))[None])[m]
    total = (d[m] ** 2).mean()
    return {"gradient": float(np.hypot(gx, gy)[inner].mean()),
            "coherence": float(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy)) if jxx + jyy > 1e-9 else 0.0,
            "keep": float(Ls[inner].var() / var) if var > 1e-9 else 1.0,
            "separable": float(1.0 - (resid**2).mean() / total) if total > 1e-9 and len(xs) >= 16 else 0.0,
            "detail": float(1.4826 * np.median(np.abs(fine - np.median(fine))))}


def ref_texture(m):
    if m["gradient"] < A.SMOOTH_GRADIENT and m["detail"] < A.SMOOTH_DETAIL:
        return "smooth"
    if m["coherence"] > A.STRIPE_COHERENCE or m["separable"] > A.STRIPE_SEPARABLE:
        return "striped"
    return "granular" if m["keep"] < A.GRANULAR_KEEP else "textured"


# ----------------------------------------------------------------------------------------------- the demo set
def _demo_images(root):
    out = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        refs = [load_rgb(p) for p in sorted((root / cls / "train" / "good").glob("*.png"))][: crop.SURFACE_VOTERS]
        textured = crop.class_is_textured(cls, refs)
        for path in sorted((root / cls).glob("*/*/*.png")):
            if path.parts[-3] == "ground_truth":
                continue
            img = load_rgb(path)
            mpath = root / cls / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
            out.append((img, load_mask(mpath, size=img.shape[1::-1]) if mpath.exists() else None, textured))
    return out


def test_crop_and_measures_equal_the_plain_formulas_on_every_demo_image(demo_root):
    images = _demo_images(demo_root)
    assert len(images) == 60 and max(i.shape[0] * i.shape[1] for i, _m, _t in images) <= A.SAMPLE_PIXELS
    kinds = set()
    for img, mask, textured in images:
        config = CropConfig(textured=textured)
        regs = crop.crop_regions(img, mask, config)
        # stage 1: the foreground, the colour labels and the components
        fg, is_textured = (np.ones(img.shape[:2], bool), True) if textured else ref_foreground(img, config, mask)
        assert is_textured == regs.textured and np.array_equal(fg, regs.foreground.mask)
        if not is_textured:
            normal = fg & ~mask if mask is not None else fg
            labels, centres = crop.colour_clusters(img, normal, config)
            dist = np.linalg.norm(ref_lab(img)[normal][:, None, :] - centres[None].astype(np.float64), axis=2)
            assert np.array_equal(labels[normal], dist.argmin(axis=1))
            want = ref_components(labels, mask, config)
            assert [np.array_equal(a, b.mask) for a, b in zip(want, regs.components, strict=True)] == \
                [True] * len(want)
        for r in regs.all():  # geometry of every region from its pixel list
            assert (r.box, r.area, r.location, r.orientation) == ref_geometry(r.mask), r.name
        # stage 2: colour and texture of every region the captioner reads
        measures = A.ImageMeasures(img)
        masks = [r.mask for r in (*regs.components, *regs.defects)]
        if not regs.background.empty:
            masks.append(regs.background.mask)
        for m in masks:
            assert measures.colour(m) == ref_colour(img, m)
            got, want = measures.texture_measures(m), ref_texture_measures(img, m)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
            assert measures.texture(m) == ref_texture(want)
            kinds.add(ref_texture(want))
    assert len(kinds) >= 2  # the demo set exercises more than one texture rule


# ----------------------------------------------------------------------------------------------- large regions
def _large_textures(size=1024):
    """Whole-image textures of inspection size: flat, shaded, fine stripes of several periods (a stride
    subsample would alias on them), a weave, noise, a checkerboard. Two-colour patterns are not half and half:
    the median colour of an exact 50/50 mix is a coin toss for any subset (and for the full set a grey between)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:size, :size]
    grey = lambda a: np.clip(a, 0, 255).astype(np.uint8)[..., None].repeat(3, 2)
    return {
        "smooth": grey(120 + 0 * xx),
        "shaded": grey(80 + xx / size * 90 + rng.normal(0, 0.3, xx.shape)),
        "stripes 4": grey(np.where(xx % 4 < 3, 200, 60)),
        "stripes 16": grey(np.where(yy % 16 < 10, 190, 70) + rng.normal(0, 3, xx.shape)),
        "diagonal 10": grey(np.where((xx + yy) % 10 < 6, 190, 70)),
        "weave": grey(128 + 60 * np.sin(xx / 2.0) * np.sin(yy / 2.0) + rng.normal(0, 4, xx.shape)),
        "noise": grey(rng.integers(40, 220, xx.shape)),
        "checker": grey(np.where(((xx // 32) + (yy // 32)) % 3 == 0, 210, 50)),
    }


@pytest.mark.parametrize("name", list(_large_textures(8)))
def test_sampled_statistics_of_a_large_region_give_the_same_names(name):
    img = _large_textures()[name]
    mask = np.zeros(img.shape[:2], bool)
    mask[40:-30, 20:-50] = True  # about 0.9 M pixels: sampled
    measures = A.ImageMeasures(img)
    want = ref_texture_measures(img, mask)
    assert measures.texture(mask) == ref_texture(want)
    assert measures.colour(mask) == ref_colour(img, mask)
    got = measures.texture_measures(mask)
    for key in want:  # estimates from 65536 of 0.9 M pixels: close, not equal (a MAD of a spiky fine scale: 8%)
        assert got[key] == pytest.approx(want[key], rel=0.1, abs=0.02), key
    assert got == measures.texture_measures(mask)  # the same pixels every time


def test_nearest_centre_is_the_float64_argmin_even_on_near_ties():
    """Pixels on, and a rounding away from, the bisector of two centres are decided as float64 norms decide."""
    rng = np.random.default_rng(5)
    centres = np.array([[40.0, 10.0, -5.0], [60.0, -12.5, 20.0], [90.3, 83.1, 80.7], [10.0, -81.0, -78.0]])
    mid = (centres[0] + centres[1]) / 2
    step = np.cross(centres[1] - centres[0], [0.0, 0.0, 1.0])
    on = (mid + rng.normal(0, 5, (4000, 1)) * step / np.linalg.norm(step)).astype(np.float32)
    nudged = on + rng.choice([-1, 0, 1], on.shape) * np.spacing(on)
    pix = np.concatenate([on, nudged, rng.normal(45, 30, (20000, 3)).astype(np.float32)])
    got = crop.nearest_centre([np.ascontiguousarray(pix[:, c]) for c in range(3)], centres)
    want = np.linalg.norm(pix[:, None, :].astype(np.float64) - centres[None], axis=2).argmin(axis=1)
    assert np.array_equal(got, want)
    assert len(set(got[:8000].tolist())) >= 2  # the near-tie pixels really are split between centres


def test_region_geometry_from_moments_equals_the_pixel_list():
    rng = np.random.default_rng(7)
    for _ in range(20):
        m = np.zeros((300, 420), np.uint8)
        cv2.ellipse(m, (int(rng.integers(20, 400)), int(rng.integers(20, 280))),
                    (int(rng.integers(1, 120)), int(rng.integers(1, 40))), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        m = (m > 0) | (rng.random(m.shape) < 0.001)
        r = Region.from_mask("component", "c", m)
        assert (r.box, r.area, r.location, r.orientation) == ref_geometry(m)
    assert Region.from_mask("component", "c", np.zeros((5, 5), bool)).empty
