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

Gate modes. ``tokens`` (default, the public code): the attribute prompts' token-embedding sequences are
added to the image prompt's sequence position by position before the encoder, each scaled by its
sigmoid gate, row by row as the public prompt learner pairs them: an image normal row gets the attribute
normal row with the same context copy, an image learned row the attribute learned row with the same
context copy and abnormal-token variant, and the k-th image handcrafted row (state-major order) the k-th
of the attribute's handcrafted rows ranked by their mean token embedding (the public top-k; where an
attribute has fewer such rows the ranking repeats). Gates start as N(0, 1) draws (``gate_init="randn"``),
as there. ``features`` (ours): each image prompt's encoded, normalised feature gets
``sum_a sigmoid(g_a) * t_a`` added (t_a = the attribute's normal, resp. abnormal, prototype) and is
renormalised; different sentences' tokens do not align position by position, whereas a weighted sum in
the joint feature space keeps each sentence's meaning. Gates of a dropped or absent attribute level stay
in the parameters (and checkpoints) but are unused.

Prototypes (``prototype``): ``raw_mean`` (public) normalises the mean of the RAW projected features of a
group's prompts; ``unit_mean`` (ours) the mean of the normalised ones. Individual prompt features are
always L2-normalised.

Prompt strings are ``[ctx] D.``: the public learner appends a "." to every description D (``period``; off
in the ``ours`` recipe, which uses the texts as the caption dataset writes them).

Extra texts (``groups_from_record(extra_texts=...)``): off (public) keeps only the image caption as the
image group's normal text and its first ``len(defect_states)`` abnormal texts (the caption with each defect
state, which ``mfsc`` writes first); on (ours) keeps the record's extra sentences ("a photo of a flawless
...", state templates, location/colour swaps).

Class-name-only mode (``groups_from_class_name``) builds one "image" group from templates: this is
PromptAD, the baseline and ablation.

All prompts of all groups are encoded in one batch per forward; the texts are tokenized once at
construction. The frozen CLIP is held by reference (not a submodule), so ``state_dict()`` holds exactly
the trained tensors: ``ctx``, ``abnormal_tokens`` and ``gates``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from detector.errors import DetectorError
from detector.method.choices import (
    ATTRIBUTE_LEVELS,
    BACKGROUND,
    COMPONENT,
    GATE_MODES,
    IMAGE,
    LEVELS,
    PROTOTYPES,
)
from detector.method.text_encoder import TextTower, Tokenizer, tokenize_with_placeholders

NORMAL, HANDCRAFTED, LEARNED = 0, 1, 2  # prompt families


