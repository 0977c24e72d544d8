"""The `hf:<model id or local dir>` backend: any transformers image-text-to-text model run locally.

AutoProcessor + AutoModelForImageTextToText, the model's own chat template, batches with left padding
(decoder-only models continue from the right end), greedy decoding, `device` and `dtype` as given.
Decoding is constrained to the record schema (`schema.answer_schema`, with bounds on strings and lists) by
xgrammar's transformers logits processor, one grammar per batch row (normal and anomalous images differ), so
even a weak model answers a parseable, schema-valid record; `response_format="prompt"` decodes unconstrained. Answers go through the same validation / one retry / attribute fallback as every
model backend. Why xgrammar: it imports and runs with transformers 5 (lm-format-enforcer's transformers
integration does not), compiles the schema in milliseconds in C++, takes a grammar per batch row, and is the
engine vLLM's guided decoding uses, so local and served answers follow one grammar.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mfsc_builder.captioners.base import CaptionRequest, CaptionResult
from mfsc_builder.captioners.schema import (
    MAX_COMPONENTS,
    Ask,
    Reply,
    Turn,
    answer_schema,
    load_prompt,
    parse_defect_list,
    run_with_validation,
)
from mfsc_builder.errors import BuildError
from mfsc_builder.records import Provenance

DTYPES = ("auto", "float32", "float16", "bfloat16")


class HFCaptioner:
    """Captioner over a local transformers image-text-to-text model."""

    name = "hf"

    def __init__(self, model: str, *, device: str = "cpu", dtype: str = "auto", batch_size: int = 4,
                 trust_remote_code: bool = False, max_new_tokens: int = 768, prompt: str = "mfsc_v1",
                 response_format: str = "json_schema", max_string: int = 200, max_items: int = MAX_COMPONENTS):
        if dtype not in DTYPES:
            raise BuildError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if response_format not in ("json_schema", "prompt"):
            raise BuildError(f"response format {response_format!r}: the hf backend decodes under the record schema "
                             "(json_schema) or unconstrained (prompt)")
        self.response_format = response_format
        self.max_string = int(max_string)   # grammar bounds: characters per string, components per answer
        self.max_items = int(max_items)
        self._grammars: dict[tuple, Any] = {}
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.trust_remote_code = trust_remote_code
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = load_prompt(prompt)
        self.prompt_version = self.prompt.version
        self.prompt_sha256 = self.prompt.sha256
        self._proc, self._net = self._load()
        self.revision = self._revision()

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        dtype: Any = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        try:
            proc = AutoProcessor.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
            net = AutoModelForImageTextToText.from_pretrained(self.model, dtype=dtype,
                                                              trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError, KeyError) as exc:
            raise BuildError(f"could not load the image-text-to-text model {self.model!r} ({exc}). Give a local "
                             "folder saved with save_pretrained or a Hub id available offline in the cache; "
                             "models with custom code need --trust-remote-code") from exc
        try:
            net = net.to(self.device).eval()
        except (RuntimeError, AssertionError) as exc:
            raise BuildError(f"device {self.device!r} is not usable for {self.model!r} ({exc}); try --device cpu")
        tok = getattr(proc, "tokenizer", None)
        if tok is None:
            raise BuildError(f"the processor of {self.model!r} has no tokenizer; it is not a chat model")
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        if getattr(proc, "chat_template", None) is None and getattr(tok, "chat_template", None) is None:
            raise BuildError(f"{self.model!r} has no chat template; use an instruction-tuned (chat) model")
        return proc, net

    def _revision(self) -> str:
        """The Hub commit when known, else a short hash of the local config.json (changes when the model does)."""
        commit = getattr(self._net.config, "_commit_hash", None)
        if commit:
            return str(commit)
        cfg = Path(self.model) / "config.json"
        if cfg.is_file():
            return "local-" + hashlib.sha256(cfg.read_bytes()).hexdigest()[:12]
        return "unknown"

    def _provenance(self, status: str, mode: str) -> Provenance:
        return Provenance(self.name, self.model, self.revision, self.prompt_version, status, mode)

    def _messages(self, turns: list[Turn]) -> list[dict[str, Any]]:
        out = []
        for k, (role, text) in enumerate(turns):
            content: list[dict[str, Any]] = [{"type": "text", "text": text}]
            if k == 0:
                content.insert(0, {"type": "image"})
            out.append({"role": role, "content": content})
        return out

    def _grammar(self, kind: str) -> Any:
        """The compiled xgrammar grammar of an answer kind under the current mode and bounds (cached)."""
        import xgrammar as xgr

        key = (self.response_format, kind, self.max_string, self.max_items)
        if key not in self._grammars:
            if "compiler" not in self._grammars:
                tok = self._proc.tokenizer
                vocab = self._net.get_output_embeddings().weight.shape[0]
                eos = getattr(self._net.generation_config, "eos_token_id", None)
                stops = [eos] if isinstance(eos, int) else list(eos or []) or None
                info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=stops)
                self._grammars["compiler"] = xgr.GrammarCompiler(info)
            schema = answer_schema(kind, max_string=self.max_string)
            for name in ("components", "defects"):
                if name in schema["properties"]:
                    prop = schema["properties"][name]
                    prop["maxItems"] = min(prop["maxItems"], self.max_items)
            # fixed separators: free whitespace lets a weak model pad forever
            self._grammars[key] = self._grammars["compiler"].compile_json_schema(json.dumps(schema),
                                                                                 any_whitespace=False)
        return self._grammars[key]

    def _generate_batch(self, items: list[Ask]) -> list[str]:
        import torch
        from PIL import Image

        texts = [self._proc.apply_chat_template(self._messages(a.turns), add_generation_prompt=True, tokenize=False)
                 for a in items]
        images = [[Image.fromarray(a.image)] for a in items]
        inputs = self._proc(text=texts, images=images, return_tensors="pt", padding=True)
        inputs = inputs.to(self.device)
        float_dtype = next((p.dtype for p in self._net.parameters() if p.is_floating_point()), None)
        if float_dtype is not None and "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(float_dtype)
        extra: dict[str, Any] = {}
        if self.response_format != "prompt":
            import xgrammar as xgr

            extra["logits_processor"] = [xgr.contrib.hf.LogitsProcessor([self._grammar(a.kind) for a in items])]
        with torch.inference_mode():
            out = self._net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **extra)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [str(t) for t in self._proc.batch_decode(new, skip_special_tokens=True)]

    def _generate(self, items: list[Ask]) -> list[Reply]:
        answers: list[Reply] = []
        for i in range(0, len(items), self.batch_size):
            answers.extend(Reply(t, self.response_format)
                           for t in self._generate_batch(items[i:i + self.batch_size]))
        return answers

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return run_with_validation(requests, self._generate, self.prompt, self._provenance)

    def propose_defects(self, object_name: str, image: np.ndarray) -> list[str] | None:
        text = self.prompt.render("defects", object_name=object_name)
        return parse_defect_list(self._generate([Ask(image, [("user", text)], "defects")])[0].text)
