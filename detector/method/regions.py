"""MLSA region aggregation: which shot tokens belong to the background and to each component.

Run once before training, on the k shot images encoded at 4x the model grid (tiled). Each
high-resolution token is described by its cosine similarities to the normal text prototypes of the
background and of the components ("language-guided features"). DPC-KNN clusters those features in
two stages: 2 clusters (background vs. foreground; the cluster whose mean is most similar to the
background text is the background), then E + 1 clusters inside the foreground (E = number of
components). Each component prompt is matched to the foreground cluster it is most similar to.
Per-group token weights are 1 everywhere plus ``boost`` (1.5) on the group's cluster; the image group is
uniform. The weights are average-pooled back to the model grid.

Public behaviour kept (PromptAD/clusters.py): every non-centre point joins its NEAREST centre
(``assign="nearest"``; ``"parent"`` follows the DPC parent chain instead, ours), distances are divided
by sqrt(number of features) (``scale_distance``), and a component is matched to the cluster whose mean token
is most similar to its text (``match="token_mean"``; ``"feature_mean"``: the highest mean language-guided
feature, ours). Public behaviour NOT kept, because it is a bug (see
docs/FIDELITY.md): its KNN density counts the point itself and lowers k to 1 for 2 or 3 clusters, so the
density is a constant plus 1e-6 noise; the background and the component matches of shot 0 are applied to
every other shot although each shot is clustered on its own (cluster numbers do not correspond); the
background text is matched among the stage-2 clusters, into which the masked background tokens fall by a
distance tie. Here: k neighbours other than the point, per-shot matching, the stage-1 background.

Everything here is pure torch, deterministic (no random numbers, stable sorts, ties broken by index).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detector.method.choices import BACKGROUND, IMAGE


@dataclass
class RegionConfig:
    """Knobs of the region aggregation (paper values as defaults; the choices of ``assign`` and ``match`` are
    ``detector.method.choices.REGION_ASSIGN`` / ``REGION_MATCH``, checked once by ``TrainConfig``)."""

    knn: int = 5  # neighbours of the KNN density
    boost: float = 1.5  # added to the weight of tokens in a group's cluster
    scale: int = 4  # high-resolution grid = scale x model grid (4x4 tiles)
    assign: str = "nearest"  # "nearest" centre (public) or "parent" chain (ours)
    scale_distance: bool = True  # distances / sqrt(n features), as the public clustering
    match: str = "token_mean"  # component -> cluster: cos(text, mean token) (public) | "feature_mean" (ours)


def pairwise_sq_dist(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N, N) of the rows of x, clamped at 0, exact zero diagonal."""
    x = x.double()  # the features are low-dimensional: float64 keeps ties rare and results stable
    sq = (x * x).sum(1)
    d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    d = d.clamp_min(0.0)
    d.fill_diagonal_(0.0)
    return d


