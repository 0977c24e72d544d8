"""Shading is not a part: merging the colour parts of one surface that light split (stage 1, after the colours).

The colour clustering of `crop.component_masks` sees every tone of a surface: a polished bar's highlight
band and dark reflection, a plastic handle's glare stripe and its shaded side become colour parts of their
own and cut the surface into pieces. A labeller names the surface once. Two touching parts are one surface
when their colours are shading of each other and their shapes say so:

- colour (`shading_kind`): the same colour (pieces cut apart by a band); a highlight, the lighter one a
  whiter version of the other (nearly white, `HIGHLIGHT_L`, or a paler tint of the same hue); a shade, the
  darker one keeps `SHADE_RATIO` of the lighter one's lightness and both are grey or both of one hue (a dark
  reflection on metal, the far side of a handle). A black hole in a grey nut or a navy strip beside a blue
  block is too dark to be a shade; a red handle and a yellow button are no shading at all.
- shape (`lies_on`): a highlight lies on the surface (its extent along the larger part's main axis inside
  that part's); a band (same colour or shade) runs along the surface (the two extents mostly coincide).
  A thin shaft that leaves its handle, or a blade beyond its handle, sticks out and stays a part.
- contact: the smaller part's outline touches the other on `CONTACT` of it, after the part spread up to
  `reach` px over foreground that no part holds and that connects to it (a glare stripe too thin to be a
  part leaves such a gap); it never spreads over the background or jumps a gap.
- not the background: a piece of the background's colour (within `SAME_COLOUR`) that touches the pixels
  outside the object is never a highlight. On a light background the foreground's closing fills a narrow
  gap between two separate parts with background; read as a highlight lying along them, it would join them.
  `crop.component_masks` takes such background out of the parts and of the foreground before merging.

Merging repeats until nothing merges (a glare band merged into one piece then joins the piece beyond it);
a merged part's colour is the median of all its pixels. Known limits: a white label that lies on a part is
merged like a highlight (the colours cannot tell them apart); on a background of the highlight's colour
(glare on a white background) only a highlight inside the part's outline is one, and a highlight band that
runs out to the outline cuts the part like a gap between two parts (which it cannot be told from).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import cv2
import numpy as np

ACHROMATIC = 12.0    # Lab chroma below this: grey, white, black, metal
HIGHLIGHT_L = 85.0   # an uncoloured highlight is nearly white (L of 0..100)
HIGHLIGHT_STEP = 8.0  # and at least this much lighter than its surface
SHADE_RATIO = 0.55   # a shade keeps at least this share of the surface's lightness
SAME_HUE = 25.0      # degrees of Lab hue within which two tints are one colour
SAME_COLOUR = 18.0   # Lab distance of one colour (crop.CropConfig.merge_delta)
CONTACT = 0.2        # share of the smaller part's grown outline on the other part
INSIDE = 0.8         # share of a highlight's extent inside the surface's extent
SPAN = 0.6           # overlap / union of the two extents of a band and its surface
SAMPLE = 4096        # pixels a part's colour and extent are read from


@dataclass
class _Piece:
    mask: np.ndarray
    n: int
    lab: np.ndarray     # median Lab
    axis: np.ndarray    # unit vector (x, y) of the main axis
    coords: np.ndarray  # (m, 2) x, y of a subsample of the pixels
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the mask
    key: int            # a serial number: which pairs were tried
    pale: bool          # the background's colour and touching it: no highlight (see merge_shading)


def _piece(mask: np.ndarray, lab: np.ndarray, key: int, background: tuple[np.ndarray, np.ndarray] | None,
           within: tuple[int, int, int, int] | None = None) -> _Piece:
    """A piece of `mask`, whose pixels all lie `within` (x0, y0, x1, y1) when given."""
    x0, y0, x1, y1 = within or (0, 0, mask.shape[1], mask.shape[0])
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8))
    x, y = x + x0, y + y0
    idx = np.flatnonzero(mask[y: y + h, x: x + w])  # row-major in the box as in the image: the same sample
    sub = idx[:: max(1, len(idx) // SAMPLE)]
    ys, xs = np.divmod(sub, max(w, 1))
    ys, xs = ys + y, xs + x
    coords = np.stack([xs, ys], axis=1).astype(np.float64)
    colour = np.median(lab[ys, xs], axis=0)
    axis = np.array([1.0, 0.0])
    if len(coords) >= 3:
        cov = np.cov(coords.T)
        if np.isfinite(cov).all():
            axis = np.linalg.eigh(cov)[1][:, 1]
    box = (x, y, x + w, y + h)
    pale = False
    if background is not None and float(np.linalg.norm(colour - background[0])) < SAME_COLOUR:
        rows, cols = _grown(box, 1, mask.shape)
        grown = cv2.dilate(np.ascontiguousarray(mask[rows, cols]).view(np.uint8), np.ones((3, 3), np.uint8)) > 0
        pale = bool((grown & background[1][rows, cols]).any())
    return _Piece(mask, len(idx), colour, axis, coords, box, key, pale)


def _grown(box: tuple[int, int, int, int], margin: int, shape: tuple[int, ...]) -> tuple[slice, slice]:
    """(rows, columns) slices of `box` grown by `margin` px, inside an image of `shape`."""
    return (slice(max(0, box[1] - margin), min(shape[0], box[3] + margin)),
            slice(max(0, box[0] - margin), min(shape[1], box[2] + margin)))


def _chroma_hue(lab: np.ndarray) -> tuple[float, float]:
    return float(np.hypot(lab[1], lab[2])), float(np.degrees(np.arctan2(lab[2], lab[1])))


def shading_kind(p: np.ndarray, q: np.ndarray) -> str | None:
    """"same", "highlight" or "shade" when the Lab colours `p` and `q` can be one surface under light, else None."""
    if float(np.linalg.norm(p - q)) < SAME_COLOUR:
        return "same"
    light, dark = (p, q) if p[0] >= q[0] else (q, p)
    (cl, hl), (cd, hd) = _chroma_hue(light), _chroma_hue(dark)
    hue_diff = abs((hl - hd + 180.0) % 360.0 - 180.0)
    one_hue = cl > ACHROMATIC and cd > ACHROMATIC and hue_diff <= SAME_HUE
    whiter = (cl <= ACHROMATIC and light[0] >= HIGHLIGHT_L) or (one_hue and cl < cd)
    if light[0] - dark[0] >= HIGHLIGHT_STEP and cl <= max(ACHROMATIC, cd) and whiter:
        return "highlight"
    both_grey = cl <= ACHROMATIC and cd <= ACHROMATIC
    if dark[0] >= SHADE_RATIO * light[0] and (both_grey or one_hue):
        return "shade"
    return None


def _extent(coords: np.ndarray, axis: np.ndarray) -> tuple[float, float]:
    t = coords @ axis
    return float(t.min()), float(t.max()) + 1.0


def lies_on(small: _Piece, big: _Piece, kind: str) -> bool:
    """A highlight inside the surface's extent along its main axis; a band whose extent mostly coincides."""
    a0, a1 = _extent(big.coords, big.axis)
    b0, b1 = _extent(small.coords, big.axis)
    overlap = max(0.0, min(a1, b1) - max(a0, b0))
    if kind == "highlight":
        return overlap >= INSIDE * (b1 - b0)
    return overlap >= SPAN * (max(a1, b1) - min(a0, b0))


