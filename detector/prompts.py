"""MLLP: multi-level learnable prompts (PromptAD-style prompts extended to the MFSC caption levels).

Groups come from a class's MFSC record (``texts`` of a ``classes`` row): the image caption, the
background, one per component, and the attribute levels relation/colour/texture/shape. Each group
has three prompt families:

- normal ``[ctx][D]``: the shared learnable normal context (n_ctx vectors, n_pro copies) + a normal text;
- handcrafted abnormal ``[ctx][D~]``: the context + an abnormal text of the record (replacement);
- learned abnormal ``[ctx][abnormal token][D]``: the context + learnable abnormal tokens (n_pro_ab
  variants of n_ctx_ab vectors) + a normal text (concatenation).

Region groups (those MLSA aligns with token regions) are "image", "background" and the components.
The attribute groups are not regions: they are mixed into the "image" group through 8 learnable
sigmoid gates (normal and abnormal x relation/colour/texture/shape).

Gate modes. ``features`` (default): each image prompt's encoded, normalised feature gets
``sum_a sigmoid(g_a) * t_a`` added (t_a = the attribute's normal, resp. abnormal, prototype) and is
renormalised. ``tokens``: the public code's variant, which adds the attribute prompts' token-embedding
sequences to the image prompt's sequence position by position before the encoder. Features is the
default because different sentences' tokens do not align position by position (the i-th word of the
caption has nothing to do with the i-th word of the colour sentence, and their EOT tokens sit at
different places), whereas a weighted sum in the joint text-image feature space is well defined and
keeps each sentence's meaning as CLIP encodes it. Gates of a dropped or absent attribute level stay in
the parameters (and checkpoints) but are unused.

Class-name-only mode (``groups_from_class_name``) builds one "image" group from templates: this is
PromptAD, the baseline and ablation.

All prompts of all groups are encoded in one batch per forward; the texts are tokenized once at
construction. The frozen CLIP is held by reference (not a submodule), so ``state_dict()`` holds exactly
the trained tensors: ``ctx``, ``abnormal_tokens`` and ``gates``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.text_encoder import TextTower, tokenize_with_placeholders

IMAGE = "image"
BACKGROUND = "background"
COMPONENT = "component"
ATTRIBUTE_LEVELS = ("relation", "colour", "texture", "shape")
LEVELS = (IMAGE, BACKGROUND, COMPONENT, *ATTRIBUTE_LEVELS)
GATE_MODES = ("features", "tokens")

NORMAL, HANDCRAFTED, LEARNED = 0, 1, 2  # prompt families


@dataclass
class PromptConfig:
    """MLLP sizes and switches (paper values as defaults; n_pro = 3 for image-level training)."""

    n_ctx: int = 4  # learnable normal context vectors
    n_pro: int = 1  # copies of the normal context
    n_ctx_ab: int = 1  # learnable abnormal tokens per variant
    n_pro_ab: int = 4  # variants of the abnormal tokens
    init_std: float = 0.02  # N(0, init_std) initialisation of the learned vectors
    gate_mode: str = "features"  # "features" (default, see module docstring) or "tokens" (public code)
    drop_levels: tuple[
        str, ...
    ] = ()  # ablations: e.g. ("component",), ("relation", "colour", "texture", "shape")
    gate_init: float = 0.0  # gate logits start here (sigmoid(0) = 0.5)
    truncate: bool = True  # cut padding after the last EOT before the encoder (identical results, faster)

    def __post_init__(self) -> None:
        self.drop_levels = tuple(self.drop_levels)
        for name in ("n_ctx", "n_pro", "n_pro_ab", "n_ctx_ab"):
            if int(getattr(self, name)) < 1:
                raise DetectorError(f"prompt config: {name} must be at least 1, got {getattr(self, name)}")
        if self.gate_mode not in GATE_MODES:
            raise DetectorError(
                f"prompt config: gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}"
            )
        _check_drop_levels(self.drop_levels)


@dataclass
class PromptGroup:
    """One group of prompts: a level, a name, its normal texts and its handcrafted abnormal texts."""

    level: str
    name: str
    normal: list[str]
    abnormal: list[str]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for checkpoints)."""
        return asdict(self)


