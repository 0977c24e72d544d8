"""Frozen CLIP image encoder for FineGrainedAD: CLS feature, V-V patch tokens, intermediate taps.

One forward pass gives the three things the detector needs:

- ``cls``: the projected CLS feature of the ORIGINAL path, identical to ``model.encode_image`` (unnormalised);
  used by image-level MLLP training and the image score.
- ``patches``: projected patch tokens of the V-V path (CLIP Surgery).  Original CLIP patch tokens are poorly
  aligned with text because query-key attention mixes in "global" tokens; value-value attention keeps each
  token close to itself.  The V-V path runs BESIDE the frozen blocks in the last ``vv_blocks`` blocks.  The
  default is EVERY block, as the public FineGrainedAD/PromptAD code does (its V2VTransformer replaces the
  attention of all 12 blocks of ViT-B-16+, so the V-V stream starts from the ``ln_pre`` output);
  ``vv_blocks = depth // 2`` is CLIP Surgery's own choice for ViT-B, kept as an option:

      vv_s     = x_s                                   (the original tokens entering the first V-V block s;
                                                        x_0 = the ln_pre output)
      vv_{l+1} = vv_l + ls_1(out_proj(A_l v_l))        v_l = ln_1(x_l) W_v + b_v,
                                                       A_l = softmax(v_l v_l^T / sqrt(d_head)) per head

  where x_l are the ORIGINAL path's tokens entering block l (the V-V stream reads the frozen stream, it does
  not feed itself through the blocks), no MLP is applied on the V-V stream and only the attention residuals
  are summed.  At the end ``ln_post`` and ``proj`` are applied to the V-V patch tokens.  (``ls_1`` is the
  block's layer scale, the identity for ViT-B-16+; the public code skips it on the V-V branch.)
- ``taps``: unprojected patch tokens (no CLS) output by chosen intermediate blocks of the ORIGINAL path, for the
  visual memory (VAD).  They are cloned, never views a later block could change.

Tap numbering: an ``int`` k is the 1-based block number (output of block k of L); a ``float`` f in (0, 1] is a
fraction of the depth, block round(f * L).  The default is METHOD's "3 and 8 of 12" for ViT-B-16+ (outputs of the
3rd and 8th block, 0-based resblocks[2] and resblocks[7]), scaled to other depths as round(k * L / 12)
(4 blocks -> 1 and 3; 24 blocks -> 6 and 16).

Written against open_clip's public ViT modules (conv1, class_embedding, positional_embedding, ln_pre,
transformer.resblocks[i].ln_1 / attn (nn.MultiheadAttention) / ls_1, ln_post, proj); the original path calls the
frozen blocks themselves, so ``cls`` and ``taps`` are bit-identical to open_clip's own forward.
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from detector.errors import DetectorError
from detector.method.choices import VV_BLOCK_WORDS
from detector.method.text_encoder import Tokenizer
from detector.method.weights import PICKLE_SUFFIXES, RANDOM_WEIGHTS, fetch_weights, is_random_weights
from fsad_data.digest import file_sha256

DEFAULT_NAME = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e32"
DEFAULT_TAPS_OF_12 = (3, 8)
PRECISIONS = ("fp32", "bf16", "fp16")
PREFERRED_WEIGHT_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "model.safetensors",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
)


@dataclass
class BackboneOutput:
    """Features of one batch. ``cls`` (B, D) and ``patches`` (B, N, D) are projected and NOT normalised;
    ``taps`` are (B, N, C) unprojected block outputs of the original path; ``grid`` is (h, w) with N = h * w."""

    cls: Tensor
    patches: Tensor
    taps: list[Tensor]
    grid: tuple[int, int]


def resolve_taps(taps: Sequence[float | int] | None, depth: int) -> tuple[int, ...]:
    """Turn tap specs into sorted-as-given 1-based block numbers in 1..depth (see module docstring)."""
    if taps is None:
        return tuple(max(1, min(depth, round(k * depth / 12))) for k in DEFAULT_TAPS_OF_12)
    out: list[int] = []
    for t in taps:
        if isinstance(t, bool):
            raise DetectorError(f"tap {t!r} is not a block number or a depth fraction; use e.g. taps=(3, 8)")
        if isinstance(t, int):
            block = t
        elif isinstance(t, float):
            if not 0.0 < t <= 1.0:
                raise DetectorError(f"tap fraction {t} must be in (0, 1]; use an int for a block number")
            block = max(1, round(t * depth))
        else:
            raise DetectorError(f"tap {t!r} is not a block number or a depth fraction; use e.g. taps=(3, 8)")
        if not 1 <= block <= depth:
            raise DetectorError(f"tap block {block} is outside 1..{depth} (the model has {depth} blocks)")
        out.append(block)
    if not out:
        raise DetectorError("taps is empty: give at least one block, e.g. taps=(3, 8)")
    return tuple(out)


def resolve_vv_blocks(vv_blocks: int | str | None, depth: int) -> int:
    """Number of final blocks with a V-V branch: None or "all" = every block (public), "half" = depth // 2."""
    if vv_blocks is None or vv_blocks == VV_BLOCK_WORDS[0]:
        return depth
    if vv_blocks == VV_BLOCK_WORDS[1]:
        return max(1, depth // 2)
    try:
        return int(vv_blocks)
    except (TypeError, ValueError):
        raise DetectorError(f"vv_blocks={vv_blocks!r}: give a number of blocks, 'all' or 'half'") from None


def _vv_attention(block: nn.Module, h: Tensor) -> Tensor:
    """Value-value self-attention of one frozen block on its normalised input ``h`` (B, L, C), out_proj applied."""
    mha = block.attn
    c = h.shape[-1]
    heads = mha.num_heads
    if mha.in_proj_weight is not None:
        w_v = mha.in_proj_weight[2 * c : 3 * c]
    else:
        w_v = mha.v_proj_weight
    b_v = mha.in_proj_bias[2 * c : 3 * c] if mha.in_proj_bias is not None else None
    v = F.linear(h, w_v, b_v)
    b, n, _ = v.shape
    v = v.view(b, n, heads, c // heads).transpose(1, 2)  # (B, H, L, d)
    o = F.scaled_dot_product_attention(v, v, v)  # softmax(v v^T / sqrt(d)) v, per head
    o = o.transpose(1, 2).reshape(b, n, c)
    return F.linear(o, mha.out_proj.weight, mha.out_proj.bias)


class Backbone(nn.Module):
    """Frozen open_clip ViT with a V-V patch path and intermediate taps (see the module docstring).

    It stays in eval mode whatever ``train()`` is called with (a parent module's ``train()`` must not
    switch on CLIP's dropout), and every parameter has ``requires_grad=False``.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        name: str,
        pretrained: str,
        taps: Sequence[float | int] | None = None,
        vv_blocks: int | str | None = None,
    ) -> None:
        super().__init__()
        visual = getattr(model, "visual", None)
        _check_supported(visual, name)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.weights_sha256: str | None = None  # SHA-256 of the loaded weights file (load_backbone sets it)
        size = tuple(visual.image_size)
        if size[0] != size[1]:
            raise DetectorError(f"model {name} has a non-square input {size}; use a square-input CLIP")
        self.image_size: int = int(size[0])
        self.grid: tuple[int, int] = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        self.embed_dim: int = int(visual.proj.shape[1])
        self.width: int = int(visual.conv1.out_channels)
        depth = len(visual.transformer.resblocks)
        self.depth = depth
        self.tap_layers: tuple[int, ...] = resolve_taps(taps, depth)
        n_vv = resolve_vv_blocks(vv_blocks, depth)
        if not 1 <= n_vv <= depth:
            raise DetectorError(f"vv_blocks={vv_blocks} must be in 1..{depth} for {name}")
        self.vv_blocks = n_vv
        self.vv_start = depth - n_vv  # 0-based index of the first block with a V-V branch
        from open_clip import get_model_preprocess_cfg  # open_clip: see import_open_clip

        cfg = dict(get_model_preprocess_cfg(model))
        self.mean: tuple[float, ...] = tuple(float(m) for m in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std: tuple[float, ...] = tuple(float(s) for s in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.interpolation: str = str(cfg.get("interpolation", "bicubic"))
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def device(self) -> torch.device:
        """Where the CLIP's weights are (follows ``.to()``)."""
        return self.model.visual.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of the image tower (fp32, bf16 or fp16; layer norms may stay fp32)."""
        return self.model.visual.conv1.weight.dtype

    # -- mode ---------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Backbone:
        """Ignore ``mode``: the CLIP stays frozen in eval mode (no dropout, no patch dropout)."""
        return super().train(False)

    # -- input --------------------------------------------------------------------------------------
    def preprocess(self, images: list[np.ndarray], size: int | None = None) -> Tensor:
        """RGB uint8 (H, W, 3) arrays -> normalised (B, 3, S, S) on the backbone's device and dtype.

        Resized straight to S x S (no centre crop, so a map covers the whole image) with Pillow and the
        model's interpolation, then mean/std of the model's preprocess config; for square images this is
        exactly open_clip's own transform.  ``size`` (default S) lets MLSA ask for a tiles*S image.
        """

        s = self.image_size if size is None else int(size)
        resample = Image.BILINEAR if self.interpolation == "bilinear" else Image.BICUBIC
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        out = np.empty((len(images), 3, s, s), dtype=np.float32)
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                raise DetectorError(
                    f"image {i} has shape {arr.shape} and dtype {arr.dtype}; expected RGB uint8 (H, W, 3): "
                    "load images with fsad_data.images.load_rgb"
                )
            pil = Image.fromarray(np.ascontiguousarray(arr))
            if pil.size != (s, s):
                pil = pil.resize((s, s), resample=resample)
            x = np.asarray(pil, dtype=np.float32) / 255.0
            out[i] = ((x - mean) / std).transpose(2, 0, 1)
        return torch.from_numpy(out).to(device=self.device, dtype=self.dtype)

    # -- forward ------------------------------------------------------------------------------------
    def _embed(self, pixels: Tensor) -> Tensor:
        v = self.model.visual
        x = v.conv1(pixels)  # (B, C, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C), row-major over the grid
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.ln_pre(x)

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.model.visual.transformer.batch_first:
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def _pool(self, x: Tensor) -> Tensor:
        """Pooled feature before ``proj``, in the same op order as open_clip (so ``cls`` is bit-identical)."""
        v = self.model.visual
        if v.final_ln_after_pool:
            return v.ln_post(x[:, 1:].mean(dim=1) if v.pool_type == "avg" else x[:, 0])
        x = v.ln_post(x)
        return x[:, 1:].mean(dim=1) if v.pool_type == "avg" else x[:, 0]

    def _check_pixels(self, pixels: Tensor, size: int) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
            raise DetectorError(
                f"{self.name} expects pixels of shape (B, 3, {size}, {size}), got {tuple(pixels.shape)}; "
                "use Backbone.preprocess"
            )

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> BackboneOutput:
        """One pass: original-path CLS and taps, V-V patch tokens (all frozen, no gradient)."""
        self._check_pixels(pixels, self.image_size)
        v = self.model.visual
        x = self._embed(pixels.to(device=self.device, dtype=self.dtype))
        tapped: dict[int, Tensor] = {}
        vv: Tensor | None = None
        for i, block in enumerate(v.transformer.resblocks):
            if i >= self.vv_start:
                vv_in = x if vv is None else vv
                vv = vv_in + block.ls_1(_vv_attention(block, block.ln_1(x)))
            x = self._run_block(block, x)
            if i + 1 in self.tap_layers:  # 1-based block number; clone: never a view a later op could change
                tapped[i + 1] = x[:, 1:].clone()
        taps = [tapped[k] for k in self.tap_layers]
        cls = self._pool(x) @ v.proj
        assert vv is not None
        patches = v.ln_post(vv[:, 1:]) @ v.proj
        return BackboneOutput(cls=cls, patches=patches, taps=taps, grid=self.grid)

    @torch.no_grad()
    def encode_tiled(self, pixels_hr: Tensor, tiles: int = 4, chunk: int = 32) -> BackboneOutput:
        """Encode a (tiles*S)^2 image as tiles x tiles crops of S px and stitch the token grids.

        Crop (r, c) (row r, column c, each S px) fills rows r*h..(r+1)*h-1 and columns c*w..(c+1)*w-1 of the
        (tiles*h, tiles*w) grid of ``patches`` and of each tap; N = tiles^2 * h * w, row-major.  ``cls`` is the
        CLS of the whole image resized to S (bicubic, antialiased), since no single crop sees the object.
        Crops go through the encoder ``chunk`` at a time to bound memory.
        """
        s = self.image_size
        if tiles < 1:
            raise DetectorError(f"tiles={tiles} must be >= 1")
        self._check_pixels(pixels_hr, tiles * s)
        b = pixels_hr.shape[0]
        h, w = self.grid
        crops = (
            pixels_hr.reshape(b, 3, tiles, s, tiles, s).permute(0, 2, 4, 1, 3, 5).reshape(b * tiles * tiles, 3, s, s)
        )
        parts = [self.encode(crops[i : i + chunk]) for i in range(0, crops.shape[0], max(1, chunk))]

        def stitch(t: Tensor) -> Tensor:
            d = t.shape[-1]
            t = t.reshape(b, tiles, tiles, h, w, d).permute(0, 1, 3, 2, 4, 5)  # (B, r, y, c, x, D)
            return t.reshape(b, tiles * h * tiles * w, d)

        patches = stitch(torch.cat([p.patches for p in parts]))
        taps = [stitch(torch.cat([p.taps[j] for p in parts])) for j in range(len(self.tap_layers))]
        small = F.interpolate(
            pixels_hr.to(torch.float32), size=(s, s), mode="bicubic", align_corners=False, antialias=True
        ).to(self.dtype)
        cls = self.encode(small).cls
        return BackboneOutput(cls=cls, patches=patches, taps=taps, grid=(tiles * h, tiles * w))

    def forward(self, pixels: Tensor) -> BackboneOutput:  # nn.Module protocol
        return self.encode(pixels)


def _check_supported(visual: nn.Module | None, name: str) -> None:
    """Clear errors for CLIPs whose image tower is not a plain open_clip ViT with nn.MultiheadAttention."""
    # open_clip: imported once, by import_open_clip (lean)
    from open_clip.transformer import VisionTransformer

    if visual is None or not isinstance(visual, VisionTransformer):
        kind = type(visual).__name__ if visual is not None else "no image tower"
        raise DetectorError(
            f"model {name}: image tower is {kind}, not an open_clip VisionTransformer; the V-V path needs a ViT "
            "CLIP (e.g. ViT-B-16-plus-240, ViT-L-14-336-quickgelu)"
        )
    if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        raise DetectorError(f"model {name}: pool_type '{visual.pool_type}' has no image feature; use a CLIP ViT")
    if getattr(visual, "attn_pool", None) is not None:
        raise DetectorError(f"model {name}: attentional pooling (CoCa-style) is not supported; use a plain ViT CLIP")
    if visual.proj is None:
        raise DetectorError(f"model {name}: the image tower has no projection; use a CLIP with a joint space")
    for i, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not hasattr(block, "ln_1"):
            raise DetectorError(
                f"model {name}: block {i} uses {type(attn).__name__} attention, not nn.MultiheadAttention; the V-V "
                "path supports only standard open_clip ViT blocks (no qk-norm / scaled-cosine custom blocks)"
            )


# ---------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------
LEAN_OPEN_CLIP_ENV = "FGAD_LEAN_OPEN_CLIP"  # "1": the detector's commands set it (cli._quiet_libraries)


def import_open_clip() -> Any:
    """open_clip; where ``FGAD_LEAN_OPEN_CLIP=1`` and it is not imported yet, imported without transformers and
    timm.

    Why: open_clip imports both at its own import (2-3 s of every command's start, a third of a short predict
    run's start-up) only for Hugging Face text towers, timm image towers and CoCa generation, and it runs
    without them (it catches their ImportError). The detector uses none of these (``_check_supported``,
    ``text_encoder.TextTower``). Only the ``detector`` commands ask for it: in a library user's process open_clip
    keeps every tower. Both stay importable afterwards; a failed lean import falls back to the plain one.
    """

    if "open_clip" in sys.modules or os.environ.get(LEAN_OPEN_CLIP_ENV) != "1":
        import open_clip  # open_clip (seconds): imported here only, lean when asked

        return open_clip
    blocked = [m for m in ("transformers", "timm") if m not in sys.modules]
    try:
        for m in blocked:
            sys.modules[m] = None  # type: ignore[assignment]  # `import m` raises ImportError, open_clip catches it
        import open_clip  # open_clip (seconds): imported here only, lean when asked
    except ImportError:  # a newer open_clip that needs them: drop its half-imported modules, import it plainly
        for m in [m for m in sys.modules if m == "open_clip" or m.startswith("open_clip.")]:
            del sys.modules[m]
    finally:
        for m in blocked:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]
    import open_clip  # open_clip (seconds): imported here only, lean when asked

    return open_clip


def _resolve_name(name: str) -> str:
    """A registered open_clip model name, registering a JSON config path first when given one."""
    open_clip = import_open_clip()

    p = Path(name)
    if name.endswith(".json") or p.is_file():
        if not p.is_file():
            raise DetectorError(f"model config {p} not found; give an open_clip model name or an existing JSON file")
        open_clip.add_model_config(p)
        if p.stem not in open_clip.list_models():
            raise DetectorError(
                f"{p} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg); fix the JSON file"
            )
        return p.stem
    if name not in open_clip.list_models():
        raise DetectorError(
            f"unknown backbone '{name}': not an open_clip model name nor a JSON config path "
            f"(e.g. {DEFAULT_NAME}, ViT-L-14-336-quickgelu; see open_clip.list_models())"
        )
    return name


def _weight_file(path: Path) -> Path:
    """The weight file inside a local folder (safetensors preferred), or the file itself."""
    if path.is_file():
        return path
    files = {f.name: f for f in path.iterdir() if f.is_file()}
    for fname in PREFERRED_WEIGHT_FILES:
        if fname in files:
            return files[fname]
    st = sorted(f for f in files.values() if f.suffix == ".safetensors")
    if len(st) == 1:
        return st[0]
    pk = sorted(f for f in files.values() if f.suffix in PICKLE_SUFFIXES)
    if not st and len(pk) == 1:
        return pk[0]
    raise DetectorError(
        f"cannot tell which weight file to use in {path} (found {sorted(files)}); pass the file itself, "
        "preferably a .safetensors"
    )


def _load_local_weights(model: nn.Module, file: Path) -> None:
    """Load a local state dict: safetensors directly, a torch pickle only with weights_only=True (no code)."""
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file  # only for a local weights file

        try:
            state = load_file(str(file), device="cpu")
        except Exception as e:
            raise DetectorError(f"cannot read weights {file}: {e}; re-download or re-export it") from e
    elif file.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
        except Exception as e:
            raise DetectorError(
                f"cannot read {file} safely (weights_only load refused it: {type(e).__name__}); convert it to "
                ".safetensors (only plain tensor state dicts are accepted, TorchScript/JIT archives are not)"
            ) from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    else:
        raise DetectorError(f"unsupported weight file {file}; use .safetensors (or a plain .pt/.bin state dict)")
    if not isinstance(state, dict) or not state:
        raise DetectorError(f"{file} holds no state dict of tensors; point --pretrained at CLIP weights")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    from open_clip.model import (  # open_clip: see import_open_clip
        convert_to_custom_text_state_dict,
        resize_pos_embed,
    )

    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and model.logit_scale.ndim != state["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise DetectorError(f"weights {file} do not fit the model: {first}; check --backbone matches the file") from e


def load_backbone(
    name: str = DEFAULT_NAME,
    pretrained: str | Path | None = DEFAULT_PRETRAINED,
    device: str = "cpu",
    precision: str = "fp32",
    taps: Sequence[float | int] | None = None,
    vv_blocks: int | str | None = None,
    expected_sha256: str | None = None,
) -> Backbone:
    """Build the frozen ``Backbone``.

    ``name``: an open_clip model name or a path to a JSON model config (registered under its file stem).
    ``pretrained``: "none" (random weights), an open_clip tag (downloaded through open_clip, needs the network or
    a cache) or a local weight file/folder (safetensors; a torch pickle only through ``weights_only`` loading).
    ``precision``: fp32, bf16 or fp16 (fp16 needs CUDA).  ``taps``: see ``resolve_taps``.
    ``vv_blocks``: final blocks with a V-V branch: a number, "half", or None/"all" (every block, public).
    A tag's file is found and verified by ``detector.method.weights.fetch_weights`` (the right file for
    ``laion400m_e32``, its release checksum); the SHA-256 of the loaded file is ``Backbone.weights_sha256``
    (None for random weights). ``expected_sha256`` (a checkpoint's record): a different file is an error.
    """
    open_clip = import_open_clip()
    dev = _check_device(device, precision)
    model_name = _resolve_name(str(name))
    tag, local = _locate_weights(open_clip, model_name, pretrained)
    with quiet_open_clip_logs(open_clip):  # open_clip logs a warning for random init; we say it ourselves
        model, sha256 = _create_model(open_clip, model_name, tag, local, precision)
    if expected_sha256 and sha256 != expected_sha256:
        got = f"SHA-256 {sha256[:12]}..." if sha256 else "random weights"
        raise DetectorError(f"the checkpoint was trained on CLIP weights {name}/{tag} with SHA-256 "
                            f"{expected_sha256[:12]}..., but the weights found now have {got}; load the same file "
                            "(pass it to --pretrained) or retrain")
    model = model.to(dev)
    tokenizer = open_clip.get_tokenizer(model_name)
    backbone = Backbone(model, tokenizer, model_name, tag, taps=taps, vv_blocks=vv_blocks)
    backbone.weights_sha256 = sha256
    return backbone


def _check_device(device: str, precision: str) -> torch.device:
    """The torch device, refused before any weights are read where it or the precision cannot run here."""
    if precision not in PRECISIONS:
        raise DetectorError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DetectorError(f"device '{device}' is not a torch device; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DetectorError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    if precision == "fp16" and dev.type == "cpu":
        raise DetectorError("fp16 is not supported on CPU; use --precision bf16 or fp32 there")
    return dev


def _locate_weights(open_clip: Any, model_name: str, pretrained: str | Path | None) -> tuple[str, Path | None]:
    """(tag, local weight file or None): "none" (random), an existing file/folder, or a tag open_clip knows for
    this model; anything else is refused here, before a download is tried."""

    if is_random_weights(pretrained):
        return RANDOM_WEIGHTS, None
    tag = str(pretrained)
    p = Path(tag).expanduser()
    if p.exists():
        return tag, _weight_file(p)
    if os.sep in tag or tag.endswith((".safetensors",) + PICKLE_SUFFIXES):
        raise DetectorError(f"weights {p} not found; give an existing file/folder, an open_clip tag or 'none'")
    if not open_clip.get_pretrained_cfg(model_name, tag):
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none known"
        raise DetectorError(f"'{tag}' is not a weights tag of {model_name} (tags: {known}) nor a local path")
    return tag, None


def _create_model(open_clip: Any, model_name: str, tag: str, local: Path | None, precision: str
                  ) -> tuple[nn.Module, str | None]:
    """(CLIP on the CPU, SHA-256 of its weights file or None for random weights). A tag's file comes verified
    from ``fetch_weights`` and keeps the tag's preprocessing (mean, std, interpolation)."""

    if tag == RANDOM_WEIGHTS or local is not None:
        model = open_clip.create_model(model_name, pretrained=None, precision=precision, device="cpu")
        if local is None:
            return model, None
        _load_local_weights(model, local)
        return model, file_sha256(local)
    file, sha256 = fetch_weights(model_name, tag)
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    pp = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    try:
        model = open_clip.create_model(model_name, pretrained=str(file), precision=precision, device="cpu",
                                       force_preprocess_cfg=pp)
    except Exception as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise DetectorError(f"cannot load the weights {file} of {model_name}/{tag} ({type(e).__name__}: "
                            f"{first}); delete the file and download it again") from e
    return model, sha256


@contextmanager
def quiet_open_clip_logs(open_clip: Any) -> Iterator[None]:
    """Drop open_clip's log records below ERROR while the block runs; every other logger is left as it is.

    Why: open_clip warns about random initialisation (``load_backbone`` says it itself) and logs INFO lines while
    it builds a model. It logs through the ROOT logger (``logging.warning(...)`` in open_clip/factory.py), so
    raising the root level would silence every library in the process for that time; instead a filter on the
    root logger drops only records made in open_clip's own files (a filter on a logger sees only the records
    logged on it, not those its children propagate), and the "open_clip" logger's level covers a version that
    logs through ``getLogger(__name__)``. Both are undone on exit, also on an error.
    """

    folder = os.path.join(os.path.dirname(os.path.abspath(open_clip.__file__)), "")

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not os.path.abspath(record.pathname).startswith(folder)

    root, named = logging.getLogger(), logging.getLogger("open_clip")
    level = named.level
    root.addFilter(keep)
    named.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        named.setLevel(level)
        root.removeFilter(keep)
