"""Named defects: every detected region of an anomaly map, said in the caption's words.

The fine-grained captions give the detector what a heat map lacks: the model matches every patch token to a
caption group (the image, the background, a component), and every group has handcrafted abnormal texts that
name defect states. So each detected region gets a name.

For one image, the regions are the connected components (8-connectivity, ``metrics.components``, as the
ground truth of AUPRO) of the fused map at or above a threshold, those covering at least ``min_area`` of the
image. Per region:
- box (x0, y0, x1, y1; x1, y1 exclusive, as in the caption records) in the original image's pixels, the area
  as a fraction of the image, the peak and the mean score;
- the component it lies on: every region pixel votes, its score as weight, for the group its patch token was
  matched to by the model (``FineGrainedAD.match_groups``, the matching the textual map uses); the group with
  the most weight wins and its share of the weight is the vote share. The "image" group reads "object" and
  the background "background": no component won;
- the location word of its centroid on the 3 x 3 grid (``fsad_data.grid``, the captions' convention);
- the most likely defect state: per state of the winning group (the states its handcrafted abnormal texts
  name, ``state_of_text``), the score-weighted mean cosine of the region's tokens to the state's text
  prototype; softmax with the model's tau; a state whose probability is less than ``min_margin`` above the
  second best is "unknown";
- one sentence from these fields: "scratch on the cap, bottom left, 2.1% of the image, score 0.93".

Evaluation (``naming_rows`` / ``naming_summary``): each ground-truth defect region (8-connected component of
the mask) takes as truth the component whose caption region (box of the test image's caption record)
covers most of its pixels (ties: the smaller component; none: "object" inside the foreground box, else
"background"); the prediction is the component named for the predicted region that overlaps it most; a
missed region counts as wrong. The state is right when it equals the defect folder's name (only meaningful
where the record's states come from the data set, ``defect_vocab == "dataset"``).

Pure functions over arrays and records; ``detector.eval.postprocess`` applies them to a model's predictions
(``detector predict`` and the API), ``NamingCollector`` to an evaluation's.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from detector.errors import DetectorError
from detector.eval.metrics import components
from detector.method.choices import BACKGROUND, IMAGE
from fsad_data.grid import location_word

OBJECT = "object"  # what a region on the "image" group is called: no component won
UNKNOWN = "unknown"
DEFAULT_MIN_AREA = 0.001  # regions below 0.1 % of the image are dropped
DEFAULT_MIN_MARGIN = 0.1  # state probability this far above the second best, else "unknown"


@dataclass(frozen=True)
class NamingConfig:
    """How regions are cut and named: the map threshold, the smallest region, the state margin."""

    threshold: float
    min_area: float = DEFAULT_MIN_AREA
    min_margin: float = DEFAULT_MIN_MARGIN

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.threshold)):
            raise DetectorError(f"defect threshold {self.threshold!r} is not a finite number")
        if not 0.0 <= float(self.min_area) < 1.0:
            raise DetectorError(f"--min-area {self.min_area!r}: give a fraction of the image in [0, 1)")
        if not 0.0 <= float(self.min_margin) <= 1.0:
            raise DetectorError(f"--min-margin {self.min_margin!r}: give a probability margin in [0, 1]")


# ---------------------------------------------------------------------------------------------- states
def normalise_state(text: str) -> str:
    """A defect state or folder name in the records' form: "color_spot" / "A color-spot" -> "color spot"."""
    words = re.sub(r"[_\-]+", " ", str(text)).split()
    if words and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words).lower()


def state_of_text(text: str, normal_texts: Sequence[str], states: Sequence[str]) -> str | None:
    """The defect state an abnormal text names: the longest state found as whole words in the text and in
    none of the group's normal texts; None for texts made otherwise (a swapped location or colour)."""
    low = " ".join(str(text).lower().split())
    normals = [" ".join(str(t).lower().split()) for t in normal_texts]
    best: str | None = None
    for state in states:
        s = normalise_state(state)
        if not s:
            continue
        pat = re.compile(r"\b" + re.escape(s) + r"\b")
        if pat.search(low) and not any(pat.search(n) for n in normals) and (best is None or len(s) > len(best)):
            best = s
    return best


