"""MLLP text encoding: splice learned vectors into a frozen open_clip text tower and pool at EOT.

A prompt is tokenized once as ``"X X X X <text>"``; the ``X`` placeholders mark where learnable
vectors (normal context, abnormal tokens) replace the token embeddings. The rest mirrors open_clip's
``CLIP.encode_text``: + positional embedding, the transformer with the causal mask, ``ln_final``,
pooling (open_clip's ``text_pool_type``: ``argmax`` of the token ids = EOT for the CLIP tokenizer,
``eos`` = the tokenizer's EOS id, ``first``, ``last``), ``text_projection``, L2 normalisation.

Speed: with a causal mask, position i only sees positions <= i, so everything after the pooled
position is irrelevant. All sequences are therefore cut to the longest pooled position + 1 (a few
dozen tokens instead of 77) and the mask is sliced to match. Cutting is skipped where it would change
the result (no causal mask, or ``last`` pooling).

Memory: under grad, backward keeps every block's activations, about 16 width-sized fp32 vectors per token
per block (``activation_bytes``): 468 rows x 45 tokens of ViT-B-16-plus-240 take ~10 GB. With
``checkpoint=True`` each residual block is recomputed during backward (torch.utils.checkpoint, non-reentrant),
so only the block inputs are kept; gradients are the same, and the price is one more text forward.

The tower is held by reference, never registered as a submodule: checkpoints of the prompt module
then hold only what is trained.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from detector.errors import DetectorError


class Tokenizer(Protocol):
    """An open_clip tokenizer as the prompts use it: texts -> (N, context length) token ids. The CLIP BPE
    tokenizer also has ``encode`` and ``sot_token_id`` / ``eot_token_id``, read where present."""

    def __call__(self, texts: str | list[str]) -> torch.Tensor: ...

PLACEHOLDER = "X"
_POOL_TYPES = ("argmax", "eos", "first", "last")


@dataclass
class TextTower:
    """References to the parts of an open_clip text tower that the spliced encoding needs."""

    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    transformer: torch.nn.Module
    ln_final: torch.nn.Module
    text_projection: Any  # Parameter (W, D), nn.Linear, or None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None
    context_length: int
    owner: torch.nn.Module  # the module the parts belong to (for freezing)

    @classmethod
    def from_clip(cls, clip_model: torch.nn.Module) -> TextTower:
        """Find the text tower of an open_clip model (``CLIP`` or ``CustomTextCLIP`` with a ``TextTransformer``).

        Other towers (Hugging Face text encoders, towers with a CLS embedding) raise DetectorError.
        """
        src = clip_model
        if not hasattr(src, "token_embedding") and hasattr(clip_model, "text"):
            src = clip_model.text
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
        missing = [n for n in needed if not hasattr(src, n)]
        if missing:
            raise DetectorError(
                f"the text tower of {type(clip_model).__name__} has no {', '.join(missing)}: learnable prompts "
                "need an open_clip CLIP-style text transformer; choose a CLIP backbone (e.g. ViT-B-16-plus-240)"
            )
        if getattr(src, "cls_emb", None) is not None:
            raise DetectorError(
                "the backbone's text tower appends a CLS embedding, which the spliced prompt encoding does not "
                "support; choose a CLIP backbone with EOT pooling (e.g. ViT-B-16-plus-240)"
            )
        if getattr(src, "use_pad_mask", False):
            raise DetectorError(
                "the backbone's text tower masks padding tokens (bidirectional text encoder), which the spliced "
                "prompt encoding does not support; choose a CLIP backbone with a causal text encoder"
            )
        pool_type = getattr(src, "text_pool_type", None) or getattr(src, "pool_type", None) or "argmax"
        if pool_type not in _POOL_TYPES:
            raise DetectorError(
                f"text pooling {pool_type!r} of the backbone is not supported (supported: {', '.join(_POOL_TYPES)}); "
                "choose a CLIP backbone with EOT pooling"
            )
        eos_id = getattr(src, "text_eos_id", None)
        if eos_id is None:
            eos_id = getattr(src, "eos_id", None)
        if pool_type == "eos" and eos_id is None:
            raise DetectorError(
                "the backbone's text tower pools at EOS but names no eos id; choose another backbone"
            )
        pos = src.positional_embedding
        context_length = int(getattr(src, "context_length", pos.shape[0]))
        return cls(
            token_embedding=src.token_embedding,
            positional_embedding=pos,
            transformer=src.transformer,
            ln_final=src.ln_final,
            text_projection=src.text_projection,
            attn_mask=getattr(src, "attn_mask", None),
            pool_type=pool_type,
            eos_id=eos_id,
            context_length=context_length,
            owner=src,
        )

    @property
    def width(self) -> int:
        """Width of the token embeddings (the size of each learnable vector)."""
        return int(self.token_embedding.weight.shape[1])

    @property
    def cast_dtype(self) -> torch.dtype:
        """Dtype the transformer runs in (open_clip's ``get_cast_dtype`` where present)."""
        get = getattr(self.transformer, "get_cast_dtype", None)
        return get() if get is not None else self.token_embedding.weight.dtype

    def freeze(self) -> None:
        """Stop gradients into every tower parameter (only the learned vectors are trained)."""
        for p in self.owner.parameters():
            if p.requires_grad and self._belongs(p):
                p.requires_grad_(False)

    def _belongs(self, p: torch.Tensor) -> bool:
        parts = [self.token_embedding, self.transformer, self.ln_final]
        if isinstance(self.text_projection, torch.nn.Module):
            parts.append(self.text_projection)
        ids = {id(q) for m in parts for q in m.parameters()}
        for t in (self.positional_embedding, self.text_projection):
            if isinstance(t, torch.Tensor):
                ids.add(id(t))
        return id(p) in ids

    def can_truncate(self) -> bool:
        """True when cutting sequences after the pooled token leaves the result unchanged."""
        return self.attn_mask is not None and self.pool_type != "last"

    def pool_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled token per row of full-length token ids (B, L), as open_clip pools."""
        if self.pool_type == "argmax":
            return ids.argmax(dim=-1)
        if self.pool_type == "eos":
            return (ids == self.eos_id).int().argmax(dim=-1)
        if self.pool_type == "first":
            return torch.zeros(ids.shape[0], dtype=torch.long)
        return torch.full((ids.shape[0],), ids.shape[1] - 1, dtype=torch.long)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, L, W) in the tower's dtype."""
        return self.token_embedding(ids).to(self.cast_dtype)

    def activation_bytes(self, rows: int, length: int) -> int:
        """Estimated fp32 activations a backward through the transformer keeps for (rows, length) tokens."""
        blocks = getattr(self.transformer, "resblocks", None)
        layers = len(blocks) if blocks is not None else int(getattr(self.transformer, "layers", 12))
        return 16 * 4 * rows * length * layers * self.width

    def encode_embeddings(self, x: torch.Tensor, pool: torch.Tensor, checkpoint: bool = False,
                          normalize: bool = True) -> torch.Tensor:
        """Run token embeddings (B, L, W), L <= context, through the tower; features (B, D), fp32.

        ``normalize``: L2-normalise them (False gives the raw projected EOT features, which the public code
        averages into its prototypes before normalising).

        ``checkpoint``: recompute each residual block in backward instead of keeping its activations
        (only where grad is enabled and the transformer has ``resblocks``; same result, less memory).
        """
        length = x.shape[1]
        x = x.to(self.cast_dtype) + self.positional_embedding[:length].to(self.cast_dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length].to(x.device)
        blocks = getattr(self.transformer, "resblocks", None)
        if checkpoint and blocks is not None and torch.is_grad_enabled():
            x = _checkpointed_blocks(self.transformer, blocks, x, mask)
        else:
            x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool.to(x.device)]
        proj = self.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Module) else x @ proj
        return F.normalize(x.float(), dim=-1) if normalize else x.float()