def dpc_knn(x: torch.Tensor, n_clusters: int, knn: int, assign: str, scale_distance: bool) -> torch.Tensor:
    """Density-peaks clustering with a KNN density; returns a label in [0, n_clusters) per row of x (N, F).

    rho_i = exp(-mean squared distance to the k nearest neighbours); points are ranked by density
    (ties by index); delta_i = distance to the nearest point ranked before i (the densest point gets
    the largest distance); the n_clusters points of highest rho * delta are the centres (the densest
    point always is one); every other point joins the cluster of its nearest higher-ranked point
    (``assign="parent"``) or its nearest centre (``"nearest"``, ties to the densest). ``scale_distance``
    divides the features by sqrt(F) first (distances / sqrt(F), as the public code). No defaults: the
    public ones are ``RegionConfig``'s, which every caller passes.
    Labels are numbered by the centres' density rank, so the densest cluster is 0.
    """
    n = x.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    n_clusters = max(1, min(int(n_clusters), n))
    if n_clusters == 1:
        return torch.zeros(n, dtype=torch.long)
    if scale_distance:
        x = x.double() / math.sqrt(x.shape[1])
    d2 = pairwise_sq_dist(x)
    k = max(1, min(knn, n - 1))
    # k nearest neighbours excluding the point itself: the k + 1 smallest of each row minus the zero diagonal
    # (only the values are used, so topk's order among equal values does not matter)
    nearest = torch.topk(d2, k + 1, dim=1, largest=False, sorted=True).values[:, 1 : k + 1]
    rho = torch.exp(-nearest.mean(1))
    order = torch.sort(-rho, stable=True).indices  # densest first, ties by index
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    higher = rank[None, :] < rank[:, None]  # higher[i, j]: j ranks before i
    masked = torch.where(higher, d2, torch.full_like(d2, math.inf))
    delta2, parent = masked.min(1)  # squared distance to the nearest higher-ranked point (first index on ties)
    top = order[0]
    delta2[top] = d2[top].max()
    delta = delta2.sqrt()
    parent[top] = top
    gamma = rho * delta
    gamma[top] = math.inf  # the densest point has no higher neighbour: it must be a centre
    # top n_clusters by gamma, ties by rank (stable sort over points listed in rank order)
    by_gamma = order[torch.sort(-gamma[order], stable=True).indices]
    centres = by_gamma[:n_clusters]
    centres = centres[torch.argsort(rank[centres])]  # number clusters by density rank
    if assign == "nearest":
        return torch.argmin(d2[centres], dim=0)  # (n_clusters, N): first (densest) centre on ties
    parent[centres] = centres
    # pointer jumping: follow the parent chain (always towards higher rank) up to a centre
    for _ in range(max(1, math.ceil(math.log2(n))) + 1):
        parent = parent[parent]
    cluster_of_centre = torch.full((n,), -1, dtype=torch.long)
    cluster_of_centre[centres] = torch.arange(n_clusters)
    labels = cluster_of_centre[parent]
    assert bool((labels >= 0).all()), "DPC-KNN: a point did not reach a centre"
    return labels


@dataclass
class RegionAssignment:
    """Result of the two-stage clustering for one shot, on the high-resolution grid."""

    background: torch.Tensor  # (H, W) bool, tokens in the background cluster
    foreground_labels: torch.Tensor  # (H, W) long: -1 background, else foreground cluster index
    component_cluster: list[int]  # per component, the matched foreground cluster (-1: whole foreground)