@dataclass(frozen=True)
class StateBank:
    """Per region group (the model's order) the defect states its abnormal texts name, and one unit text
    prototype per state; all groups' prototypes stacked, group g's rows at ``offsets[g]:offsets[g + 1]``."""

    names: list[str]
    states: list[list[str]]
    prototypes: np.ndarray  # (S, D) float32, unit rows
    offsets: list[int]

    def rows(self, g: int) -> slice:
        return slice(self.offsets[g], self.offsets[g + 1])


def state_bank(names: Sequence[str], texts: Mapping[str, tuple[Sequence[str], Sequence[str], np.ndarray]],
               states: Sequence[str]) -> StateBank:
    """Build the bank from each group's (normal texts, abnormal texts, abnormal features (A, D)): a state's
    prototype is the normalised mean of the features of the texts naming it (``state_of_text``)."""
    per_group: list[list[str]] = []
    protos: list[np.ndarray] = []
    offsets = [0]
    dim = None
    for name in names:
        normal, abnormal, feats = texts.get(name, ((), (), np.zeros((0, 0), np.float32)))
        feats = np.asarray(feats, np.float32)
        if len(abnormal) != len(feats):
            raise DetectorError(f"group {name!r}: {len(abnormal)} abnormal texts but {len(feats)} features")
        by_state: dict[str, list[np.ndarray]] = {}
        for text, f in zip(abnormal, feats):
            s = state_of_text(text, normal, states)
            if s is not None:
                by_state.setdefault(s, []).append(f)
        group_states = list(by_state)
        for s in group_states:
            v = np.mean(by_state[s], axis=0)
            protos.append(v / max(float(np.linalg.norm(v)), 1e-12))
            dim = v.shape[0]
        per_group.append(group_states)
        offsets.append(offsets[-1] + len(group_states))
    stacked = np.stack(protos).astype(np.float32) if protos else np.zeros((0, dim or 1), np.float32)
    return StateBank(list(names), per_group, stacked, offsets)


# ---------------------------------------------------------------------------------------------- tokens
@dataclass
class TokenEvidence:
    """What naming needs of one image's patch tokens: the matched group per token (h, w) and each token's
    cosine to every state prototype of the bank (h, w, S). Small: a few tens of KB per image in float16."""

    groups: np.ndarray
    sims: np.ndarray


def token_evidence(tokens: np.ndarray, groups: np.ndarray, bank: StateBank, dtype: Any = np.float16
                   ) -> TokenEvidence:
    """Evidence from unit patch tokens (h, w, D) and their matched groups (h, w)."""
    tokens = np.asarray(tokens, np.float32)
    groups = np.asarray(groups)
    if tokens.shape[:2] != groups.shape:
        raise DetectorError(f"tokens {tokens.shape[:2]} and groups {groups.shape} cover different grids")
    sims = tokens @ bank.prototypes.T if bank.prototypes.shape[0] else np.zeros((*groups.shape, 0), np.float32)
    return TokenEvidence(groups.astype(np.int16), sims.astype(dtype))