def _checkpointed_blocks(transformer: torch.nn.Module, blocks: Any, x: torch.Tensor,
                         mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ``Transformer.forward`` with every residual block under activation checkpointing."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    for block in blocks:
        x = checkpoint(block, x, attn_mask=mask, use_reentrant=False)
    return x if batch_first else x.transpose(0, 1)


def placeholder_id(tokenizer: Tokenizer) -> int:
    """Token id of the placeholder word; it must be one token."""
    ids = _encode_words(tokenizer, PLACEHOLDER)
    if ids is not None and len(ids) != 1:
        raise DetectorError(
            f"the tokenizer splits the placeholder {PLACEHOLDER!r}; use an open_clip CLIP tokenizer"
        )
    if ids is not None:
        return int(ids[0])
    row = tokenizer([PLACEHOLDER])[0]
    nonpad = [int(t) for t in row.tolist() if int(t) != 0]
    specials = {getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)}
    words = [t for t in nonpad if t not in specials]
    if len(words) != 1:
        raise DetectorError(
            f"the tokenizer splits the placeholder {PLACEHOLDER!r}; use an open_clip CLIP tokenizer"
        )
    return words[0]


def _encode_words(tokenizer: Tokenizer, text: str) -> list[int] | None:
    """Token ids of text without special tokens, where the tokenizer exposes ``encode``."""
    enc = getattr(tokenizer, "encode", None)
    if enc is None:
        return None
    try:
        return list(enc(text))
    except Exception:  # noqa: BLE001 - tokenizers differ; fall back to counting the padded row
        return None


