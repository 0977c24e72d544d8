"""MLSA region aggregation on constructed tensors: clustering, matching, weights, determinism."""
import torch

from detector.method.regions import (
    RegionAssignment,
    RegionConfig,
    assign_regions,
    dpc_knn,
    group_weights_hr,
    pool_to_grid,
    region_weights,
)


def _blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(40, 3, generator=g) * 0.05
    b = torch.randn(25, 3, generator=g) * 0.05 + torch.tensor([1.0, 0.0, 0.5])
    x = torch.cat([a, b])
    truth = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(25, dtype=torch.long)])
    perm = torch.randperm(65, generator=g)
    return x[perm], truth[perm]


def test_dpc_knn_separates_two_blobs():
    x, truth = _blobs()
    labels = dpc_knn(x, 2, knn=5, assign="parent", scale_distance=False)
    # a perfect split up to label names; the bigger (denser) blob gets cluster 0 here
    assert torch.equal(labels, truth) or torch.equal(labels, 1 - truth)


def test_dpc_knn_small_cases():
    assert dpc_knn(torch.zeros(0, 2), 2, 5, "parent", False).numel() == 0
    assert dpc_knn(torch.randn(5, 2), 1, 5, "parent", False).tolist() == [0] * 5
    # more clusters than points: every point its own cluster
    labels = dpc_knn(torch.tensor([[0.0], [1.0], [5.0]]), 10, 5, "parent", False)
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_dpc_knn_hand_example():
    # 1-D: a tight triple at 0 and a pair at 10. Densest point is the middle of the triple (index 1).
    x = torch.tensor([[-0.1], [0.0], [0.1], [10.0], [10.2]])
    labels = dpc_knn(x, 2, knn=1, assign="parent", scale_distance=False)
    assert labels.tolist() == [0, 0, 0, 1, 1]


def _two_region_map(h: int = 16, w: int = 16, noise: float = 0.01) -> torch.Tensor:
    """Language-guided features (H, W, 3): background on the left half, two components on the right."""
    g = torch.Generator().manual_seed(1)
    f = torch.zeros(h, w, 3)
    f[:, : w // 2] = torch.tensor([0.9, 0.1, 0.1])  # background
    f[: h // 2, w // 2 :] = torch.tensor([0.1, 0.8, 0.2])  # component 0, top right
    f[h // 2 :, w // 2 : 3 * w // 4] = torch.tensor([0.1, 0.2, 0.8])  # component 1, bottom middle
    f[h // 2 :, 3 * w // 4 :] = torch.tensor([0.2, 0.4, 0.4])  # rest of the foreground
    return f + noise * torch.randn(h, w, 3, generator=g)


def test_assign_regions_background_and_matching():
    f = _two_region_map()
    a = assign_regions(f, n_components=2)
    bg = torch.zeros(16, 16, dtype=torch.bool)
    bg[:, :8] = True
    assert torch.equal(a.background, bg)
    assert bool((a.foreground_labels[bg] == -1).all())
    c0, c1 = a.component_cluster
    assert c0 != c1
    top_right = a.foreground_labels[:8, 8:]
    bottom_mid = a.foreground_labels[8:, 8:12]
    assert bool((top_right == c0).all())
    assert bool((bottom_mid == c1).all())
    rest = a.foreground_labels[8:, 12:]
    assert bool((rest != c0).all()) and bool((rest != c1).all())


def test_assign_regions_texture_class_and_tiny_foreground():
    f = _two_region_map()[..., :1]  # E = 0: background similarity only
    a = assign_regions(f, n_components=0)
    assert a.component_cluster == []
    assert int(a.background.sum()) == 128
    # tiny foreground: 2 tokens, 3 components -> each component gets the whole foreground
    g = torch.full((8, 8, 4), 0.1)
    g[..., 0] = 0.9
    g[0, 0] = torch.tensor([0.1, 0.9, 0.9, 0.9])
    g[0, 1] = torch.tensor([0.1, 0.9, 0.8, 0.9])
    a = assign_regions(g, n_components=3)
    assert int((~a.background).sum()) == 2
    assert a.component_cluster == [-1, -1, -1]
    w = group_weights_hr(a, ["image", "background", "a", "b", "c"], boost=1.5)
    assert w[2, 0, 0] == 2.5 and w[4, 0, 1] == 2.5 and w[3, 5, 5] == 1.0


def test_group_weights_values_and_pooling():
    bg = torch.zeros(8, 8, dtype=torch.bool)
    bg[:, :4] = True
    fg = torch.full((8, 8), -1, dtype=torch.long)
    fg[:4, 4:] = 0
    fg[4:, 4:] = 1
    a = RegionAssignment(background=bg, foreground_labels=fg, component_cluster=[1])
    w = group_weights_hr(a, ["image", "background", "handle"], boost=1.5)
    assert w.shape == (3, 8, 8)
    assert bool((w[0] == 1).all())
    assert bool((w[1][:, :4] == 2.5).all()) and bool((w[1][:, 4:] == 1).all())
    assert bool((w[2][4:, 4:] == 2.5).all()) and float(w[2].sum()) == 64 + 1.5 * 16
    pooled = pool_to_grid(w, 4)
    assert pooled.shape == (3, 2, 2)
    assert torch.allclose(pooled[1], torch.tensor([[2.5, 1.0], [2.5, 1.0]]))
    assert torch.allclose(pooled[2], torch.tensor([[1.0, 1.0], [1.0, 2.5]]))


def test_region_weights_from_tokens_deterministic():
    # tokens built so that their cosine similarity to prototype rows reproduces the two-region layout
    d = 8
    protos = torch.eye(d)[:4]  # image, background, comp a, comp b
    f = _two_region_map()  # (16, 16, 3) similarities to background, a, b
    tokens = torch.zeros(16, 16, d)
    tokens[..., 1:4] = f
    tokens[..., 5] = 0.3  # an unrelated direction
    tokens = tokens.reshape(1, 256, d).repeat(2, 1, 1)
    names = ["image", "background", "a", "b"]
    w1, assign = region_weights(tokens, (16, 16), protos, names, RegionConfig())
    w2, _ = region_weights(tokens.clone(), (16, 16), protos.clone(), names, RegionConfig())
    assert w1.shape == (2, 4, 4, 4)
    assert torch.equal(w1, w2)
    assert torch.equal(w1[0], w1[1])
    # background weight high on the left half of the model grid, component a top right, b bottom middle
    assert torch.allclose(w1[0, 1, :, :2], torch.full((4, 2), 2.5))
    assert torch.allclose(w1[0, 2, :2, 2:], torch.full((2, 2), 2.5))
    assert torch.allclose(w1[0, 3, 2:, 2], torch.full((2,), 2.5))
    assert torch.allclose(w1[0, 0], torch.ones(4, 4))
    assert assign[0].component_cluster == assign[1].component_cluster