@dataclass
class PromptConfig:
    """MLLP sizes and switches (paper values as defaults; n_pro = 3 for image-level training)."""

    n_ctx: int = 4  # learnable normal context vectors
    n_pro: int = 1  # copies of the normal context
    n_ctx_ab: int = 1  # learnable abnormal tokens per variant
    n_pro_ab: int = 4  # variants of the abnormal tokens
    init_std: float = 0.02  # N(0, init_std) initialisation of the learned vectors
    gate_mode: str = "tokens"  # "tokens" (public, default) or "features" (ours), see the module docstring
    drop_levels: tuple[
        str, ...
    ] = ()  # ablations: e.g. ("component",), ("relation", "colour", "texture", "shape")
    gate_init: float | str = "randn"  # gate logits: "randn" = N(0, 1) draws (public), or a constant
    prototype: str = "raw_mean"  # "raw_mean" (public) or "unit_mean" (ours), see the module docstring
    truncate: bool = True  # cut padding after the last EOT before the encoder (identical results, faster)
    period: bool = True  # append "." to every description D, as the public prompt strings "[ctx] D." (ours: off)

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
        if self.prototype not in PROTOTYPES:
            raise DetectorError(f"prompt config: prototype must be one of {PROTOTYPES}, got {self.prototype!r}")
        if isinstance(self.gate_init, str) and self.gate_init != "randn":
            raise DetectorError(f"prompt config: gate_init must be 'randn' or a number, got {self.gate_init!r}")


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
    learned_raw: list[torch.Tensor] | None = None  # per group (L_g, D), before normalisation (composition)

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
    record: dict[str, Any], drop_levels: tuple[str, ...] | list[str] = (), extra_texts: bool = False,
    component_texts: str = "all", seed: int = 0,
) -> list[PromptGroup]:
    """Prompt groups of a caption record (a ``classes`` row): image, background, components, then attributes.

    Levels in ``drop_levels`` are left out (ablations). Texts are stripped; empty ones are skipped.
    ``extra_texts`` False (public): the image group keeps only the caption and the caption-with-state texts
    (see the module docstring). ``component_texts`` "one" (public): each component keeps ONE of its handcrafted
    abnormal texts, drawn with ``seed`` (``draw_component_texts``); "all": every one (the default here, so that a
    checkpoint written before the option existed reads back as it was trained).
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
    if not extra_texts:
        img = by_level[IMAGE][0]
        n_states = len(record.get("defect_states") or [])
        abnormal = img.abnormal[:n_states] if 0 < n_states < len(img.abnormal) else img.abnormal
        by_level[IMAGE][0] = PromptGroup(level=IMAGE, name=img.name, normal=img.normal[:1], abnormal=abnormal)
    if component_texts == "one":
        by_level[COMPONENT] = draw_component_texts(by_level[COMPONENT], seed)
    groups = [g for lv in LEVELS if lv not in drop for g in by_level[lv]]
    names = [g.name for g in groups]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DetectorError(
            f"caption record of class {cls!r}: duplicate prompt groups {dupes}; rebuild the captions"
        )
    return groups


def draw_component_texts(components: list[PromptGroup], seed: int) -> list[PromptGroup]:
    """Each component group with ONE of its handcrafted abnormal texts, as the public prompt learner builds them.

    The public ``FineGrainedPatchPromptLearner`` makes one abnormal text per component from a ``random.choice`` of
    the class's defect states and one of the other locations. Here the record already holds one text per state
    (the k-th state with the k-th other location, ``mfsc_builder.official``), and one of them is drawn per
    component, in the record's order, by a ``random.Random(seed)`` of its own: the same draw on every machine and
    for both prompt sets, reproduced when a checkpoint is loaded (its config records the seed).
    """
    rng = random.Random(int(seed))
    drawn = []
    for g in components:
        keep = [g.abnormal[rng.randrange(len(g.abnormal))]] if g.abnormal else []
        drawn.append(PromptGroup(level=g.level, name=g.name, normal=g.normal, abnormal=keep))
    return drawn


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


def _ordered_groups(groups: list[PromptGroup], config: PromptConfig
                    ) -> tuple[list[PromptGroup], list[PromptGroup]]:
    """The kept groups checked and ordered: region groups (image, background, components in the given order),
    then at most one group per attribute level in ATTRIBUTE_LEVELS order (the gates are indexed by it)."""
    groups = [g for g in groups if g.level not in config.drop_levels]
    if sum(g.level == IMAGE for g in groups) != 1:
        raise DetectorError("prompt groups need exactly one 'image' group (use groups_from_record)")
    for g in groups:
        if g.level not in LEVELS:
            raise DetectorError(f"prompt group {g.name!r} has unknown level {g.level!r}")
        if not g.normal:
            raise DetectorError(f"prompt group {g.name!r} has no normal text")
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
    return region, attrs


@dataclass
class _PromptRows:
    """One row per prompt, rows of one (group, family) contiguous: ``slices[g][family]`` is its (start, end)."""

    texts: list[str] = field(default_factory=list)
    n_placeholders: list[int] = field(default_factory=list)  # learned vectors spliced in after the prefix
    ctx_index: list[int] = field(default_factory=list)  # context copy
    ab_index: list[int] = field(default_factory=list)  # abnormal-token variant, -1 for none
    meta: list[tuple[int, int, int]] = field(default_factory=list)  # (context copy, variant or -1, text index)
    slices: list[list[tuple[int, int]]] = field(default_factory=list)

    def add(self, text: str, n_ph: int, copy: int, variant: int, text_index: int) -> None:
        """Append one prompt row."""
        self.texts.append(text)
        self.n_placeholders.append(n_ph)
        self.ctx_index.append(copy)
        self.ab_index.append(variant)
        self.meta.append((copy, variant, text_index))


def _prompt_rows(groups: list[PromptGroup], config: PromptConfig) -> _PromptRows:
    """The three families of every group, as the public learner builds them: normal ``[ctx] D.`` and
    handcrafted ``[ctx] D~.`` per context copy, learned ``[ctx][abnormal token] D.`` per copy and variant."""
    c = config
    rows = _PromptRows()
    for g in groups:
        spans = []
        for family in (NORMAL, HANDCRAFTED, LEARNED):
            start = len(rows.texts)
            for p in range(c.n_pro):
                if family == LEARNED:
                    for v in range(c.n_pro_ab):
                        for ti, t in enumerate(g.normal):
                            rows.add(t + "." if c.period else t, c.n_ctx + c.n_ctx_ab, p, v, ti)
                else:
                    for ti, t in enumerate(g.normal if family == NORMAL else g.abnormal):
                        rows.add(t + "." if c.period else t, c.n_ctx, p, -1, ti)
            spans.append((start, len(rows.texts)))
        rows.slices.append(spans)
    return rows


class MultiLevelPrompts(torch.nn.Module):
    """The learnable prompts of all groups of one class, encoded through a frozen open_clip text tower."""

    def __init__(
        self, clip_model: torch.nn.Module, tokenizer: Tokenizer, groups: list[PromptGroup], config: PromptConfig
    ):
        super().__init__()
        self.config = config
        region, attrs = _ordered_groups(groups, config)
        self.groups: list[PromptGroup] = region + attrs
        self.n_region = len(region)
        tower = TextTower.from_clip(clip_model)
        tower.freeze()
        self._tower = (tower,)  # a tuple keeps the frozen CLIP out of this module's state_dict and .to()
        self._init_learned(tower.width)
        rows = _prompt_rows(self.groups, config)
        self.slices: list[list[tuple[int, int]]] = rows.slices
        self.row_meta = rows.meta
        self.texts = rows.texts
        self._tokenize(tokenizer, rows)
        self.checkpoint_text = False  # recompute the text blocks in backward (training memory; fit.text_checkpoint sets it)
        self.attr_pos = {g.level: i for i, g in enumerate(self.groups) if g.level in ATTRIBUTE_LEVELS}
        self.used_attributes = [lv for lv in ATTRIBUTE_LEVELS if lv in self.attr_pos]
        if config.gate_mode == "tokens":
            self._token_pairs = self._token_pair_plan()

    # -- construction helpers -------------------------------------------------
    def _init_learned(self, width: int) -> None:
        """The trained tensors, drawn in this order (a seed gives the same prompts): the normal context
        (n_pro copies of n_ctx vectors), the abnormal tokens (n_pro_ab variants of n_ctx_ab vectors), both
        N(0, init_std), then the 8 attribute gates (N(0, 1) draws as the public learner, or a constant)."""
        c = self.config
        self.ctx = torch.nn.Parameter(torch.randn(c.n_pro, c.n_ctx, width) * c.init_std)
        self.abnormal_tokens = torch.nn.Parameter(torch.randn(c.n_pro_ab, c.n_ctx_ab, width) * c.init_std)
        if c.gate_init == "randn":  # public: each of the 8 gates an independent N(0, 1) draw
            gates = torch.randn(2, len(ATTRIBUTE_LEVELS))
        else:
            gates = torch.full((2, len(ATTRIBUTE_LEVELS)), float(c.gate_init))
        self.gates = torch.nn.Parameter(gates)

    def _tokenize(self, tokenizer: Tokenizer, rows: _PromptRows) -> None:
        """Tokenize every row ONCE with placeholders where the learned vectors go; the buffers tell the forward
        where to splice them (context copy, abnormal variant) and where each row's feature is pooled."""
        tower = self.tower
        ids, self.offset = tokenize_with_placeholders(tokenizer, tower, rows.texts, rows.n_placeholders)
        pool = tower.pool_positions(ids)
        length = ids.shape[1]
        if self.config.truncate and tower.can_truncate():
            # keep the spliced positions even where pooling comes earlier ("first")
            length = max(int(pool.max()) + 1, self.offset + max(rows.n_placeholders))
            ids = ids[:, :length]
        self.seq_len = length
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("pool_index", pool, persistent=False)
        self.register_buffer("ctx_index", torch.tensor(rows.ctx_index, dtype=torch.long), persistent=False)
        ab = torch.tensor(rows.ab_index, dtype=torch.long)
        self.register_buffer("ab_index", ab.clamp(min=0), persistent=False)
        self.register_buffer("is_learned", ab >= 0, persistent=False)
        self.has_learned_rows = bool((ab >= 0).any())

    def _token_pair_plan(self) -> list[tuple[int, int, torch.Tensor, torch.Tensor, bool]]:
        """Token mode: per (gate row, attribute, family) the image rows and the attribute rows they get.

        Normal and learned rows pair by (context copy, abnormal variant, text index modulo the attribute's
        texts). Handcrafted rows are listed in the public order (state-major, context copy minor); the
        attribute's are ranked in ``encode_prompts`` (top-k by mean token embedding).
        """
        plan = []
        img = self.slices[0]
        meta = self.row_meta
        for a, level in enumerate(ATTRIBUTE_LEVELS):
            if level not in self.attr_pos:
                continue
            spans = self.slices[self.attr_pos[level]]
            for fam, gate_row in ((NORMAL, 0), (HANDCRAFTED, 1), (LEARNED, 1)):
                rows_i = list(range(*img[fam]))
                rows_a = list(range(*spans[fam]))
                if not rows_i or not rows_a:
                    continue
                if fam == HANDCRAFTED:  # public order: text-major, context copy minor
                    rows_i.sort(key=lambda r: (meta[r][2], meta[r][0]))
                    rows_a.sort(key=lambda r: (meta[r][2], meta[r][0]))
                    paired = rows_a  # ranked per forward
                else:
                    n_texts = 1 + max(meta[r][2] for r in rows_a)
                    where = {meta[r][:2] + (meta[r][2],): r for r in rows_a}
                    paired = [where[(meta[r][0], meta[r][1], meta[r][2] % n_texts)] for r in rows_i]
                plan.append((gate_row, a, torch.tensor(rows_i), torch.tensor(paired), fam == HANDCRAFTED))
        return plan

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

    def encode_prompts(self, normalize: bool = True) -> torch.Tensor:
        """Features (B, D) of every prompt row, L2-normalised unless ``normalize`` is False (raw projected
        EOT features); in tokens mode the image rows are mixed with the gated attribute rows first."""
        x = self.token_embeddings()
        if self.config.gate_mode == "tokens" and self.used_attributes:
            x = x + self._token_mix(x)
        return self.tower.encode_embeddings(x, self.pool_index, checkpoint=self.checkpoint_text,
                                            normalize=normalize)

    def _token_mix(self, x: torch.Tensor) -> torch.Tensor:
        """The gated attribute sequences to add to the image rows (zero elsewhere), as the public learner."""
        sig = torch.sigmoid(self.gates).to(x.dtype)
        add = torch.zeros_like(x)
        for gate_row, a, rows_i, paired, ranked in self._token_pairs:
            rows_i, paired = rows_i.to(x.device), paired.to(x.device)
            if ranked:  # public top-k: the attribute's handcrafted rows by mean token embedding, largest first
                rank = torch.argsort(x[paired].float().mean(dim=(1, 2)), descending=True, stable=True)
                paired = paired[rank][torch.arange(rows_i.numel(), device=x.device) % rank.numel()]
            add = add.index_add(0, rows_i, sig[gate_row, a] * x[paired])
        return add

    def forward(self) -> TextFeatures:
        """Encode every prompt with the current learned vectors and build the region groups' features."""
        raw_all = self.encode_prompts(normalize=False)
        feats = F.normalize(raw_all, dim=-1)

        def rows(g: int, fam: int, source: torch.Tensor = feats) -> torch.Tensor:
            s, e = self.slices[g][fam]
            return source[s:e]

        normal_each = [rows(g, NORMAL) for g in range(self.n_region)]
        handcrafted = [rows(g, HANDCRAFTED) for g in range(self.n_region)]
        learned = [rows(g, LEARNED) for g in range(self.n_region)]
        raw = {fam: [rows(g, fam, raw_all) for g in range(self.n_region)] for fam in (NORMAL, HANDCRAFTED, LEARNED)}
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
            raw[NORMAL][0], raw[HANDCRAFTED][0], raw[LEARNED][0] = normal_each[0], handcrafted[0], learned[0]
        if self.config.prototype == "raw_mean":  # public: normalised mean of the raw features
            src_n, src_h, src_l = raw[NORMAL], raw[HANDCRAFTED], raw[LEARNED]
        else:
            src_n, src_h, src_l = normal_each, handcrafted, learned
        normal = torch.stack([_prototype(t) for t in src_n])
        abnormal = torch.stack([_prototype(torch.cat([h, l])) for h, l in zip(src_h, src_l)])
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
            learned_raw=raw[LEARNED],
        )


def _prototype(features: torch.Tensor) -> torch.Tensor:
    """Normalised mean of features (N, D) -> (D,)."""
    return F.normalize(features.mean(dim=0), dim=-1)
