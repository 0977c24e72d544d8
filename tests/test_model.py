"""FineGrainedAD inference: hand-checked branch maths, fusion, smoothing, wiring on a tiny CLIP, reload."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detector_fixtures import RECORD, make_image

from detector.errors import DetectorError
from detector.method.model import (
    FineGrainedAD,
    gaussian_kernel1d,
    gaussian_smooth,
    harmonic_mean,
)
from detector.store.saved_detector import save_detector


def _bare_model(normal: torch.Tensor, abnormal: torch.Tensor, memory: list[torch.Tensor], tau: float = 10.0):
    m = FineGrainedAD(None, torch.nn.Identity(), torch.nn.Identity(), torch.ones(1, 1, 1, 1), memory, tau)
    m.pixel_names = [f"g{i}" for i in range(normal.shape[0])]
    m.pixel_names[0] = "image"
    m.image_names = ["image"]
    m.pixel_normal, m.pixel_abnormal = normal, abnormal
    m.image_normal, m.image_abnormal = normal[:1], abnormal[:1]
    return m


def test_gaussian_kernel_and_smoothing():
    k = gaussian_kernel1d(4.0)
    assert k.numel() == 33 and abs(float(k.sum()) - 1) < 1e-6
    x = torch.arange(-16, 17, dtype=torch.float64)
    ref = torch.exp(-x**2 / 32)
    assert torch.allclose(k.double(), ref / ref.sum(), atol=1e-7)
    delta = torch.zeros(1, 65, 65)
    delta[0, 32, 32] = 1.0
    out = gaussian_smooth(delta, 4.0)
    assert torch.allclose(out[0, 16:49, 16:49], torch.outer(k, k), atol=1e-7)  # separable = outer product
    const = torch.full((2, 40, 40), 0.3)
    assert torch.allclose(gaussian_smooth(const), const, atol=1e-6)  # reflect padding keeps constants


def test_harmonic_mean():
    a = torch.tensor([0.5, 0.0, 1.0, 0.2])
    b = torch.tensor([0.5, 0.0, 0.0, 0.8])
    assert torch.allclose(harmonic_mean(a, b), torch.tensor([0.5, 0.0, 0.0, 0.32]))


def test_textual_map_matches_by_normal_prototypes():
    # groups: 0 image (e0), 1 background (e1), 2 component (e2); abnormal prototypes along e3 + own axis
    normal = torch.eye(4)[:3]
    abnormal = F.normalize(torch.tensor([[1.0, 0, 0, 1], [0, 1.0, 0, -1], [0, 0, 1.0, 2]]), dim=-1)
    m = _bare_model(normal, abnormal, [torch.eye(4)])
    patches = torch.tensor([[[0.1, 2.0, 0.0, 0.5], [0.0, 0.0, 3.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    g = m.match_groups(patches)
    assert g.tolist() == [[1, 2, 0]]
    f = F.normalize(patches, dim=-1)[0]
    expect = []
    for i, gi in enumerate([1, 2, 0]):
        sn, sa = float(f[i] @ normal[gi]), float(f[i] @ abnormal[gi])
        expect.append(np.exp(10 * sa) / (np.exp(10 * sn) + np.exp(10 * sa)))
    assert np.allclose(m.textual_map(patches)[0].numpy(), expect, atol=1e-6)
    # the matcher is the normal prototypes: moving them moves the assignment
    m.pixel_normal = torch.eye(4)[[1, 0, 2]]
    assert m.match_groups(patches).tolist() == [[0, 2, 1]]


def test_visual_map_and_image_score_by_hand():
    mem0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mem1 = torch.tensor([[1.0, 1.0]])
    m = _bare_model(torch.eye(2), F.normalize(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), dim=-1), [mem0, mem1])
    taps = [torch.tensor([[[2.0, 0.0], [1.0, 1.0]]]), torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])]
    v = m.visual_map(taps)[0]
    c45 = np.cos(np.pi / 4)
    assert np.allclose(v.numpy(), [(0 + (1 - c45) / 2) / 2, ((1 - c45) / 2 + 0) / 2], atol=1e-6)
    cls = torch.tensor([[3.0, 0.0]])
    s = m.image_text_score(cls)
    assert np.allclose(s.numpy(), 1 / (1 + np.exp(-10 * (c45 - 1))), atol=1e-6)
    with pytest.raises(DetectorError):
        m.visual_map(taps[:1])


def test_visual_map_whole_batch_is_the_per_image_map():
    """The export's form (one product over the batch) computes what the per-image loop computes."""
    g = torch.Generator().manual_seed(0)
    memory = [torch.randn(12, 6, generator=g), torch.randn(7, 6, generator=g)]
    m = _bare_model(torch.eye(2), torch.eye(2), memory)
    taps = [torch.randn(3, 5, 6, generator=g) for _ in memory]
    per_image = m.visual_map(taps)
    assert per_image.shape == (3, 5)
    assert torch.allclose(m.visual_map(taps, per_image=False), per_image, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def trained(tiny_clip_name):
    from detector.config import TrainConfig
    from detector.run.train import train_model

    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=3, image_epochs=2,
                      shots=2)
    return train_model(cfg, progress=False, shot_images=[make_image(), make_image()],
                       shot_names=["good/000.png", "good/001.png"], record=RECORD)


