"""Backbone: shapes, CLS = open_clip, V-V path against a hand-written reference, taps, tiling, loading errors."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.method.backbone import Backbone, BackboneOutput, load_backbone, resolve_taps

TINY_CONFIG = Path(__file__).parent / "assets" / "fgad-tiny-test.json"


@pytest.fixture(scope="module")
def bb(tiny_clip_name) -> Backbone:
    torch.manual_seed(0)
    return load_backbone(tiny_clip_name, pretrained="none")


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g)


def _tokens_after(model, pixels: torch.Tensor, blocks: list[int]) -> list[torch.Tensor]:
    """Full token sequences (CLS + patches) output by the given 0-based blocks, via open_clip's own API."""
    out = model.visual.forward_intermediates(
        pixels, indices=blocks, output_fmt="NLC", output_extra_tokens=True, intermediates_only=True
    )
    return [torch.cat([p, t], dim=1) for p, t in zip(out["image_intermediates_prefix"], out["image_intermediates"])]


def _ref_vv_residual(block, x: torch.Tensor) -> torch.Tensor:
    """The V-V attention residual of one block from the math: v = LN(x) W_v + b_v, softmax(v v^T / sqrt(d)) v."""
    c = x.shape[-1]
    heads = block.attn.num_heads
    d = c // heads
    h = F.layer_norm(x, (c,), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)
    w_v = block.attn.in_proj_weight[2 * c :]
    b_v = block.attn.in_proj_bias[2 * c :]
    v = (h @ w_v.T + b_v).reshape(x.shape[0], x.shape[1], heads, d)
    att = torch.softmax(torch.einsum("blhd,bmhd->bhlm", v, v) / math.sqrt(d), dim=-1)
    o = torch.einsum("bhlm,bmhd->blhd", att, v).reshape(x.shape)
    return o @ block.attn.out_proj.weight.T + block.attn.out_proj.bias


def _ref_head(visual, tokens: torch.Tensor) -> torch.Tensor:
    c = tokens.shape[-1]
    return F.layer_norm(tokens, (c,), visual.ln_post.weight, visual.ln_post.bias, visual.ln_post.eps) @ visual.proj


def test_shapes_and_attributes(bb: Backbone, pixels: torch.Tensor) -> None:
    out = bb.encode(pixels)
    assert isinstance(out, BackboneOutput)
    assert bb.image_size == 64 and bb.grid == (8, 8) and bb.embed_dim == 32
    assert out.cls.shape == (2, 32)
    assert out.patches.shape == (2, 64, 32)
    assert out.grid == (8, 8)
    assert bb.tap_layers == (1, 3)  # METHOD's 3 and 8 of 12 scaled to 4 blocks
    assert [t.shape for t in out.taps] == [(2, 64, 64), (2, 64, 64)]
    assert out.cls.dtype == torch.float32 and bb.dtype == torch.float32