def fit_text(tokenizer: Tokenizer, text: str, budget: int) -> str:
    """Drop words from the end of text until it takes at most ``budget`` tokens; warn when anything is cut."""
    words = text.split()
    original = text

    def n_tokens(t: str) -> int:
        ids = _encode_words(tokenizer, t)
        if ids is not None:
            return len(ids)
        row = tokenizer([t])[0]
        return int((row != 0).sum()) - 2  # minus start and end tokens

    if n_tokens(text) <= budget:
        return text
    while words and n_tokens(" ".join(words)) > budget:
        words.pop()
    text = " ".join(words)
    warnings.warn(
        f"prompt text too long for the text encoder ({budget} tokens left after the learned tokens); "
        f"cut to {text!r} from {original!r}",
        stacklevel=3,
    )
    return text


def placeholder_offset(tokenizer: Tokenizer) -> int:
    """Position of the first placeholder in a tokenized prompt (1 for CLIP: after the start token)."""
    x_id = placeholder_id(tokenizer)
    row = tokenizer([PLACEHOLDER])[0].tolist()
    if x_id not in row:
        raise DetectorError(
            "the tokenizer drops the placeholder word; learnable prompts need an open_clip CLIP tokenizer"
        )
    return row.index(x_id)


def tokenize_with_placeholders(
    tokenizer: Tokenizer, tower: TextTower, texts: list[str], n_placeholders: list[int]
) -> tuple[torch.Tensor, int]:
    """Token ids (B, context) of ``"X" * n + text`` per row, and the position of the first placeholder.

    Texts too long for the context (after the placeholders and the special tokens) lose words at the
    end, with a warning. Every row is checked to carry its placeholders at the same position.
    """
    x_id = placeholder_id(tokenizer)
    offset = placeholder_offset(tokenizer)
    budget_base = tower.context_length - offset - 1  # start tokens before, one end token after
    strings = []
    for text, n in zip(texts, n_placeholders):
        text = fit_text(tokenizer, text, budget_base - n)
        strings.append(" ".join([PLACEHOLDER] * n + ([text] if text else [])))
    ids = tokenizer(strings)
    if ids.shape[1] != tower.context_length:
        raise DetectorError(
            f"the tokenizer gives {ids.shape[1]} tokens but the text tower expects {tower.context_length}; "
            "load the tokenizer of the same backbone"
        )
    for row, n in zip(ids, n_placeholders):
        if n and not bool((row[offset : offset + n] == x_id).all()):
            raise DetectorError(
                "the tokenizer does not keep the placeholder tokens in front of the prompt text; learnable "
                "prompts need an open_clip CLIP tokenizer"
            )
    return ids.long(), offset