def test_visual_branch_wiring_square(trained):
    """Maps are aligned with the image: the visual argmax falls in the square, defect scores higher."""
    square = (40, 8, 16)  # rows 40..55, columns 8..23: bottom left, not symmetric under transpose/flip
    images = [make_image(), make_image(square), make_image()]
    pred = trained.predict(images, resolution=64, branch="visual")
    assert pred.maps.shape == (3, 64, 64) and pred.maps.dtype == np.float32
    assert pred.scores.shape == (3,) and pred.scores.dtype == np.float32
    assert pred.scores[1] > pred.scores[0] + 0.01 and pred.scores[1] > pred.scores[2] + 0.01
    y, x = np.unravel_index(int(pred.maps[1].argmax()), (64, 64))
    assert 40 <= y < 56 and 8 <= x < 24
    # a non-square resolution scale keeps alignment too
    pred = trained.predict(images[1:2], resolution=128, branch="visual")
    y, x = np.unravel_index(int(pred.maps[0].argmax()), (128, 128))
    assert 80 <= y < 112 and 16 <= x < 48


def test_predict_branches_batching_and_errors(trained):
    images = [make_image(), make_image((8, 40, 12)), make_image((30, 30, 10))]
    full = trained.predict(images, resolution=32, branch="fused", batch_size=8)
    one = trained.predict(images, resolution=32, branch="fused", batch_size=1)
    assert np.allclose(full.scores, one.scores, atol=1e-6) and np.allclose(full.maps, one.maps, atol=1e-6)
    text = trained.predict(images, resolution=32, branch="text")
    vis = trained.predict(images, resolution=32, branch="visual")
    # fused = harmonic mean of the grid maps before upsampling: check the image score rule exactly
    assert np.allclose(full.scores, 2 * text.scores * vis.scores / (text.scores + vis.scores), atol=1e-6)
    assert np.all((full.maps >= 0) & (full.maps <= 1))
    with pytest.raises(DetectorError):
        trained.predict(images, branch="both")
    with pytest.raises(DetectorError):
        trained.predict([images[0][..., 0]])
    empty = trained.predict([], resolution=16)
    assert empty.scores.shape == (0,) and empty.maps.shape == (0, 16, 16)


