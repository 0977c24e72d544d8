"""FineGrainedAD: the trained few-shot anomaly detector and its inference (PAD, VAD, fusion).

One object per class holds
- the frozen Backbone (open_clip CLIP with the V-V path and the intermediate taps),
- two MLLP prompt sets: ``pixel_prompts`` (n_pro = 1, trained on region-weighted patch tokens) and
  ``image_prompts`` (n_pro = 3, trained on the CLS feature), as in the paper,
- the MLSA region weights of the shots (kept for the record, used in training),
- the visual memory: the shots' tap tokens, L2-normalised, one (M, C) tensor per tapped block,
- the cached text features of both prompt sets (computed once after training; inference never runs
  the text encoder).

Inference, for a batch of RGB images:
- textual map (PAD): every V-V patch token is matched to the region group whose NORMAL prototype is
  the most similar (dynamic token-wise matching without any extra parameters, so nothing untrained
  can leak in), then scored softmax(tau * [<f, t_n^g>, <f, t_a^g>])[abnormal] with that group's
  normal and abnormal prototypes;
- visual map (VAD): per tapped block, min over the memory of (1 - cos) / 2, averaged over blocks;
- fused map: harmonic mean of the two maps on the patch grid, bilinear upsampling to the evaluation
  resolution, Gaussian smoothing with sigma 4 (separable torch convolution, kernel 33 = 2 * round(4
  sigma) + 1, the edge mirrored as scipy's gaussian_filter does);
- image score: harmonic mean of the CLS text score and the max of the visual map, taken after bilinear
  upsampling to the evaluation resolution and before smoothing (``image_visual_max="upsampled"``, public), or
  on the patch grid (``"grid"``, ours: independent of the resolution). The CLS text score is
  softmax(tau * [<cls, t_n^g>, <cls, t_a^g>])[abnormal] with the image prompts, g the group matched to the
  CLS feature the same way patch tokens are (``image_score_group="matched"``, public), or the image group
  (``"image"``, ours).
The fusion rule is fixed here, never chosen on test data. ``branch`` = "text" | "visual" scores one
branch alone (maps from that branch; scores: the CLS text score, resp. the visual max).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.errors import DetectorError
from detector.method.backbone import Backbone, BackboneOutput
from detector.method.choices import IMAGE, IMAGE_SCORE_GROUPS, IMAGE_VISUAL_MAX
from detector.method.prompts import (
    MultiLevelPrompts,
    PromptConfig,
    groups_from_class_name,
    groups_from_record,
)
from detector.method.scoring import BRANCHES, DEFAULT_BRANCH, MAP_RESOLUTION

SMOOTH_SIGMA = 4.0
EPS = 1e-8


@dataclass
class Prediction:
    """Image scores (B,) and anomaly maps (B, R, R) float32, both higher = more anomalous."""

    scores: np.ndarray
    maps: np.ndarray
    token_groups: np.ndarray | None = None  # (B, h, w) int64: the region group each patch token is matched to
    tokens: np.ndarray | None = None  # (B, h, w, D) float32: the unit V-V patch tokens the text branch scores


def harmonic_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise 2ab / (a + b); 0 where both are 0."""
    return 2.0 * a * b / (a + b).clamp_min(EPS)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius round(4 sigma) (scipy's default truncation): 33 taps for sigma 4."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def _pad_symmetric(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Pad by mirroring INCLUDING the edge sample (d c b a | a b c d), scipy.ndimage's "reflect" mode."""
    n = x.shape[dim]
    if n >= r:
        lo, hi = x.narrow(dim, 0, r).flip(dim), x.narrow(dim, n - r, r).flip(dim)
        return torch.cat([lo, x, hi], dim=dim)
    pad = [0, 0, 0, 0]
    pad[(3 - dim) * 2 - 2: (3 - dim) * 2] = [r, r]
    return F.pad(x, pad, mode="replicate")  # smaller than the kernel radius: replicate the edge


def gaussian_smooth(maps: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps, boundary as scipy's gaussian_filter (the public code)."""
    if sigma <= 0:
        return maps
    k = gaussian_kernel1d(sigma).to(maps.device, maps.dtype)
    r = (k.numel() - 1) // 2
    x = maps[:, None]
    x = F.conv2d(_pad_symmetric(x, r, 3), k.view(1, 1, 1, -1))
    x = F.conv2d(_pad_symmetric(x, r, 2), k.view(1, 1, -1, 1))
    return x[:, 0]


def memory_distance(tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """VAD of unit tokens (..., N, C) against a unit memory (M, C): min over the memory of (1 - cos) / 2."""
    best = (tokens @ memory.T).max(-1).values
    return (1.0 - best).clamp(0.0, 2.0) / 2.0  # rounding can push cos past 1


def two_way_abnormal_prob(sim_normal: torch.Tensor, sim_abnormal: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(tau * [s_n, s_a])[1], written as the equivalent sigmoid(tau * (s_a - s_n))."""
    return torch.sigmoid(tau * (sim_abnormal - sim_normal))


class FineGrainedAD(nn.Module):
    """The detector for one class; build it with ``detector.run.train.train`` or ``load_detector``."""

    def __init__(self, backbone: Backbone, pixel_prompts: MultiLevelPrompts, image_prompts: MultiLevelPrompts,
                 region_weights: torch.Tensor, memory: list[torch.Tensor], tau: float,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone  # frozen wrapper (not a submodule: its weights are never trained or saved)
        self.pixel_prompts = pixel_prompts
        self.image_prompts = image_prompts
        self.tau = float(tau)
        self.meta: dict[str, Any] = dict(meta or {})
        cfg = self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}
        self.image_score_group = str(cfg.get("image_score_group", "matched"))
        self.image_visual_max = str(cfg.get("image_visual_max", "upsampled"))
        if self.image_visual_max not in IMAGE_VISUAL_MAX:
            raise DetectorError(f"image_visual_max={self.image_visual_max!r} is not one of "
                                f"{', '.join(IMAGE_VISUAL_MAX)}")
        if self.image_score_group not in IMAGE_SCORE_GROUPS:
            raise DetectorError(f"image_score_group={self.image_score_group!r} is not one of "
                                f"{', '.join(IMAGE_SCORE_GROUPS)}")
        self.register_buffer("region_weights", region_weights.detach().float().clone())
        self.memory = [F.normalize(m.detach().float(), dim=-1) for m in memory]
        self.pixel_names: list[str] = []
        self.image_names: list[str] = []
        self.register_buffer("pixel_normal", torch.zeros(0))
        self.register_buffer("pixel_abnormal", torch.zeros(0))
        self.register_buffer("image_normal", torch.zeros(0))
        self.register_buffer("image_abnormal", torch.zeros(0))

    # ---- text features -------------------------------------------------------------------------
    @torch.no_grad()
    def refresh_text_features(self) -> None:
        """Encode both prompt sets once and cache their (normalised) group prototypes."""
        px = self.pixel_prompts()
        im = self.image_prompts()
        self.pixel_names, self.image_names = list(px.names), list(im.names)
        self.pixel_normal = px.normal.detach().float().clone()
        self.pixel_abnormal = px.abnormal.detach().float().clone()
        self.image_normal = im.normal.detach().float().clone()
        self.image_abnormal = im.abnormal.detach().float().clone()

    def _check_ready(self) -> None:
        if self.pixel_normal.numel() == 0 or self.image_normal.numel() == 0:
            raise DetectorError("the detector has no text features yet: train it or load a checkpoint")

    # ---- branches ------------------------------------------------------------------------------
    def match_groups(self, patches: torch.Tensor) -> torch.Tensor:
        """Dynamic token-wise matching: index (B, N) of the region group with the most similar normal prototype."""
        f = F.normalize(patches.float(), dim=-1)
        return (f @ self.pixel_normal.T).argmax(-1)

    def textual_map(self, patches: torch.Tensor) -> torch.Tensor:
        """PAD: abnormal probability (B, N) of each V-V patch token against its matched group's prototypes."""
        self._check_ready()
        f = F.normalize(patches.float(), dim=-1)
        sim_n = f @ self.pixel_normal.T  # (B, N, G)
        sim_a = f @ self.pixel_abnormal.T
        g = sim_n.argmax(-1, keepdim=True)
        return two_way_abnormal_prob(sim_n.gather(-1, g)[..., 0], sim_a.gather(-1, g)[..., 0], self.tau)

    def visual_map(self, taps: list[torch.Tensor], per_image: bool = True) -> torch.Tensor:
        """VAD: mean over tapped blocks of min over the shots' memory of (1 - cos) / 2, shape (B, N).

        ``per_image`` (default) compares one image at a time with the memory, to bound the (N, M) similarity
        held at once; False does the whole batch in one product, the form a graph with a dynamic batch axis
        needs (``detector.deploy.export``: a tracer would unroll the loop to the example's batch size). The
        formula is the same either way (``memory_distance``)."""
        if len(taps) != len(self.memory):
            raise DetectorError(f"{len(taps)} tapped blocks but a memory of {len(self.memory)}")
        out = []
        for tok, mem in zip(taps, self.memory):
            q = F.normalize(tok.float(), dim=-1)
            mem = mem.to(q.device)
            out.append(torch.stack([memory_distance(qi, mem) for qi in q]) if per_image
                       else memory_distance(q, mem))
        return torch.stack(out).mean(0)

    def image_text_score(self, cls: torch.Tensor) -> torch.Tensor:
        """CLS text score (B,): abnormal probability against the image prompts' matched (or "image") group."""
        self._check_ready()
        f = F.normalize(cls.float(), dim=-1)
        sim_n = f @ self.image_normal.T  # (B, G)
        sim_a = f @ self.image_abnormal.T
        if self.image_score_group == "matched":
            g = sim_n.argmax(-1, keepdim=True)
        else:
            i = self.image_names.index(IMAGE) if IMAGE in self.image_names else 0
            g = torch.full((f.shape[0], 1), i, dtype=torch.long, device=f.device)
        return two_way_abnormal_prob(sim_n.gather(-1, g)[:, 0], sim_a.gather(-1, g)[:, 0], self.tau)

    # ---- inference -----------------------------------------------------------------------------
    @torch.no_grad()
    def score_features(self, out: BackboneOutput, resolution: int = MAP_RESOLUTION, branch: str = DEFAULT_BRANCH,
                       per_image: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores (B,) and maps (B, R, R) from a BackboneOutput (fused, text or visual branch); ``per_image``:
        see ``visual_map``."""
        if branch not in BRANCHES:
            raise DetectorError(f"unknown branch {branch!r}: use one of {', '.join(BRANCHES)}")
        h, w = out.grid
        b = out.patches.shape[0]
        text_grid = self.textual_map(out.patches).reshape(b, h, w) if branch != "visual" else None
        vis_grid = self.visual_map(out.taps, per_image).reshape(b, h, w) if branch != "text" else None
        cls_score = self.image_text_score(out.cls) if branch != "visual" else None
        vis_max = None
        if vis_grid is not None:
            if self.image_visual_max == "upsampled":  # public: max of the unsmoothed map at the eval size
                up = F.interpolate(vis_grid[:, None], size=(resolution, resolution), mode="bilinear",
                                   align_corners=False)
                vis_max = up.flatten(1).max(1).values
            else:
                vis_max = vis_grid.flatten(1).max(1).values
        if branch == "text":
            grid, score = text_grid, cls_score
        elif branch == "visual":
            grid, score = vis_grid, vis_max
        else:
            grid = harmonic_mean(text_grid, vis_grid)
            score = harmonic_mean(cls_score, vis_max)
        maps = F.interpolate(grid[:, None], size=(resolution, resolution), mode="bilinear",
                             align_corners=False)[:, 0]
        return score, gaussian_smooth(maps, SMOOTH_SIGMA)

    @torch.no_grad()
    def abnormal_text_features(self) -> dict[str, tuple[list[str], list[str], np.ndarray]]:
        """Per region group (model order): its normal texts, its handcrafted abnormal texts and their unit
        features (A, D) with the trained context (copies averaged). Runs the text encoder once; named
        defects (``detector.eval.defects``) compare a region's tokens with them."""
        prompts = self._naming_prompts()
        feats = prompts()
        out = {}
        for g, name in enumerate(feats.names):
            group = prompts.groups[g]
            rows = feats.handcrafted[g].float()
            rows = rows.reshape(-1, len(group.abnormal), rows.shape[-1]).mean(0) if group.abnormal else rows
            out[name] = (list(group.normal), list(group.abnormal), F.normalize(rows, dim=-1).cpu().numpy())
        return out

    def _naming_prompts(self) -> MultiLevelPrompts:
        """The prompt set whose handcrafted texts name defect states: the trained pixel set, or, when training kept
        one drawn text per component (``component_texts="one"``, the public count), the same trained vectors over
        every text of the caption record, so that naming can still tell the states apart."""
        cfg = self.meta.get("config") if isinstance(self.meta.get("config"), dict) else {}
        record = self.meta.get("record")
        if cfg.get("component_texts", "all") != "one" or not isinstance(record, dict):
            return self.pixel_prompts
        groups = groups_from_record(record, list(self.meta.get("drop_levels") or []),
                                    extra_texts=bool(cfg.get("extra_texts")), component_texts="all")
        with torch.random.fork_rng(devices=[]):  # the new set's initial draw must not move the caller's RNG
            full = MultiLevelPrompts(self.backbone.model, self.backbone.tokenizer, groups, self.pixel_prompts.config)
        full.load_state_dict(self.pixel_prompts.state_dict())
        return full.to(next(self.pixel_prompts.parameters()).device).requires_grad_(False)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], resolution: int = MAP_RESOLUTION, branch: str = DEFAULT_BRANCH,
                batch_size: int = 8, tokens: bool = False) -> Prediction:
        """Score RGB uint8 images (H, W, 3): image scores (B,) and maps (B, R, R) float32, batched.
        ``tokens``: also each patch token's matched group and unit feature (for named defects)."""
        self._check_ready()
        scores, maps, groups, feats = [], [], [], []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            for img in batch:
                if not (isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[2] == 3
                        and img.dtype == np.uint8):
                    raise DetectorError("predict expects RGB uint8 arrays (H, W, 3); load images with "
                                        "fsad_data.load_rgb")
            pixels = self.backbone.preprocess(batch)
            out = self.backbone.encode(pixels)
            s, m = self.score_features(out, resolution, branch)
            scores.append(s.float().cpu())
            maps.append(m.float().cpu())
            if tokens:
                h, w = out.grid
                groups.append(self.match_groups(out.patches).reshape(len(batch), h, w).cpu())
                feats.append(F.normalize(out.patches.float(), dim=-1).reshape(len(batch), h, w, -1).cpu())
        if not scores:
            return Prediction(np.zeros(0, np.float32), np.zeros((0, resolution, resolution), np.float32))
        extra = {"token_groups": torch.cat(groups).numpy(), "tokens": torch.cat(feats).numpy()} if tokens else {}
        return Prediction(torch.cat(scores).numpy().astype(np.float32),
                          torch.cat(maps).numpy().astype(np.float32), **extra)

    # ---- checkpoint ----------------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Every trained parameter, the region weights, the visual memory and the cached text features."""
        self._check_ready()
        t: dict[str, torch.Tensor] = {}
        for prefix, mod in (("pixel_prompts.", self.pixel_prompts), ("image_prompts.", self.image_prompts)):
            for name, p in mod.state_dict().items():  # the prompt modules hold only trained tensors
                t[prefix + name] = p
        t["region_weights"] = self.region_weights
        for i, m in enumerate(self.memory):
            t[f"memory.{i}"] = m
        for name in ("pixel_normal", "pixel_abnormal", "image_normal", "image_abnormal"):
            t[f"text.{name}"] = getattr(self, name)
        return {k: v.detach().float().cpu().contiguous().clone() for k, v in t.items()}


def build_prompt_sets(backbone: Backbone, record: dict | None, object_name: str, baseline: str | None,
                      drop_levels: list[str], pixel_config: dict, image_config: dict,
                      extra_texts: bool = False, component_texts: str = "all",
                      seed: int = 0) -> tuple[MultiLevelPrompts, MultiLevelPrompts]:
    """The two MLLP prompt sets for a class: from the MFSC record, or from the class name (PromptAD); both sets
    share the groups (and so the component texts drawn with ``seed``, ``prompts.draw_component_texts``)."""
    if baseline == "promptad":
        groups = groups_from_class_name(object_name)
    elif baseline is None:
        if record is None:
            raise DetectorError("no caption record: pass --captions, or --baseline promptad for class-name prompts")
        groups = groups_from_record(record, list(drop_levels), extra_texts=extra_texts,
                                    component_texts=component_texts, seed=seed)
    else:
        raise DetectorError(f"unknown baseline {baseline!r}: use 'promptad' or none")
    sets = []
    for cfg in (pixel_config, image_config):
        sets.append(MultiLevelPrompts(backbone.model, backbone.tokenizer, groups, PromptConfig(**cfg)))
    return sets[0], sets[1]
