"""The `hf:<model id or local dir>` backend: any transformers image-text-to-text model run locally.

AutoProcessor + AutoModelForImageTextToText, the model's own chat template, batches with left padding
(decoder-only models continue from the right end), greedy decoding, `device` and `dtype` as given. Answers
go through the same validation / one retry / attribute fallback as every model backend.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mfsc_builder.captioners.base import CaptionRequest, CaptionResult
from mfsc_builder.captioners.schema import (
    Ask,
    Reply,
    Turn,
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
                 trust_remote_code: bool = False, max_new_tokens: int = 768, prompt: str = "mfsc_v1"):
        if dtype not in DTYPES:
            raise BuildError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.trust_remote_code = trust_remote_code
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = load_prompt(prompt)
        self.prompt_version = self.prompt.version
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
        with torch.inference_mode():
            out = self._net.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [str(t) for t in self._proc.batch_decode(new, skip_special_tokens=True)]

    def _generate(self, items: list[Ask]) -> list[Reply]:
        answers: list[Reply] = []
        for i in range(0, len(items), self.batch_size):
            answers.extend(Reply(t, "prompt") for t in self._generate_batch(items[i:i + self.batch_size]))
        return answers

    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return run_with_validation(requests, self._generate, self.prompt, self._provenance)

    def propose_defects(self, object_name: str, image: np.ndarray) -> list[str] | None:
        text = self.prompt.render("defects", object_name=object_name)
        return parse_defect_list(self._generate([Ask(image, [("user", text)], "defects")])[0].text)
