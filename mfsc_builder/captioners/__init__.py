"""MFSC captioning backends (stage 2): offline attributes, Hugging Face models, OpenAI-compatible servers.

``make_captioner`` finds the backend by the prefix of ``CaptionerSettings.name`` in ``BACKENDS``. A new backend
is its own module (a class with the ``Captioner`` protocol) plus one entry here; its module is imported only
when it is chosen, so ``base.py`` (the types every backend imports) never imports a backend.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mfsc_builder.captioners.base import Captioner, CaptionRequest, CaptionResult, LevelFields
from mfsc_builder.captioners.settings import CaptionerSettings
from mfsc_builder.errors import BuildError


@dataclass(frozen=True)
class Backend:
    """One registered backend: how its name is written, and how it is made from (model, settings)."""

    usage: str  # e.g. "hf:<model id or local dir>"; a usage with ":" needs a model after the prefix
    make: Callable[[str, CaptionerSettings], Captioner]


def _attributes(model: str, s: CaptionerSettings) -> Captioner:
    from mfsc_builder.captioners.attributes import AttributeCaptioner

    return AttributeCaptioner()


def _hf(model: str, s: CaptionerSettings) -> Captioner:
    from mfsc_builder.captioners.hf import HFCaptioner

    return HFCaptioner(model, device=s.device, dtype=s.dtype, batch_size=s.batch_size,
                       trust_remote_code=s.trust_remote_code, prompt=s.prompt, response_format=s.response_format)


def _openai(model: str, s: CaptionerSettings) -> Captioner:
    from mfsc_builder.captioners.openai_api import OpenAICaptioner

    return OpenAICaptioner(model, api_base=s.api_base, concurrency=s.concurrency, timeout=s.timeout,
                           max_retries=s.max_retries, prompt=s.prompt, response_format=s.response_format)


BACKENDS: dict[str, Backend] = {
    "attributes": Backend("attributes", _attributes),
    "hf": Backend("hf:<model id or local dir>", _hf),
    "openai": Backend("openai:<model>", _openai),
}


def make_captioner(spec: CaptionerSettings | str, **settings: Any) -> Captioner:
    """The backend of ``spec`` (settings, or a name such as "hf:<model>" with settings as keywords)."""
    s = spec if isinstance(spec, CaptionerSettings) else CaptionerSettings(name=spec, **settings)
    prefix, sep, model = (s.name or "").strip().partition(":")
    backend = BACKENDS.get(prefix)
    if backend is None or bool(sep) != (":" in backend.usage) or (sep and not model):
        usages = [f"'{b.usage}'" for b in BACKENDS.values()]
        raise BuildError(f"unknown captioner {s.name!r}: use {', '.join(usages[:-1])} or {usages[-1]} "
                         "(with --api-base for a self-hosted server)")
    return backend.make(model, s)


__all__ = ["BACKENDS", "Backend", "CaptionRequest", "CaptionResult", "Captioner", "CaptionerSettings",
           "LevelFields", "make_captioner"]