def test_save_reload_bit_exact(trained, tmp_path):
    from detector.store.checkpoint import load_checkpoint
    from detector.store.saved_detector import load_detector

    images = [make_image(), make_image((40, 8, 16))]
    before = trained.predict(images, resolution=64)
    ckpt = save_detector(trained, tmp_path / "ckpt")
    tensors, meta = load_checkpoint(ckpt)
    # everything trained and every piece inference needs is in the checkpoint
    for key in ("pixel_prompts.ctx", "pixel_prompts.abnormal_tokens", "pixel_prompts.gates", "image_prompts.ctx",
                "text.pixel_normal", "text.pixel_abnormal", "text.image_normal", "region_weights", "memory.0",
                "memory.1"):
        assert key in tensors, key
    assert tensors["image_prompts.ctx"].shape[0] == 3 and tensors["pixel_prompts.ctx"].shape[0] == 1
    assert meta["shots"] == ["good/000.png", "good/001.png"] and meta["record"]["class_name"] == "widget"
    assert meta["region_groups"] == ["image", "background", "cap"]
    assert meta["backbone"]["pretrained"] == "none" and meta["config"]["epochs"] == 3
    again = load_detector(ckpt)
    after = again.predict(images, resolution=64)
    assert np.array_equal(before.scores, after.scores) and np.array_equal(before.maps, after.maps)
    # the matcher (normal prototypes) was restored, not recomputed from a fresh random state
    assert torch.equal(again.pixel_normal, trained.pixel_normal)
    for (n1, p1), (n2, p2) in zip(trained.pixel_prompts.named_parameters(), again.pixel_prompts.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    # and recomputing the text features from the restored prompts gives the cached ones back
    cached = again.pixel_normal.clone()
    again.refresh_text_features()
    assert torch.allclose(again.pixel_normal, cached, atol=1e-6)


def test_no_hard_coded_cuda():
    """METHOD's known fault: the public code calls ``.cuda()``; here every tensor follows the user's --device."""
    import ast
    from pathlib import Path

    import detector

    found = []
    for path in sorted(Path(detector.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            consts = [a.value for a in [*node.args, *(k.value for k in node.keywords)] if isinstance(a, ast.Constant)]
            if name == "cuda" or (name in ("to", "device") and any(str(c).startswith("cuda") for c in consts)):
                found.append(f"{path.name}:{node.lineno}")
    assert not found, f"hard-coded CUDA at {found}"


def test_fusion_rule_and_the_tokens_each_branch_reads():
    """METHOD: PAD on the V-V patch tokens, VAD on the tapped blocks; harmonic mean on the patch grid, then
    bilinear upsampling, then Gaussian sigma 4; image score = harmonic(CLS text score, max of the visual grid)."""
    from detector.method.backbone import BackboneOutput

    torch.manual_seed(0)
    m = _bare_model(F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1),
                    [torch.randn(5, 3)])
    out = BackboneOutput(cls=torch.randn(1, 4), patches=torch.randn(1, 4, 4), taps=[torch.randn(1, 4, 3)],
                         grid=(2, 2))
    text_grid = m.textual_map(out.patches).reshape(1, 2, 2)
    vis_grid = m.visual_map(out.taps).reshape(1, 2, 2)
    score, maps = m.score_features(out, resolution=16)
    up = F.interpolate(harmonic_mean(text_grid, vis_grid)[:, None], size=(16, 16), mode="bilinear",
                       align_corners=False)[:, 0]
    assert torch.allclose(maps, gaussian_smooth(up, 4.0), atol=1e-6)
    assert torch.allclose(score, harmonic_mean(m.image_text_score(out.cls), vis_grid.flatten(1).max(1).values))
    _, text_maps = m.score_features(out, resolution=16, branch="text")
    up_text = F.interpolate(text_grid[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(text_maps, gaussian_smooth(up_text, 4.0), atol=1e-6)


def test_component_texts_drawn_at_training_are_drawn_again_at_load_and_old_checkpoints_keep_all(tiny_clip_name,
                                                                                                   tmp_path):
    """A checkpoint rebuilds its prompts from the caption record: the seeded draw of one component text (the
    paper recipe) must give the same text on load, and a checkpoint written before the option existed (its
    config has no ``component_texts``) reads back with every text, as it was trained."""
    import json

    from detector.config import TrainConfig
    from detector.run.train import train_model
    from detector.store.saved_detector import load_detector

    texts = [{**e, "abnormal": [f"a round cap with a {s} on the {w}" for s, w in
                                (("crack", "bottom"), ("dent", "left"), ("scratch", "right"))]}
             if e["level"] == "component" else e for e in RECORD["texts"]]
    record = {**RECORD, "texts": texts}
    cfg = TrainConfig(class_name="widget", backbone=tiny_clip_name, pretrained="none", epochs=1, image_epochs=1,
                      shots=1, seed=3)
    model = train_model(cfg, progress=False, shot_images=[make_image()], shot_names=["a.png"], record=record)

    def cap(m):
        return next(g.abnormal for g in m.pixel_prompts.groups if g.name == "cap")

    assert len(cap(model)) == 1
    ckpt = save_detector(model, tmp_path / "ckpt")
    assert cap(load_detector(ckpt)) == cap(model)
    config = json.loads((ckpt / "config.json").read_text())
    del config["meta"]["config"]["component_texts"]
    (ckpt / "config.json").write_text(json.dumps(config))
    assert len(cap(load_detector(ckpt))) == 3
