"""MLSA region weights of a class with several components, against a re-statement of the public code.

The public path (docs/FIDELITY.md rows 13-19) is re-stated here from its description, with plain tensor
algebra and without the detector's helpers: `model.py` `language_guided_progressive_region_aggregation`
(cosine features, stage 1 with `CTM(sample_ratio=2, k=8)`, the background cluster chosen by its mean token's
similarity to the background text, stage 2 with `CTM(sample_ratio=E + 1, k=5)` over every token with the
background masked), `clusters.py` `language_guided_cluster_dpc_knn` (CTM's k rule, k nearest including the
point, 1e-6 noise, score = density x distance to the nearest denser point, nearest centre, centres merged to
themselves), `merge_tokens`' `idx_token` (a masked token takes the label of the token its index points to) and
`seg` `fit` (each text matched to the stage-2 cluster whose mean token is most similar, on shot 0; 1 + 1.5 on
the matched cluster; 4x4 average pool).

Three of the public choices are named bugs (#14 density, #16 shot 0 for every shot, #17 background). The
re-statement can undo each one; with all three undone it must equal ``regions.region_weights`` exactly, for
three components and two shots whose layouts differ. So the named rows are the only differences on this path,
and each of them changes the weights of this scene (none is vacuous).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detector.method.regions import RegionConfig, region_weights

GRID = 16  # high-resolution grid of the scene (the model grid is GRID / 4)
DIM = 16
COMPONENTS = ("wire_a", "wire_b", "wire_c")  # the public cable shape: three components
NAMES = ["image", "background", *COMPONENTS]
FIXES = frozenset({14, 16, 17})


def _ctm_k(k: int, clusters: int) -> int:
    """CTM.forward: k is lowered when it exceeds the number of clusters."""
    return min(3, max(clusters // 2, 1)) if k > clusters else k


def _public_cluster(x, n_clusters, k, mask, gen, fixed_density):
    """language_guided_cluster_dpc_knn on (B, N, C); fixed_density (#14 undone): k neighbours other than the
    point and no noise (the detector's k = RegionConfig.knn)."""
    b, n, c = x.shape
    d = torch.cdist(x.double(), x.double()) / math.sqrt(c)
    keep = None
    if mask is not None:
        keep = mask > 0
        d = d * keep[:, None, :] + (d.max() + 1) * (~keep[:, None, :])
    if fixed_density:
        near = torch.topk(d, RegionConfig().knn + 1, dim=-1, largest=False).values[..., 1:]
        density = torch.exp(-(near ** 2).mean(-1))
    else:
        near = torch.topk(d, k, dim=-1, largest=False).values
        density = torch.exp(-(near ** 2).mean(-1))
        density = density + torch.rand(density.shape, generator=gen, dtype=density.dtype) * 1e-6
    if keep is not None:
        density = density * keep
    denser = (density[:, None, :] > density[:, :, None]).double()  # [b, i, j]: j is denser than i
    dmax = d.flatten(1).max(-1).values[:, None, None]
    dist = (d * denser + dmax * (1 - denser)).min(-1).values
    centres = torch.topk(dist * density, n_clusters, dim=-1).indices  # (B, S)
    to_centres = torch.gather(d, 1, centres[..., None].expand(-1, -1, n))  # (B, S, N)
    labels = to_centres.argmin(1)
    labels.scatter_(1, centres, torch.arange(n_clusters).expand(b, -1))
    return labels


def public_region_weights(tokens, texts, gen, fixes=frozenset()):
    """Per-text weights (E + 1, B, GRID/4, GRID/4), rows in the public order: components, then background.

    tokens (B, N, D) unit rows (the 960 px tiles), texts (E + 1, D) normal text features, background last.
    ``fixes`` holds the FIDELITY rows undone (14, 16, 17)."""
    b, n, _ = tokens.shape
    e = texts.shape[0] - 1
    feats = tokens @ texts.T / (tokens.norm(dim=-1, keepdim=True) * texts.norm(dim=-1)[None, None, :])
    first = _public_cluster(feats, 2, _ctm_k(8, 2), None, gen, 14 in fixes)
    # background = the stage-1 cluster whose mean token is closer to the background text; 0 = background after
    result = first.clone()
    fg_index = torch.arange(n).repeat(b, 1)
    for i in range(b):
        ref = first[i] if 16 in fixes else first[0]
        cs0 = tokens[i, ref == 0].mean(0) @ texts[-1]
        cs1 = tokens[i, ref == 1].mean(0) @ texts[-1]
        if cs0 < cs1:
            result[i, ref == 0] = 1
            result[i, ref == 1] = 0
        fg_index[i, (result[i] if 16 in fixes else result[0]) == 0] = 0
    second = _public_cluster(feats, e + 1, _ctm_k(5, e + 1), result, gen, 14 in fixes)
    labels = torch.gather(second, 1, fg_index)  # merge_tokens: idx_token_new = idx_cluster[idx_token]
    foreground = result > 0
    out = torch.ones(e + 1, b, n, dtype=torch.float64)
    for i in range(b):
        ref = i if 16 in fixes else 0
        means = []
        for c in range(e + 1):
            member = labels[ref] == c
            if 17 in fixes:
                member = member & foreground[ref]
            means.append(tokens[ref, member].mean(0))
        sim = F.normalize(texts.double(), dim=-1) @ F.normalize(torch.stack(means).double(), dim=-1).T
        match = sim.argmax(-1)
        for t in range(e + 1):
            if 17 in fixes and t == e:
                out[t, i, ~foreground[i]] += 1.5
            else:
                out[t, i, (labels[i] == match[t]) & (foreground[i] if 17 in fixes else True)] += 1.5
    side = math.isqrt(n)
    return F.avg_pool2d(out.reshape((e + 1) * b, 1, side, side), 4).reshape(e + 1, b, side // 4, side // 4)


def _scene(seed: int):
    """Two shots of a three-part object on a background, parts laid out differently in each shot; tokens are
    noisy unit vectors around one direction per region, texts lie near their region's direction."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(5, DIM, generator=g), dim=-1)  # background, three wires, a bare part
    layouts = []
    for shift in (0, 3):
        region = torch.zeros(GRID, GRID, dtype=torch.long)
        y0, x0 = 3 + shift // 3, 3 + shift
        region[y0:y0 + 9, x0:x0 + 10] = 4
        region[y0:y0 + 3, x0:x0 + 10] = 1
        region[y0 + 3:y0 + 6, x0:x0 + 5] = 2
        region[y0 + 6:y0 + 9, x0 + 5:x0 + 10] = 3
        layouts.append(region.reshape(-1))
    tokens = torch.stack([F.normalize(centres[r] + 0.15 * torch.randn(GRID * GRID, DIM, generator=g), dim=-1)
                          for r in layouts])
    texts = F.normalize(centres[:4] + 0.1 * torch.randn(4, DIM, generator=g), dim=-1)  # background, wires
    return tokens, texts


def _ours(tokens, texts):
    protos = torch.cat([F.normalize(texts.mean(0, keepdim=True), dim=-1), texts])  # image, background, wires
    weights, _ = region_weights(tokens, (GRID, GRID), protos, NAMES, RegionConfig())
    # ours (B, G, h, w) in NAMES order -> the public order (components, background) x shots
    return torch.stack([weights[:, NAMES.index(g)] for g in (*COMPONENTS, "background")]).double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_weights_equal_the_public_path_with_the_named_bugs_undone(seed):
    tokens, texts = _scene(seed)
    public_texts = torch.cat([texts[1:], texts[:1]])  # the public list: components, then background
    ours = _ours(tokens, texts)
    assert ours.shape == (4, 2, GRID // 4, GRID // 4)
    fixed = public_region_weights(tokens, public_texts, torch.Generator().manual_seed(seed), FIXES)
    torch.testing.assert_close(ours, fixed, rtol=0, atol=1e-9)
    # the scene is not degenerate: every component region is a strict part of the foreground
    for row in range(3):
        boosted = ours[row] > 1
        assert bool(boosted.any()) and not bool(boosted.all())


@pytest.mark.parametrize("row", sorted(FIXES))
def test_each_named_public_bug_changes_the_weights_of_this_scene(row):
    """Undoing all but one named bug leaves a different result: each FIDELITY row is a real difference."""
    tokens, texts = _scene(0)
    public_texts = torch.cat([texts[1:], texts[:1]])
    ours = _ours(tokens, texts)
    differs = []
    for seed in range(4):  # the public noise decides the clustering when the density is constant (#14)
        other = public_region_weights(tokens, public_texts, torch.Generator().manual_seed(seed), FIXES - {row})
        differs.append(not torch.allclose(ours, other, rtol=0, atol=1e-9))
    assert any(differs)