def test_cls_equals_open_clip_encode_image(bb: Backbone, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        ref = bb.model.encode_image(pixels)
    assert torch.equal(bb.encode(pixels).cls, ref)


def test_vv_path_one_block_matches_reference(tiny_clip_name, pixels: torch.Tensor) -> None:
    torch.manual_seed(0)
    bb1 = load_backbone(tiny_clip_name, pretrained="none", vv_blocks=1)
    vis = bb1.model.visual
    with torch.no_grad():
        x3 = _tokens_after(bb1.model, pixels, [2])[0]  # tokens entering the last block
        vv = x3 + _ref_vv_residual(vis.transformer.resblocks[3], x3)
        ref = _ref_head(vis, vv[:, 1:])
    out = bb1.encode(pixels)
    torch.testing.assert_close(out.patches, ref, rtol=1e-5, atol=1e-5)
    # and it is not the original path's patch tokens
    with torch.no_grad():
        orig = _ref_head(vis, _tokens_after(bb1.model, pixels, [3])[0][:, 1:])
    assert not torch.allclose(out.patches, orig, atol=1e-3)


def test_vv_path_two_blocks_reads_the_original_stream(tiny_clip_name, pixels: torch.Tensor) -> None:
    """Each V-V block attends over LN(original tokens); residuals summed onto the V-V stream, no MLP."""
    torch.manual_seed(0)
    bb2 = load_backbone(tiny_clip_name, pretrained="none", vv_blocks=2)
    vis = bb2.model.visual
    blocks = vis.transformer.resblocks
    with torch.no_grad():
        x2, x3 = _tokens_after(bb2.model, pixels, [1, 2])
        vv = x2 + _ref_vv_residual(blocks[2], x2) + _ref_vv_residual(blocks[3], x3)
        ref = _ref_head(vis, vv[:, 1:])
    torch.testing.assert_close(bb2.encode(pixels).patches, ref, rtol=1e-5, atol=1e-5)


def test_taps_are_original_block_outputs_cloned_and_distinct(bb: Backbone, pixels: torch.Tensor) -> None:
    out = bb.encode(pixels)
    with torch.no_grad():
        refs = _tokens_after(bb.model, pixels, [0, 2])  # blocks 1 and 3 (1-based)
    for tap, ref in zip(out.taps, refs):
        assert torch.equal(tap, ref[:, 1:])
        assert tap._base is None  # not a view
        assert tap.untyped_storage().nbytes() == tap.numel() * tap.element_size()  # owns its own memory
    assert not torch.allclose(out.taps[0], out.taps[1])
    assert out.taps[0].untyped_storage().data_ptr() != out.taps[1].untyped_storage().data_ptr()


def test_tap_resolution() -> None:
    assert resolve_taps(None, 12) == (3, 8)
    assert resolve_taps(None, 4) == (1, 3)
    assert resolve_taps(None, 24) == (6, 16)
    assert resolve_taps((2, 4), 4) == (2, 4)
    assert resolve_taps((0.5, 1.0), 12) == (6, 12)
    with pytest.raises(DetectorError):
        resolve_taps((13,), 12)
    with pytest.raises(DetectorError):
        resolve_taps((0.0,), 12)


def test_encode_tiled_places_each_tile(bb: Backbone) -> None:
    g = torch.Generator().manual_seed(2)
    hr = torch.randn(1, 3, 128, 128, generator=g)  # 2 x 2 tiles of 64 px, all different
    out = bb.encode_tiled(hr, tiles=2)
    h, w = bb.grid
    assert out.grid == (2 * h, 2 * w)
    assert out.patches.shape == (1, 4 * h * w, 32)
    grid = out.patches.reshape(1, 2 * h, 2 * w, -1)
    taps = [t.reshape(1, 2 * h, 2 * w, -1) for t in out.taps]
    for r in range(2):
        for c in range(2):
            crop = hr[:, :, r * 64 : (r + 1) * 64, c * 64 : (c + 1) * 64]
            one = bb.encode(crop)
            torch.testing.assert_close(grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w], one.patches.reshape(1, h, w, -1))
            for t, ot in zip(taps, one.taps):
                torch.testing.assert_close(t[:, r * h : (r + 1) * h, c * w : (c + 1) * w], ot.reshape(1, h, w, -1))
    small = F.interpolate(hr, size=(64, 64), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(out.cls, bb.encode(small).cls)


def test_frozen_and_stays_in_eval(bb: Backbone, pixels: torch.Tensor) -> None:
    assert all(not p.requires_grad for p in bb.parameters())
    parent = torch.nn.Sequential(bb)
    parent.train()
    assert not bb.model.training and not bb.model.visual.training
    with torch.enable_grad():
        out = bb.encode(pixels)
    assert not out.patches.requires_grad and not out.cls.requires_grad


def test_preprocess_matches_open_clip_transform_and_keeps_rgb(bb: Backbone) -> None:
    import open_clip
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(100, 100, 3), dtype=np.uint8)
    cfg = open_clip.get_model_preprocess_cfg(bb.model)
    tf = open_clip.image_transform(
        cfg["size"], is_train=False, mean=cfg["mean"], std=cfg["std"], interpolation=cfg["interpolation"]
    )
    ref = tf(Image.fromarray(img)).unsqueeze(0)
    got = bb.preprocess([img])
    assert got.shape == (1, 3, 64, 64)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    red = np.zeros((30, 50, 3), dtype=np.uint8)
    red[..., 0] = 255
    x = bb.preprocess([red])
    assert x.shape == (1, 3, 64, 64)  # non-square images are resized to S x S, not cropped
    mean, std = bb.mean, bb.std
    torch.testing.assert_close(x[0, :, 10, 10], torch.tensor([(1 - mean[0]) / std[0], -mean[1] / std[1], -mean[2] / std[2]]))
    with pytest.raises(DetectorError):
        bb.preprocess([img[..., 0]])


