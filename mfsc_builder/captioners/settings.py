"""The captioner's settings: one nested mapping (``captioner:`` in a build config, like ``crop:``), defined once.

Read by the build (``BuildConfig.captioner``), the backend registry (``make_captioner``) and the CLI flags
(``--captioner`` is ``name``; ``--device``, ``--dtype``, ``--api-base``, ... the other fields). Each backend uses
the fields it needs and ignores the rest (``hf`` has no server, ``openai`` no device).
"""
from __future__ import annotations

from dataclasses import dataclass

from fsad_data.config import NonNegativeInt, PositiveFloat, PositiveInt


@dataclass
class CaptionerSettings:
    """Which backend captions, and how it runs."""

    name: str = "attributes"  # attributes | hf:<model id or dir> | openai:<model>
    device: str = "cpu"  # hf: cpu, cuda, cuda:1, mps
    dtype: str = "auto"  # hf: auto, float32, bfloat16, float16
    batch_size: PositiveInt = 4  # images per captioner call (also the build's unit of work)
    trust_remote_code: bool = False  # hf: allow a model's own code
    api_base: str | None = None  # openai: base URL of an OpenAI-compatible server
    concurrency: PositiveInt = 4  # openai: parallel requests
    timeout: PositiveFloat = 60.0  # openai: seconds per request
    max_retries: NonNegativeInt = 3  # openai: retries of a failed request
    prompt: str = "mfsc_v1"  # hf/openai: a built-in prompt (mfsc_builder/prompts/<name>.txt) or a prompt FILE
    response_format: str = "json_schema"  # hf/openai: json_schema (the record schema) | json_object | prompt