@dataclass
class TextFeatures:
    """Encoded prompts of the region groups ("image", "background", components), all L2-normalised."""

    names: list[str]
    levels: list[str]
    normal: torch.Tensor  # (G, D) normal prototypes
    normal_each: list[torch.Tensor]  # per group (P_g, D)
    handcrafted: list[torch.Tensor]  # per group (A_g, D)
    learned: list[torch.Tensor]  # per group (L_g, D)
    abnormal: torch.Tensor  # (G, D) prototypes of handcrafted + learned
    gates: torch.Tensor | None = None  # (2, 4) sigmoid gate values used (normal/abnormal x attribute)
    used_attributes: list[str] = field(default_factory=list)  # attribute levels mixed into "image"

    def index(self, name: str) -> int:
        """Position of a region group by name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise DetectorError(f"no prompt group named {name!r} (groups: {', '.join(self.names)})") from None


def _check_drop_levels(drop_levels: tuple[str, ...]) -> None:
    for level in drop_levels:
        if level not in LEVELS:
            raise DetectorError(f"cannot drop unknown prompt level {level!r}; levels: {', '.join(LEVELS)}")
        if level == IMAGE:
            raise DetectorError("the image level cannot be dropped: every model scores images against it")


def _entries(texts: Any) -> list[dict[str, Any]]:
    """``texts`` as a list of dicts, whether stored as list-of-structs or as a dict of columns."""
    if isinstance(texts, dict):
        keys = list(texts)
        n = len(texts[keys[0]]) if keys else 0
        return [{k: texts[k][i] for k in keys} for i in range(n)]
    return list(texts or [])


def groups_from_record(
    record: dict[str, Any], drop_levels: tuple[str, ...] | list[str] = ()
) -> list[PromptGroup]:
    """Prompt groups of a caption record (a ``classes`` row): image, background, components, then attributes.

    Levels in ``drop_levels`` are left out (ablations). Texts are stripped; empty ones are skipped.
    """
    drop = tuple(drop_levels)
    _check_drop_levels(drop)
    cls = record.get("class_name", "?")
    entries = _entries(record.get("texts"))
    if not entries:
        raise DetectorError(
            f"caption record of class {cls!r} has no texts; rebuild the caption dataset with mfsc build"
        )
    by_level: dict[str, list[PromptGroup]] = {lv: [] for lv in LEVELS}
    for e in entries:
        level = str(e.get("level", ""))
        if level not in LEVELS:
            raise DetectorError(
                f"caption record of class {cls!r}: unknown text level {level!r}; expected one of {', '.join(LEVELS)}"
            )
        normal = [str(t).strip() for t in e.get("normal") or [] if str(t).strip()]
        abnormal = [str(t).strip() for t in e.get("abnormal") or [] if str(t).strip()]
        name = str(e.get("group") or "") if level == COMPONENT else level
        if level == COMPONENT and not name:
            raise DetectorError(f"caption record of class {cls!r}: a component text entry has no group name")
        if not normal:
            raise DetectorError(
                f"caption record of class {cls!r}: group {name!r} ({level}) has no normal text; rebuild the captions"
            )
        by_level[level].append(PromptGroup(level=level, name=name, normal=normal, abnormal=abnormal))
    if len(by_level[IMAGE]) != 1:
        raise DetectorError(
            f"caption record of class {cls!r} has {len(by_level[IMAGE])} image text entries, expected exactly one"
        )
    groups = [g for lv in LEVELS if lv not in drop for g in by_level[lv]]
    names = [g.name for g in groups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetectorError(
            f"caption record of class {cls!r}: duplicate prompt groups {dupes}; rebuild the captions"
        )
    return groups


_NORMAL_TEMPLATES = (
    "a photo of a flawless {}",
    "a close-up photo of an intact {}",
    "a photo of a {} in perfect condition",
    "a clean {} without any defect",
    "an unblemished {}",
    "a good {}",
)
_ABNORMAL_STATES = (
    "damaged {}",
    "{} with defect",
    "broken {}",
    "{} with a crack",
    "scratched {}",
    "{} with contamination",
    "{} with a missing part",
    "deformed {}",
)


def groups_from_class_name(object_name: str) -> list[PromptGroup]:
    """The PromptAD baseline's prompts: one "image" group built only from the class name, no MFSC."""
    noun = " ".join(str(object_name).replace("_", " ").split())
    if not noun:
        raise DetectorError("class-name-only prompts need a non-empty object name")
    return [
        PromptGroup(
            level=IMAGE,
            name=IMAGE,
            normal=[t.format(noun) for t in _NORMAL_TEMPLATES],
            abnormal=[t.format(noun) for t in _ABNORMAL_STATES],
        )
    ]


