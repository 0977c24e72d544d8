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
  `reach` px over foreground that no part holds (a glare stripe too thin to be a part leaves such a gap).

Merging repeats until nothing merges (a glare band merged into one piece then joins the piece beyond it);
a merged part's colour is the median of all its pixels. A white label that lies on a part is merged like a
highlight: the colours cannot tell them apart (a known limit).
"""
from __future__ import annotations

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


def _piece(mask: np.ndarray, lab: np.ndarray) -> _Piece:
    idx = np.flatnonzero(mask)
    sub = idx[:: max(1, len(idx) // SAMPLE)]
    ys, xs = np.divmod(sub, mask.shape[1])
    coords = np.stack([xs, ys], axis=1).astype(np.float64)
    colour = np.median(lab.reshape(-1, 3)[sub], axis=0)
    axis = np.array([1.0, 0.0])
    if len(coords) >= 3:
        cov = np.cov(coords.T)
        if np.isfinite(cov).all():
            axis = np.linalg.eigh(cov)[1][:, 1]
    return _Piece(mask, len(idx), colour, axis, coords)


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


def _contact(small: np.ndarray, big: np.ndarray, free: np.ndarray | None, reach: int) -> float:
    """Share of the outline of `small` on `big`. `small` first spreads `reach` px into `free` (foreground in
    no part: the rims and glare slivers that were too small to be parts), so two pieces of a handle on either
    side of a dropped glare stripe touch; it never spreads over the background."""
    kernel = np.ones((3, 3), np.uint8)
    if free is not None and reach > 0:
        small = small | ((cv2.dilate(small.view(np.uint8), kernel, iterations=reach) > 0) & free)
    ring = (cv2.dilate(small.view(np.uint8), kernel, iterations=2) > 0) & ~small
    n = int(np.count_nonzero(ring))
    return float(np.count_nonzero(ring & big)) / n if n else 0.0


def merge_shading(masks: list[np.ndarray], lab: np.ndarray, foreground: np.ndarray | None = None,
                  reach: int = 2) -> list[np.ndarray]:
    """The part masks (bool, one shape, `lab` the Lab image of that shape) with the parts of one lit surface
    merged; largest first. `foreground` (same shape) lets a part reach `reach` px across foreground pixels
    that no part holds."""
    pieces = sorted((_piece(m, lab) for m in masks), key=lambda p: -p.n)
    free = None
    if foreground is not None:
        free = foreground & ~np.any(masks, axis=0)
    merged = True
    while merged and len(pieces) > 1:
        merged = False
        for i in range(len(pieces)):
            for j in range(i + 1, len(pieces)):
                big, small = pieces[i], pieces[j]
                kind = shading_kind(big.lab, small.lab)
                if kind is None or not lies_on(small, big, kind):
                    continue
                if _contact(small.mask, big.mask, free, reach) < CONTACT:
                    continue
                pieces[i] = _piece(big.mask | small.mask, lab)
                del pieces[j]
                merged = True
                break
            if merged:
                break
        pieces.sort(key=lambda p: -p.n)
    return [p.mask for p in pieces]
