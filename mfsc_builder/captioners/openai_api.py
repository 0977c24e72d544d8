"""The `openai:<model>` backend: any OpenAI-compatible chat/completions server (GPT-4o as in the paper, or a
self-hosted vLLM server for large data sets) through the official `openai` client.

The client owns the HTTP: one connection pool shared by the worker threads (at most `concurrency`
connections), per-request timeouts, and retries of 408/409/429/5xx, timeouts and dropped connections with
exponential backoff that honours Retry-After (up to two minutes; a server asking for longer is not retried).
Requests run in a bounded thread pool. The answer is asked for with the record schema itself
(`response_format` json_schema, strict); a server that refuses it (HTTP 400 naming the response format) is
asked with `json_object` from then on, and one that refuses that too with the prompt alone; each record's
provenance says which was used. The key is read from OPENAI_API_KEY or MFSC_API_KEY only and never printed or
stored: every string a server sends (model name, answer, error message) passes `secrets.redact`, which also
caps its length, and the API address is shown without its query string or credentials.
A request that still fails after its retries becomes a recorded attribute fallback; any other refusal
(401/403/404/400...) stops the build with one line.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import numpy as np

from mfsc_builder.captioners.base import CaptionRequest, CaptionResult
from mfsc_builder.captioners.schema import (
    RESPONSE_FORMATS,
    Ask,
    Reply,
    load_prompt,
    parse_defect_list,
    response_format,
    run_with_validation,
)
from mfsc_builder.errors import BuildError
from mfsc_builder.records import Provenance

DEFAULT_API_BASE = "https://api.openai.com/v1"
KEY_VARIABLES = ("OPENAI_API_KEY", "MFSC_API_KEY")
RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}
MAX_ANSWER_CHARS = 100_000   # a longer answer is cut (it is invalid JSON then, and retried)
MAX_NAME_CHARS = 120         # model / revision names a server reports


def api_key() -> str | None:
    for name in KEY_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _secrets() -> list[str]:
    """What must never be shown or stored: the key, and the query values of the API address."""
    out = [api_key() or ""]
    base = os.environ.get("OPENAI_BASE_URL") or ""
    out += [v for _, v in parse_qsl(urlsplit(base).query)]
    return [s for s in out if len(s) >= 4]


def redact(text: Any, limit: int, extra: tuple[str, ...] = ()) -> str:
    """A server string made safe to show or store: known secrets and key-like tokens replaced by ***, the
    length capped at `limit` characters."""
    s = "" if text is None else str(text)
    for secret in sorted({*_secrets(), *(e for e in extra if len(e) >= 4)}, key=len, reverse=True):
        s = s.replace(secret, "***")
    s = re.sub(r"\b(sk|key|Bearer)[-_ ]?[A-Za-z0-9*_\-]{6,}", "***", s)
    return s if len(s) <= limit else s[:limit]


def split_api_base(url: str) -> tuple[str, dict[str, str], str]:
    """(base URL for the client, query parameters sent with every request, address safe to print: no query,
    no user:password)."""
    parts = urlsplit(url.strip())
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    host = parts.hostname or ""
    shown_netloc = host + (f":{parts.port}" if parts.port else "")
    shown = urlunsplit((parts.scheme, shown_netloc, parts.path.rstrip("/"), "", ""))
    if query:
        shown += "?" + "&".join(f"{k}=***" for k in query)
    return base, query, shown


def png_data_url(image: np.ndarray) -> str:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BuildError("could not PNG-encode an image for the API request")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


class OpenAICaptioner:
    """Captioner over an OpenAI-compatible HTTP API (the official client)."""

    name = "openai"

    def __init__(self, model: str, *, api_base: str | None = None, concurrency: int = 4, timeout: float = 60.0,
                 max_retries: int = 3, max_tokens: int = 1024, prompt: str = "mfsc_v1",
                 response_format: str = "json_schema"):
        if response_format not in RESPONSE_FORMATS:
            raise BuildError(f"response format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}")
        self.model = model
        self.revision = ""                   # filled from the server's answer ("model" field), redacted
        base, self._query, self.api_shown = split_api_base(
            api_base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_API_BASE)
        password = urlsplit(api_base or os.environ.get("OPENAI_BASE_URL") or "").password
        self._secret_query = (*self._query.values(), *([password] if password else []))
        self.api_base = base
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.max_tokens = int(max_tokens)
        self.prompt = load_prompt(prompt)
        self.prompt_version = self.prompt.version
        self.prompt_sha256 = self.prompt.sha256
        self.response_format = response_format  # what is asked first; lowered once per refusal
        self._lock = threading.Lock()
        if api_key() is None and self.api_base == DEFAULT_API_BASE:
            raise BuildError(f"openai:{model} needs an API key: set {' or '.join(KEY_VARIABLES)} in the "
                             "environment (it is never stored), or point --api-base to a server without keys")
        if self._secret_query:
            _quiet_http_logs()
        self._client = self._make_client()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICaptioner(model={self.model!r}, api_base={self.api_shown!r})"

    def _make_client(self) -> Any:
        import httpx2
        import openai

        key = api_key()
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        http = openai.DefaultHttpxClient(limits=limits)
        return openai.OpenAI(api_key=key or "unused", base_url=self.api_base, default_query=self._query or None,
                             timeout=httpx2.Timeout(self.timeout),
                             max_retries=self.max_retries, http_client=http)

    def _redact(self, text: Any, limit: int) -> str:
        return redact(text, limit, self._secret_query)

    def _provenance(self, status: str, mode: str) -> Provenance:
        return Provenance(self.name, self.model, self.revision, self.prompt_version, status, mode)

    # -- one completion ----------------------------------------------------------------------------------
    def _messages(self, ask: Ask) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        for k, (role, text) in enumerate(ask.turns):
            if k == 0 and ask.image is not None:
                content: Any = [{"type": "image_url", "image_url": {"url": png_data_url(ask.image)}},
                                {"type": "text", "text": text}]
            else:
                content = text
            messages.append({"role": role, "content": content})
        return messages

    def _lower_format(self, mode: str, exc: Any) -> bool:
        """After a 400 refusal of `mode`: True if a weaker format is left to try (it becomes the one asked)."""
        detail = self._redact(_error_message(exc), 300).lower()
        if mode == "prompt" or not any(w in detail for w in ("response_format", "response format", "json_schema",
                                                             "json schema", "schema", "json_object",
                                                             "guided", "structured")):
            return False
        with self._lock:
            order = list(RESPONSE_FORMATS)
            if order.index(self.response_format) <= order.index(mode):
                self.response_format = order[order.index(mode) + 1]
        return True

    def _complete(self, ask: Ask) -> Reply:
        """One chat completion (retries inside the client, bounded to 1 + max_retries requests in all);
        Reply(None, mode) when it still fails: the caller falls back."""
        import openai

        messages = self._messages(ask)
        budget = self.max_retries        # retries left for this conversation
        while True:
            mode = self.response_format
            extra: dict[str, Any] = {}
            if not api_key():  # a keyless server (local vLLM): send no Authorization header at all
                extra["extra_headers"] = {"Authorization": openai.Omit()}
            rf = response_format(mode, ask.kind)
            if rf is not None:
                extra["response_format"] = rf
            try:
                raw = self._client.with_options(max_retries=budget).chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, temperature=0, max_tokens=self.max_tokens, **extra)
            except openai.APIStatusError as exc:
                if exc.status_code in RETRY_STATUSES:
                    return Reply(None, mode)   # the client's retries are spent
                if exc.status_code == 400 and self._lower_format(mode, exc):
                    continue                   # a refused response format is not a retry: same budget
                detail = self._redact(_error_message(exc), 200)
                raise BuildError(f"the API at {self.api_shown} refused the request with HTTP {exc.status_code}"
                                 f"{f' ({detail})' if detail else ''}; check --api-base, the model name and the "
                                 "key in the environment") from None
            except openai.APIConnectionError:  # timeouts and dropped connections, after the client's retries
                return Reply(None, mode)
            budget -= raw.retries_taken
            text = self._answer(raw.http_response.content)
            if text is not None:
                return Reply(text, mode)
            if budget <= 0:                    # a 200 whose body is not a chat completion: retried here
                return Reply(None, mode)
            budget -= 1

    def _answer(self, body: bytes) -> str | None:
        """The message content of a chat completion body (redacted, capped); "" for a completion without
        usable content (an invalid answer: validated and retried), None for a body that is no completion."""
        try:
            out = json.loads(body.decode("utf-8"))
        except ValueError:  # json.JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
            return None
        if not isinstance(out, dict):  # a list, null or string body would break every lookup below
            return None
        if out.get("model") and not self.revision:
            self.revision = self._redact(out["model"], MAX_NAME_CHARS)
        try:
            return self._redact(out["choices"][0]["message"]["content"] or "", MAX_ANSWER_CHARS)
        except (KeyError, IndexError, TypeError):
            return ""

    def _generate(self, asks: list[Ask]) -> list[Reply]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._complete, asks))

    # -- Captioner ---------------------------------------------------------------------------------------
    def caption(self, requests: list[CaptionRequest]) -> list[CaptionResult]:
        return run_with_validation(requests, self._generate, self.prompt, self._provenance)

    def propose_defects(self, object_name: str, image: np.ndarray) -> list[str] | None:
        text = self.prompt.render("defects", object_name=object_name)
        return parse_defect_list(self._complete(Ask(image, [("user", text)], "defects")).text)


def _quiet_http_logs() -> None:
    """The HTTP libraries log every request's full URL at INFO/DEBUG; with a key in the address's query they
    must not, so their loggers keep to warnings and errors."""
    for name in ("httpx2", "httpcore2", "openai"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


def _error_message(exc: Any) -> str:
    """The server's error message of an APIStatusError (only a hint; redacted by the caller)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)
    return ""