def _contact(small: _Piece, big: _Piece, free: np.ndarray | None, reach: int) -> float:
    """Share of the outline of `small` on `big`. `small` first spreads up to `reach` px into `free` (foreground
    in no part: the rims and glare slivers that were too small to be parts) along free pixels connected to it,
    so two pieces of a handle on either side of a dropped glare stripe touch; it never spreads over the
    background, nor jumps a gap. Worked inside the small piece's box grown by `reach` + 2, where all of it
    lies: one (2 `reach` + 1) square dilation, the same as `reach` 3 x 3 ones."""
    rows, cols = _grown(small.box, reach + 2, small.mask.shape)
    s8 = np.ascontiguousarray(small.mask[rows, cols], np.uint8)
    if free is not None and reach > 0:
        near = (cv2.dilate(s8, np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)) > 0) & free[rows, cols]
        if near.any():
            _n, cc = cv2.connectedComponents(s8 | near.view(np.uint8), connectivity=8)
            hit = np.unique(cc[s8 > 0])
            s8 = s8 | (near & np.isin(cc, hit[hit > 0])).view(np.uint8)
    ring = (cv2.dilate(s8, np.ones((5, 5), np.uint8)) > 0) & (s8 == 0)
    n = int(np.count_nonzero(ring))
    return float(np.count_nonzero(ring & big.mask[rows, cols])) / n if n else 0.0