class MultiLevelPrompts(torch.nn.Module):
    """The learnable prompts of all groups of one class, encoded through a frozen open_clip text tower."""

    def __init__(
        self, clip_model: torch.nn.Module, tokenizer: Any, groups: list[PromptGroup], config: PromptConfig
    ):
        super().__init__()
        self.config = config
        groups = [g for g in groups if g.level not in config.drop_levels]
        if sum(g.level == IMAGE for g in groups) != 1:
            raise DetectorError("prompt groups need exactly one 'image' group (use groups_from_record)")
        for g in groups:
            if g.level not in LEVELS:
                raise DetectorError(f"prompt group {g.name!r} has unknown level {g.level!r}")
            if not g.normal:
                raise DetectorError(f"prompt group {g.name!r} has no normal text")
        # region groups first (image, background, components in the given order), attributes after
        region = [g for g in groups if g.level not in ATTRIBUTE_LEVELS]
        region = (
            [g for g in region if g.level == IMAGE]
            + [g for g in region if g.level == BACKGROUND]
            + [g for g in region if g.level == COMPONENT]
        )
        attrs = [g for lv in ATTRIBUTE_LEVELS for g in groups if g.level == lv]
        if any(sum(g.level == lv for g in attrs) > 1 for lv in ATTRIBUTE_LEVELS):
            raise DetectorError(
                "at most one prompt group per attribute level (relation/colour/texture/shape)"
            )
        self.groups: list[PromptGroup] = region + attrs
        self.n_region = len(region)

        tower = TextTower.from_clip(clip_model)
        tower.freeze()
        self._tower = (tower,)  # a tuple keeps the frozen CLIP out of this module's state_dict and .to()
        width = tower.width
        c = config
        self.ctx = torch.nn.Parameter(torch.randn(c.n_pro, c.n_ctx, width) * c.init_std)
        self.abnormal_tokens = torch.nn.Parameter(torch.randn(c.n_pro_ab, c.n_ctx_ab, width) * c.init_std)
        self.gates = torch.nn.Parameter(torch.full((2, len(ATTRIBUTE_LEVELS)), float(c.gate_init)))

        # one row per prompt; rows of one (group, family) are contiguous
        texts: list[str] = []
        n_ph: list[int] = []
        ctx_idx: list[int] = []
        ab_idx: list[int] = []
        self.slices: list[list[tuple[int, int]]] = []
        for g in self.groups:
            spans = []
            for family in (NORMAL, HANDCRAFTED, LEARNED):
                start = len(texts)
                for p in range(c.n_pro):
                    if family == LEARNED:
                        for v in range(c.n_pro_ab):
                            for t in g.normal:
                                texts.append(t)
                                n_ph.append(c.n_ctx + c.n_ctx_ab)
                                ctx_idx.append(p)
                                ab_idx.append(v)
                    else:
                        for t in g.normal if family == NORMAL else g.abnormal:
                            texts.append(t)
                            n_ph.append(c.n_ctx)
                            ctx_idx.append(p)
                            ab_idx.append(-1)
                spans.append((start, len(texts)))
            self.slices.append(spans)

        ids, self.offset = tokenize_with_placeholders(tokenizer, tower, texts, n_ph)
        pool = tower.pool_positions(ids)
        length = ids.shape[1]
        if c.truncate and tower.can_truncate():
            # keep the spliced positions even where pooling comes earlier ("first")
            length = max(int(pool.max()) + 1, self.offset + max(n_ph))
            ids = ids[:, :length]
        self.seq_len = length
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("pool_index", pool, persistent=False)
        self.register_buffer("ctx_index", torch.tensor(ctx_idx, dtype=torch.long), persistent=False)
        ab = torch.tensor(ab_idx, dtype=torch.long)
        self.register_buffer("ab_index", ab.clamp(min=0), persistent=False)
        self.register_buffer("is_learned", ab >= 0, persistent=False)
        self.has_learned_rows = bool((ab >= 0).any())
        self.texts = texts
        self.checkpoint_text = False  # recompute the text blocks in backward (training memory; train.py sets it)

        self.attr_pos = {g.level: i for i, g in enumerate(self.groups) if g.level in ATTRIBUTE_LEVELS}
        self.used_attributes = [lv for lv in ATTRIBUTE_LEVELS if lv in self.attr_pos]
        if c.gate_mode == "tokens":
            self.register_buffer("token_mix", self._token_mix_matrix(len(texts)), persistent=False)

    # -- construction helpers -------------------------------------------------
    def _token_mix_matrix(self, n_rows: int) -> torch.Tensor:
        """(2, 4, B, B): row i of an image prompt averages the attribute rows of the matching family."""
        mix = torch.zeros(2, len(ATTRIBUTE_LEVELS), n_rows, n_rows)
        img = self.slices[0]
        for a, level in enumerate(ATTRIBUTE_LEVELS):
            if level not in self.attr_pos:
                continue
            spans = self.slices[self.attr_pos[level]]
            for gate_row, img_spans, attr_spans in (
                (0, [img[NORMAL]], [spans[NORMAL]]),
                (1, [img[HANDCRAFTED], img[LEARNED]], [spans[HANDCRAFTED], spans[LEARNED]]),
            ):
                cols = [j for s, e in attr_spans for j in range(s, e)]
                if not cols:
                    continue
                for s, e in img_spans:
                    for i in range(s, e):
                        mix[gate_row, a, i, cols] = 1.0 / len(cols)
        return mix

    @property
    def tower(self) -> TextTower:
        """The frozen text tower the prompts are encoded with."""
        return self._tower[0]

    def region_names(self) -> list[str]:
        """Names of the region groups in the order of TextFeatures."""
        return [g.name for g in self.groups[: self.n_region]]

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (groups and config) for checkpoints."""
        cfg = asdict(self.config)
        cfg["drop_levels"] = list(cfg["drop_levels"])
        return {"config": cfg, "groups": [g.to_dict() for g in self.groups]}

    # -- encoding ---------------------------------------------------------------
    def token_embeddings(self) -> torch.Tensor:
        """Token embeddings (B, L, W) of every prompt with the learned vectors spliced in."""
        tower = self.tower
        c = self.config
        x = tower.embed(self.token_ids)
        ctx = self.ctx.to(x.dtype)[self.ctx_index]  # (B, n_ctx, W)
        parts = [x[:, : self.offset], ctx]
        end = self.offset + c.n_ctx
        if self.has_learned_rows:
            ab = self.abnormal_tokens.to(x.dtype)[self.ab_index]  # (B, n_ctx_ab, W)
            here = x[:, end : end + c.n_ctx_ab]
            parts.append(torch.where(self.is_learned[:, None, None], ab, here))
            end += c.n_ctx_ab
        parts.append(x[:, end:])
        return torch.cat(parts, dim=1)

    def encode_prompts(self) -> torch.Tensor:
        """L2-normalised features (B, D) of every prompt row (in tokens mode: image rows already mixed)."""
        x = self.token_embeddings()
        if self.config.gate_mode == "tokens" and self.used_attributes:
            weights = torch.einsum(
                "fa,faij->ij", torch.sigmoid(self.gates).to(self.token_mix), self.token_mix
            )
            b, length, w = x.shape
            x = x + (weights.to(x.dtype) @ x.reshape(b, length * w)).reshape(b, length, w)
        return self.tower.encode_embeddings(x, self.pool_index, checkpoint=self.checkpoint_text)

    def forward(self) -> TextFeatures:
        """Encode every prompt with the current learned vectors and build the region groups' features."""
        feats = self.encode_prompts()

        def rows(g: int, fam: int) -> torch.Tensor:
            s, e = self.slices[g][fam]
            return feats[s:e]

        normal_each = [rows(g, NORMAL) for g in range(self.n_region)]
        handcrafted = [rows(g, HANDCRAFTED) for g in range(self.n_region)]
        learned = [rows(g, LEARNED) for g in range(self.n_region)]
        sig = torch.sigmoid(self.gates)
        if self.config.gate_mode == "features" and self.used_attributes:
            add_n = feats.new_zeros(feats.shape[1])
            add_a = feats.new_zeros(feats.shape[1])
            for a, level in enumerate(ATTRIBUTE_LEVELS):
                if level not in self.attr_pos:
                    continue
                g = self.attr_pos[level]
                add_n = add_n + sig[0, a] * _prototype(rows(g, NORMAL))
                add_a = add_a + sig[1, a] * _prototype(torch.cat([rows(g, HANDCRAFTED), rows(g, LEARNED)]))
            normal_each[0] = F.normalize(normal_each[0] + add_n, dim=-1)
            handcrafted[0] = F.normalize(handcrafted[0] + add_a, dim=-1)
            learned[0] = F.normalize(learned[0] + add_a, dim=-1)
        normal = torch.stack([_prototype(t) for t in normal_each])
        abnormal = torch.stack([_prototype(torch.cat([h, l])) for h, l in zip(handcrafted, learned)])
        region = self.groups[: self.n_region]
        return TextFeatures(
            names=[g.name for g in region],
            levels=[g.level for g in region],
            normal=normal,
            normal_each=normal_each,
            handcrafted=handcrafted,
            learned=learned,
            abnormal=abnormal,
            gates=sig.detach(),
            used_attributes=list(self.used_attributes),
        )


def _prototype(features: torch.Tensor) -> torch.Tensor:
    """Normalised mean of normalised features (N, D) -> (D,)."""
    return F.normalize(features.mean(dim=0), dim=-1)


def count_prompts(groups: list[PromptGroup], config: PromptConfig) -> int:
    """Number of prompt rows MultiLevelPrompts encodes per forward (for benchmarks and logs)."""
    c = config
    per = [
        c.n_pro * (len(g.normal) * (1 + c.n_pro_ab) + len(g.abnormal))
        for g in groups
        if g.level not in c.drop_levels
    ]
    return int(math.fsum(per))
