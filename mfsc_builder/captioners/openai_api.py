"""The `openai:<model>` backend: any OpenAI-compatible chat/completions server (GPT-4o as in the paper, or a
self-hosted vLLM server for large data sets) over HTTP with the standard library.

The image goes as a base64 PNG data URL. Requests run in a bounded thread pool; each has a timeout and is
retried on 429/5xx/network errors with exponential backoff that honours Retry-After. The key is read from
OPENAI_API_KEY or MFSC_API_KEY only; it is never printed, logged or stored. A request that still fails
after its retries becomes a recorded attribute fallback; a configuration error (401/403/404) stops the build.
"""
from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mfsc_builder.captioners.base import CaptionRequest, CaptionResult
from mfsc_builder.captioners.schema import Turn, load_prompt, parse_defect_list, run_with_validation
from mfsc_builder.errors import BuildError
from mfsc_builder.records import Provenance

DEFAULT_API_BASE = "https://api.openai.com/v1"
KEY_VARIABLES = ("OPENAI_API_KEY", "MFSC_API_KEY")
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
MAX_BACKOFF = 60.0


def api_key() -> str | None:
    for name in KEY_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


def png_data_url(image: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BuildError("could not PNG-encode an image for the API request")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAICaptioner:
    """Captioner over an OpenAI-compatible HTTP API."""

    name = "openai"

    def __init__(self, model: str, *, api_base: str | None = None, concurrency: int = 4, timeout: float = 60.0,
                 max_retries: int = 3, max_tokens: int = 1024, prompt: str = "mfsc_v1",
                 backoff: float = 1.0):
        self.model = model
        self.revision = ""                   # filled from the server's answer ("model" field)
        self.api_base = (api_base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_API_BASE).rstrip("/")
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.max_tokens = int(max_tokens)
        self.backoff = float(backoff)
        self.prompt = load_prompt(prompt)
        self.prompt_version = self.prompt.version
        if api_key() is None and self.api_base == DEFAULT_API_BASE:
            raise BuildError(f"openai:{model} needs an API key: set {' or '.join(KEY_VARIABLES)} in the "
                             "environment (it is never stored), or point --api-base to a server without keys")

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICaptioner(model={self.model!r}, api_base={self.api_base!r})"

    def _provenance(self, status: str) -> Provenance:
        return Provenance(self.name, self.model, self.revision, self.prompt_version, status)

    # -- HTTP ------------------------------------------------------------------------------------------
    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        key = api_key()
        if key:
            headers["Authorization"] = "Bearer " + key
        req = urllib.request.Request(self.api_base + "/chat/completions", data=data, headers=headers,
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                out = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            status = exc.code
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            if status in RETRY_STATUSES:
                raise _Transient(f"HTTP {status}", retry_after) from None
            detail = _error_detail(exc)
            raise BuildError(f"the API at {self.api_base} refused the request with HTTP {status}{detail}; "
                             "check --api-base, the model name and the key in the environment") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            raise _Transient(f"network error: {getattr(exc, 'reason', exc)}") from None
        except ValueError:  # json.JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            raise _Transient("the server answered with invalid JSON") from None
        if not isinstance(out, dict):  # a list, null or string body would break every lookup below
            raise _Transient("the server answered JSON that is not a chat completion object")
        return out

    def _complete(self, image: np.ndarray | None, turns: list[Turn]) -> str | None:
        """One chat completion with retries; None when it still fails (the caller falls back)."""
        messages: list[dict[str, Any]] = []
        for k, (role, text) in enumerate(turns):
            if k == 0 and image is not None:
                content: Any = [{"type": "image_url", "image_url": {"url": png_data_url(image)}},
                                {"type": "text", "text": text}]
            else:
                content = text
            messages.append({"role": role, "content": content})
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        for attempt in range(self.max_retries + 1):
            try:
                out = self._post(body)
                if out.get("model") and not self.revision:
                    self.revision = str(out["model"])
                return str(out["choices"][0]["message"]["content"] or "")
            except _Transient as exc:
                if attempt == self.max_retries:
                    return None
                wait = exc.retry_after if exc.retry_after is not None else self.backoff * 2**attempt
                time.sleep(min(MAX_BACKOFF, max(0.0, wait)))
            except (KeyError, IndexError, TypeError):
                return ""  # a malformed completion is an invalid answer: validated and retried
        return None

    def _generate(self, items: list[tuple[np.ndarray, list[Turn]]]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda it: self._complete(it[0], it[1]), items))

    # -- Captioner ---------------------------------------------------------------------------------------
    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return run_with_validation(requests, self._generate, self.prompt, self._provenance)

    def propose_defects(self, object_name: str, image: np.ndarray) -> list[str] | None:
        text = self.prompt.render("defects", object_name=object_name)
        return parse_defect_list(self._complete(image, [("user", text)]))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's error message, with anything that looks like a key removed (it is only a hint)."""
    import re

    try:
        msg = str(json.loads(exc.read().decode("utf-8")).get("error", {}).get("message", ""))
    except (ValueError, AttributeError, OSError):
        return ""
    key = api_key()
    if key:
        msg = msg.replace(key, "***")
    msg = re.sub(r"\b(sk|key|Bearer)[-_ ]?[A-Za-z0-9*_\-]{6,}", "***", msg)
    return f" ({msg[:200]})" if msg else ""