def _joins(big: _Piece, small: _Piece, free: np.ndarray | None, reach: int) -> bool:
    """The two pieces are one lit surface: near enough to touch, shading colours, shapes that say so, in
    contact; the cheap tests first. A pale piece (see merge_shading) is never a highlight."""
    margin = reach + 2
    if big.box[0] - margin >= small.box[2] or small.box[0] - margin >= big.box[2] or \
            big.box[1] - margin >= small.box[3] or small.box[1] - margin >= big.box[3]:
        return False
    kind = shading_kind(big.lab, small.lab)
    if kind is None or not lies_on(small, big, kind):
        return False
    if kind == "highlight" and (big if big.lab[0] >= small.lab[0] else small).pale:
        return False
    return _contact(small, big, free, reach) >= CONTACT


def merge_shading(masks: list[np.ndarray], lab: np.ndarray, foreground: np.ndarray | None = None,
                  reach: int = 2, background: tuple[np.ndarray, np.ndarray] | None = None) -> list[np.ndarray]:
    """The part masks (bool, one shape, `lab` the Lab image of that shape) with the parts of one lit surface
    merged; largest first. `foreground` (same shape) lets a part reach `reach` px across foreground pixels
    that no part holds. `background` (its Lab colour, the mask of the pixels outside the object): a piece
    within `SAME_COLOUR` of the background's colour that touches those pixels is pale and never a highlight:
    on a light background the foreground's closing fills a narrow gap between two parts with background,
    which would otherwise read as a highlight lying along them.

    Each pair is tried once: a merged piece is tried against every other piece at once (a glare band merged
    into one piece then joins the piece beyond it), and a pair that did not merge is not tried again while
    neither piece changes."""
    keys = itertools.count()
    pieces = sorted((_piece(m, lab, next(keys), background) for m in masks), key=lambda p: -p.n)
    free = None
    if foreground is not None:
        free = foreground.copy()
        for p in pieces:
            rows, cols = _grown(p.box, 0, free.shape)
            free[rows, cols] &= ~p.mask[rows, cols]
    tried: set[tuple[int, int]] = set()
    todo = [p.key for p in pieces]  # pieces to try against all others, the first one next
    while todo and len(pieces) > 1:
        key = todo.pop(0)
        i = next((i for i, p in enumerate(pieces) if p.key == key), None)
        if i is None:
            continue
        for j in range(len(pieces)):
            pair = (min(key, pieces[j].key), max(key, pieces[j].key))
            if j == i or pair in tried:
                continue
            tried.add(pair)
            big, small = (pieces[i], pieces[j]) if i < j else (pieces[j], pieces[i])
            if _joins(big, small, free, reach):
                within = (min(big.box[0], small.box[0]), min(big.box[1], small.box[1]),
                          max(big.box[2], small.box[2]), max(big.box[3], small.box[3]))
                merged = _piece(big.mask | small.mask, lab, next(keys), background, within)
                pieces = sorted([p for p in pieces if p is not big and p is not small] + [merged],
                                key=lambda p: -p.n)
                todo.insert(0, merged.key)
                break
    return [p.mask for p in pieces]