def language_guided_features(tokens: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every token (..., D) to every prototype (P, D): (..., P)."""
    t = F.normalize(tokens.float(), dim=-1)
    p = F.normalize(prototypes.float(), dim=-1)
    return t @ p.T


def assign_regions(features: torch.Tensor, n_components: int, config: RegionConfig | None = None,
                   tokens: torch.Tensor | None = None, texts: torch.Tensor | None = None) -> RegionAssignment:
    """Two-stage DPC-KNN on the language-guided features (H, W, 1 + E) of one shot.

    Feature 0 is the similarity to the background prototype, features 1..E to the components.
    Handles E = 0 (texture classes: background/foreground only) and foregrounds too small to split
    (fewer tokens than E + 1 clusters or than 2 neighbours): every component then gets the whole
    foreground (cluster -1). Components are matched to the cluster whose mean token (``tokens`` (H, W, D),
    normalised) is most similar to the component's normal text (``texts`` (E, D)), as the public code
    (``config.match="token_mean"``), or whose mean language-guided feature is highest (``"feature_mean"``;
    also the fallback without tokens).
    """
    config = config or RegionConfig()
    h, w, f = features.shape
    if f != 1 + n_components:
        raise ValueError(f"expected 1 + {n_components} language-guided features, got {f}")
    flat = features.reshape(h * w, f)
    stage1 = dpc_knn(flat, 2, config.knn, config.assign, config.scale_distance)
    # background = cluster whose mean similarity to the background text is highest (ties: cluster 0)
    means = torch.stack([flat[stage1 == c, 0].mean() if bool((stage1 == c).any()) else
                         torch.tensor(-math.inf, dtype=flat.dtype) for c in range(2)])
    bg_cluster = int(torch.argmax(means))
    background = stage1 == bg_cluster
    fg_idx = torch.nonzero(~background).squeeze(1)
    fg_labels = torch.full((h * w,), -1, dtype=torch.long)
    n_fg_clusters = n_components + 1
    if n_components == 0 or fg_idx.numel() < max(n_fg_clusters, 2) + 1:
        fg_labels[fg_idx] = 0
        matched = [-1] * n_components
    else:
        fg_feat = flat[fg_idx]
        labels = dpc_knn(fg_feat, n_fg_clusters, config.knn, config.assign, config.scale_distance)
        fg_labels[fg_idx] = labels
        # cluster mean similarity to each component text: (clusters, E); match component -> argmax cluster
        if config.match == "token_mean" and tokens is not None and texts is not None:
            tok = F.normalize(tokens.reshape(h * w, -1).double(), dim=-1)[fg_idx]
            centres = F.normalize(torch.stack([tok[labels == c].mean(0) for c in range(n_fg_clusters)]), dim=-1)
            sim = F.normalize(texts.double(), dim=-1) @ centres.T  # (E, clusters)
            matched = [int(i) for i in torch.argmax(sim, dim=1)]
        else:
            cluster_means = torch.stack([fg_feat[labels == c, 1:].mean(0) for c in range(n_fg_clusters)])
            matched = [int(i) for i in torch.argmax(cluster_means, dim=0)]
    return RegionAssignment(background=background.reshape(h, w), foreground_labels=fg_labels.reshape(h, w),
                            component_cluster=matched)


def group_weights_hr(assignment: RegionAssignment, group_names: list[str], boost: float = 1.5) -> torch.Tensor:
    """Per-group token weights (G, H, W) on the high-resolution grid for one shot.

    Group order follows ``group_names`` (the prompt module's region groups): "image" is uniform (1),
    "background" is 1 + boost on the background cluster, each other name is a component in order,
    1 + boost on its matched cluster (on the whole foreground when it has none).
    """
    h, w = assignment.background.shape
    comps = [g for g in group_names if g not in (IMAGE, BACKGROUND)]
    if len(comps) != len(assignment.component_cluster):
        raise ValueError(f"{len(comps)} component groups but {len(assignment.component_cluster)} matches")
    out = torch.ones(len(group_names), h, w)
    foreground = ~assignment.background
    ci = 0
    for gi, name in enumerate(group_names):
        if name == IMAGE:
            continue
        if name == BACKGROUND:
            region = assignment.background
        else:
            c = assignment.component_cluster[ci]
            ci += 1
            region = foreground if c < 0 else assignment.foreground_labels == c
        out[gi] += boost * region.float()
    return out


def pool_to_grid(weights_hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Average-pool (..., H, W) weights by ``scale`` x ``scale`` to the model grid (..., H/scale, W/scale)."""
    *lead, h, w = weights_hr.shape
    if h % scale or w % scale:
        raise ValueError(f"high-resolution grid {h}x{w} is not a multiple of {scale}")
    x = weights_hr.reshape(-1, 1, h, w)
    return F.avg_pool2d(x, scale).reshape(*lead, h // scale, w // scale)


def region_weights(hr_tokens: torch.Tensor, hr_grid: tuple[int, int], normal_prototypes: torch.Tensor,
                   group_names: list[str], config: RegionConfig | None = None
                   ) -> tuple[torch.Tensor, list[RegionAssignment]]:
    """Region weights (B, G, h, w) on the model grid from high-resolution shot tokens (B, H*W, D).

    ``normal_prototypes`` (G, D) are the normal text prototypes in ``group_names`` order; the
    background and component rows give the language-guided features. Also returns the assignments.
    """
    config = config or RegionConfig()
    if BACKGROUND not in group_names:
        raise ValueError(f"region groups {group_names} lack '{BACKGROUND}'")
    comp_idx = [i for i, g in enumerate(group_names) if g not in (IMAGE, BACKGROUND)]
    # clustering runs on the CPU in float64 whatever the training device: cheap, and the same result everywhere
    hr_tokens = hr_tokens.detach().float().cpu()
    guide = normal_prototypes.detach().float().cpu()[[group_names.index(BACKGROUND), *comp_idx]]
    hh, ww = hr_grid
    out, assignments = [], []
    for tokens in hr_tokens:
        feats = language_guided_features(tokens, guide).reshape(hh, ww, -1)
        a = assign_regions(feats, len(comp_idx), config, tokens.reshape(hh, ww, -1), guide[1:])
        assignments.append(a)
        out.append(pool_to_grid(group_weights_hr(a, group_names, config.boost), config.scale))
    return torch.stack(out), assignments


def uniform_weights(n_shots: int, n_groups: int, grid: tuple[int, int]) -> torch.Tensor:
    """All-ones weights (B, G, h, w): the class-name-only (PromptAD) baseline has no regions."""
    return torch.ones(n_shots, n_groups, *grid)