def pixel_tokens(shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Per map pixel (R_h, R_w) the flat index of the patch token whose cell holds the pixel's centre."""
    rh, rw = shape
    h, w = grid
    ty = np.minimum(((np.arange(rh) + 0.5) * h / rh).astype(np.int64), h - 1)
    tx = np.minimum(((np.arange(rw) + 0.5) * w / rw).astype(np.int64), w - 1)
    return ty[:, None] * w + tx[None, :]


# ---------------------------------------------------------------------------------------------- regions
@dataclass
class Defect:
    """One named defect region (JSON fields; ``mask`` is the region at the map's resolution)."""

    label: int  # 1-based: the region's value in the image's label map
    box: list[int]  # x0, y0, x1, y1 in original pixels, x1/y1 exclusive
    area: float  # fraction of the image
    peak: float
    mean: float
    component: str  # a component name, "object" or "background"
    group: str  # the winning region group ("image", "background" or the component)
    vote_share: float
    location: str
    state: str  # a defect state or "unknown"
    state_probability: float
    state_margin: float
    candidates: list[list[Any]]  # [state, probability], best first (at most 3)
    sentence: str
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("mask")
        return d


def component_of(group: str) -> str:
    """The name a region gets for its winning group: the group's own (a component, "background"), or "object"
    for the image group (no component won)."""
    return OBJECT if group == IMAGE else group


def sentence(state: str, component: str, location: str, area: float, peak: float, object_name: str) -> str:
    """One line in the caption's words: "scratch on the cap, bottom left, 2.1% of the image, score 0.93"."""
    what = "unknown defect" if state == UNKNOWN else state
    where = object_name if component == OBJECT and object_name else component
    return f"{what} on the {where}, {location}, {100 * area:.1f}% of the image, score {peak:.2f}"


def name_regions(amap: np.ndarray, evidence: TokenEvidence, bank: StateBank, config: NamingConfig, *,
                 image_size: tuple[int, int] | None = None, object_name: str = "", tau: float = 100.0
                 ) -> tuple[list[Defect], np.ndarray]:
    """The named defects of one map (R_h, R_w) and its label map (int32, 0 = no defect, region k = k).

    ``image_size`` (H, W) is the original image's: boxes and centroids are scaled to it (default: the map's)."""
    amap = np.asarray(amap, np.float32)
    rh, rw = amap.shape
    ih, iw = image_size or (rh, rw)
    sy, sx = ih / rh, iw / rw
    lab, sizes = components(amap >= float(config.threshold))
    grid = evidence.groups.shape
    token_of = pixel_tokens((rh, rw), grid).ravel()
    flat_lab = lab.ravel()
    flat_map = amap.ravel()
    groups = evidence.groups.reshape(-1).astype(np.int64)
    sims = evidence.sims.reshape(grid[0] * grid[1], -1).astype(np.float32)
    n_groups = len(bank.names)
    min_px = config.min_area * rh * rw
    out_lab = np.zeros((rh, rw), np.int32)
    defects: list[Defect] = []
    for k in range(1, len(sizes)):
        if sizes[k] < min_px or sizes[k] == 0:
            continue
        where = np.flatnonzero(flat_lab == k)
        scores = flat_map[where]
        weights = np.clip(scores, 0.0, None).astype(np.float64)
        if weights.sum() <= 0:
            weights = np.ones_like(weights)
        token_w = np.bincount(token_of[where], weights=weights, minlength=sims.shape[0])
        votes = np.bincount(groups, weights=token_w, minlength=n_groups)
        g = int(np.argmax(votes))
        share = float(votes[g] / votes.sum())
        group = bank.names[g] if g < n_groups else str(g)
        state, prob, margin, cands = _state(token_w, sims, bank, g, tau, config.min_margin)
        ys, xs = np.divmod(where, rw)
        box = [math.floor(xs.min() * sx), math.floor(ys.min() * sy),
               min(iw, math.ceil((xs.max() + 1) * sx)), min(ih, math.ceil((ys.max() + 1) * sy))]
        loc = location_word((float(xs.mean()) + 0.5) * sx, (float(ys.mean()) + 0.5) * sy, iw, ih)
        area = float(sizes[k]) / (rh * rw)
        comp = component_of(group)
        label = len(defects) + 1
        mask = lab == k
        out_lab[mask] = label
        defects.append(Defect(label, box, area, float(scores.max()), float(scores.mean()), comp, group, share,
                              loc, state, prob, margin, cands,
                              sentence(state, comp, loc, area, float(scores.max()), object_name), mask))
    return defects, out_lab


def _state(token_w: np.ndarray, sims: np.ndarray, bank: StateBank, g: int, tau: float, min_margin: float
           ) -> tuple[str, float, float, list[list[Any]]]:
    """(state, probability, margin over the second best, top candidates) of a region on group g."""
    if g >= len(bank.names) or not bank.states[g]:
        return UNKNOWN, 0.0, 0.0, []
    cols = sims[:, bank.rows(g)]
    score = (token_w[:, None] * cols).sum(0) / max(float(token_w.sum()), 1e-12)
    z = tau * (score - score.max())
    p = np.exp(z) / np.exp(z).sum()
    order = np.argsort(-p, kind="stable")
    best = int(order[0])
    second = float(p[order[1]]) if len(order) > 1 else 0.0
    margin = float(p[best]) - second
    states = bank.states[g]
    cands = [[states[i], float(p[i])] for i in order[:3]]
    name = states[best] if margin >= min_margin else UNKNOWN
    return name, float(p[best]), margin, cands


def flag_threshold(amap: np.ndarray, min_area: float = DEFAULT_MIN_AREA) -> float:
    """The highest threshold at which the map has a defect region (``name_regions``' regions): the image is
    flagged for every threshold at or below it. Exact: the largest region only grows as the threshold falls,
    so a binary search over the map's distinct values finds it (about 17 labellings at 256 px)."""
    amap = np.asarray(amap, np.float32)
    need = max(1.0, float(min_area) * amap.size)
    values = np.unique(amap)  # ascending

    def has_region(t: float) -> bool:
        _, sizes = components(amap >= t)
        return len(sizes) > 1 and float(sizes[1:].max()) >= need

    if not has_region(float(values[0])):  # even the whole map is too small (min_area near 1)
        return float("-inf")
    lo, hi = 0, len(values) - 1  # has_region(values[lo]) holds; find the largest such index
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if has_region(float(values[mid])):
            lo = mid
        else:
            hi = mid - 1
    return float(values[lo])


# ---------------------------------------------------------------------------------------------- model
def model_state_bank(model: Any) -> StateBank:
    """The bank of a trained FineGrainedAD: its region groups' abnormal texts against the record's states."""
    record = (getattr(model, "meta", None) or {}).get("record") or {}
    states = list(record.get("defect_states") or [])
    texts = model.abnormal_text_features()
    return state_bank(list(texts), texts, states)


# ---------------------------------------------------------------------------------------------- evaluation
NAMING_SIZE = 128  # evaluation names regions on maps of at most this size (memory per image ~100 KB)


@dataclass
class NamingResult:
    """What ``NamingCollector.finish`` gives: per image its named defects and flag threshold, one row per
    ground-truth region, and the summary (naming_accuracy, state_accuracy, counts)."""

    defects: list[list[Defect]]
    flags: np.ndarray
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


class NamingCollector:
    """Keeps, per evaluated image, what naming needs once the threshold is known (evaluation picks it from
    all maps): the map and ground truth at ``NAMING_SIZE`` px at most, and the token evidence. Bounded:
    about 100 KB per image, whatever the evaluation resolution."""

    def __init__(self, bank: StateBank, size: int = NAMING_SIZE) -> None:
        self.bank = bank
        self.size = int(size)
        self.items: dict[int, tuple[np.ndarray, np.ndarray, TokenEvidence, tuple[int, int]]] = {}

    def _small(self, a: np.ndarray) -> np.ndarray:

        a = np.asarray(a, np.float32)
        if max(a.shape) <= self.size:
            return a
        return cv2.resize(a, (self.size, self.size), interpolation=cv2.INTER_AREA)

    def add(self, index: int, amap: np.ndarray, tokens: np.ndarray, groups: np.ndarray, gt_mask: np.ndarray,
            image_size: tuple[int, int]) -> None:
        """One image: its map (R, R), unit tokens (h, w, D), matched groups (h, w), ground truth (R, R)."""
        self.items[index] = (self._small(amap), self._small(gt_mask) > 0.5, token_evidence(tokens, groups, self.bank),
                             (int(image_size[0]), int(image_size[1])))

    def maps(self) -> dict[int, np.ndarray]:
        """The kept (small) maps by image index: the report's thumbnails draw their outlines from them."""
        return {i: v[0] for i, v in self.items.items()}

    def ground_truth(self, index: int) -> np.ndarray:
        """The kept (small) ground-truth mask of an image."""
        return self.items[index][1]

    def flags(self, min_area: float = DEFAULT_MIN_AREA) -> np.ndarray:
        """Per image index the highest threshold with a defect region (``flag_threshold``); -inf if none kept."""
        n = max(self.items, default=-1) + 1
        out = np.full(n, -np.inf)
        for i, v in self.items.items():
            out[i] = flag_threshold(v[0], min_area)
        return out

    def finish(self, config: NamingConfig, *, object_name: str = "", tau: float = 100.0,
               defect_types: Sequence[str] = (), caption_regions: Mapping[int, Sequence[Mapping[str, Any]]] | None
               = None, states_from_dataset: bool = False) -> NamingResult:
        """Name every kept image at ``config.threshold`` and score the naming on the images ``caption_regions``
        (by image index) holds caption regions for (None: no naming accuracy, NaN)."""
        n = max(self.items, default=-1) + 1
        named: list[list[Defect]] = [[] for _ in range(n)]
        rows: list[dict[str, Any]] = []
        known = [g for g in self.bank.names if g not in (IMAGE, BACKGROUND)]
        for i, (amap, gt, ev, size) in sorted(self.items.items()):
            named[i], labels = name_regions(amap, ev, self.bank, config, image_size=size, object_name=object_name,
                                            tau=tau)
            if caption_regions is not None and i in caption_regions and gt.any():
                for r in naming_rows(gt, named[i], labels, caption_regions[i], size,
                                     defect_types[i] if i < len(defect_types) else "", known):
                    rows.append({"image": i, **r})
        summary = naming_summary(rows, states_from_dataset) if caption_regions is not None else {
            "naming_accuracy": float("nan"), "state_accuracy": float("nan"), "n_defect_regions": 0,
            "n_missed_regions": 0}
        return NamingResult(named, self.flags(config.min_area), rows, summary)


def truth_component(region: np.ndarray, caption_regions: Sequence[Mapping[str, Any]], image_size: tuple[int, int],
                    known: Sequence[str] | None = None) -> str:
    """The true component of a ground-truth region (bool, map resolution): the caption component box that
    holds most of its pixels (ties: the smaller component); else "object" inside the foreground box, else
    "background". ``known``: only these component names count (those the model has groups for)."""
    rh, rw = region.shape
    ih, iw = image_size
    ys, xs = np.nonzero(region)
    cx, cy = (xs + 0.5) * iw / rw, (ys + 0.5) * ih / rh  # pixel centres in original pixels

    def inside(box: Sequence[int]) -> int:
        x0, y0, x1, y1 = box
        return int(((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)).sum())

    best, best_key = None, None
    for r in caption_regions:
        if r.get("kind") != "component" or (known is not None and r.get("name") not in known):
            continue
        n = inside(r["box"])
        key = (n, -float(r.get("area") or 0.0))
        if n > 0 and (best_key is None or key > best_key):
            best, best_key = str(r["name"]), key
    if best is not None:
        return best
    fg = [r for r in caption_regions if r.get("kind") == "foreground"]
    return OBJECT if any(inside(r["box"]) for r in fg) else BACKGROUND


def naming_rows(gt_mask: np.ndarray, defects: Sequence[Defect], labels: np.ndarray,
                caption_regions: Sequence[Mapping[str, Any]], image_size: tuple[int, int], defect_type: str,
                known: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per ground-truth region of an image: its true component and state, what was named for the
    predicted region overlapping it most (None: missed), and whether each is right."""
    gt_lab, sizes = components(np.asarray(gt_mask, bool))
    by_label = {d.label: d for d in defects}
    truth_state = normalise_state(defect_type)
    rows = []
    for k in range(1, len(sizes)):
        region = gt_lab == k
        hit = np.bincount(labels[region].ravel(), minlength=len(defects) + 1)
        hit[0] = 0
        d = by_label.get(int(np.argmax(hit))) if hit.max() > 0 else None
        truth = truth_component(region, caption_regions, image_size, known)
        rows.append({
            "region": k, "pixels": int(sizes[k]), "truth": truth, "named": None if d is None else d.component,
            "correct": d is not None and d.component == truth, "truth_state": truth_state,
            "named_state": None if d is None else d.state,
            "state_correct": d is not None and normalise_state(d.state) == truth_state,
        })
    return rows


def naming_summary(rows: Sequence[Mapping[str, Any]], states_from_dataset: bool) -> dict[str, Any]:
    """naming_accuracy (and state_accuracy where the states are the data set's folder names) over the
    ground-truth regions of a split; NaN when there is none."""
    n = len(rows)
    acc = sum(bool(r["correct"]) for r in rows) / n if n else float("nan")
    state = (sum(bool(r["state_correct"]) for r in rows) / n if n else float("nan")) if states_from_dataset \
        else float("nan")
    return {"naming_accuracy": acc, "state_accuracy": state, "n_defect_regions": n,
            "n_missed_regions": sum(r["named"] is None for r in rows)}