def test_bad_inputs_raise(bb: Backbone, tiny_clip_name) -> None:
    with pytest.raises(DetectorError, match="unknown backbone"):
        load_backbone("No-Such-ViT", pretrained="none")
    with pytest.raises(DetectorError, match="not a weights tag"):
        load_backbone(tiny_clip_name, pretrained="laion400m_e32")
    with pytest.raises(DetectorError, match="precision"):
        load_backbone(tiny_clip_name, pretrained="none", precision="fp8")
    with pytest.raises(DetectorError, match="CPU"):
        load_backbone(tiny_clip_name, pretrained="none", precision="fp16")
    with pytest.raises(DetectorError, match="expects pixels"):
        bb.encode(torch.zeros(1, 3, 32, 32))


def test_open_clip_logs_are_quieted_only_while_loading(tiny_clip_name, caplog) -> None:
    """open_clip's INFO/WARNING lines (it logs through the root logger) are dropped while the model is built;
    the root logger's level and filters and every other record are left alone."""
    import logging

    import open_clip

    from detector.method.backbone import quiet_open_clip_logs

    caplog.set_level(logging.DEBUG)
    root, named = logging.getLogger(), logging.getLogger("open_clip")
    before = (root.level, list(root.filters), named.level)
    open_clip.create_model(tiny_clip_name, pretrained=None)
    assert any(r.levelno == logging.WARNING and "open_clip" in r.pathname for r in caplog.records)  # random init
    caplog.clear()
    load_backbone(tiny_clip_name, pretrained="none")
    assert not [r for r in caplog.records if r.funcName == "create_model"]
    caplog.clear()
    with quiet_open_clip_logs(open_clip):
        open_clip.create_model(tiny_clip_name, pretrained=None)
        root.warning("ours on the root logger")
        logging.getLogger("elsewhere").info("another library")
    assert [r.getMessage() for r in caplog.records] == ["ours on the root logger", "another library"]
    assert (root.level, list(root.filters), named.level) == before


def test_offline_tag_download_fails_with_one_clear_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DetectorError) as err:
        load_backbone("ViT-B-16-plus-240", pretrained="laion400m_e32")
    msg = str(err.value)
    assert "\n" not in msg and "offline" in msg and "--pretrained none" in msg


def test_json_config_path_and_local_weights(tmp_path, tiny_clip_name, pixels: torch.Tensor) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = load_backbone(str(TINY_CONFIG), pretrained="none")
    assert src.name == tiny_clip_name
    state = {k: v.contiguous() for k, v in src.model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.manual_seed(6)
    from_file = load_backbone(tiny_clip_name, pretrained=str(tmp_path / "w.safetensors"))
    assert torch.equal(from_file.encode(pixels).patches, src.encode(pixels).patches)
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "w.safetensors").rename(folder / "open_clip_model.safetensors")
    assert torch.equal(load_backbone(tiny_clip_name, pretrained=str(folder)).encode(pixels).cls, src.encode(pixels).cls)
    # a plain tensor state dict in a torch file loads through weights_only ...
    torch.save(state, tmp_path / "w.pt")
    assert torch.equal(load_backbone(tiny_clip_name, pretrained=str(tmp_path / "w.pt")).encode(pixels).cls, src.encode(pixels).cls)
    # ... but a pickle with arbitrary objects is refused, never unpickled
    torch.save({"state_dict": state, "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DetectorError, match="safely"):
        load_backbone(tiny_clip_name, pretrained=str(tmp_path / "evil.pt"))
    with pytest.raises(DetectorError, match="not found"):
        load_backbone(tiny_clip_name, pretrained=str(tmp_path / "missing.safetensors"))


class _Evil:
    """An arbitrary class: a weights_only load must refuse to rebuild it."""


def test_bf16_on_cpu_runs_close_to_fp32(tiny_clip_name, pixels: torch.Tensor) -> None:
    torch.manual_seed(0)
    b16 = load_backbone(tiny_clip_name, pretrained="none", precision="bf16")
    torch.manual_seed(0)
    b32 = load_backbone(tiny_clip_name, pretrained="none")
    o16, o32 = b16.encode(pixels), b32.encode(pixels)
    assert b16.dtype == torch.bfloat16 and o16.patches.dtype == torch.bfloat16
    cos = F.cosine_similarity(o16.patches.float(), o32.patches, dim=-1)
    assert cos.min() > 0.98
