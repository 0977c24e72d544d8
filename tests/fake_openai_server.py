"""A tiny OpenAI-compatible chat/completions server on 127.0.0.1 for fault-injection tests (no network).

Each request is answered by a script: a list of actions, chosen per image (the SHA-256 of the image data URL
in the first user message) so that the faults an image meets do not depend on how concurrent requests
interleave. The n-th request carrying an image gets action n of its script (the last action repeats).

Actions (tuples):
  ("ok",)                     a valid MFSC answer (with a defect object when the prompt says "anomalous")
  ("content", text)           200 with ``text`` as the message content (e.g. JSON that breaks the schema)
  ("status", code, headers)   an HTTP error with an OpenAI-style error body; headers e.g. {"Retry-After": "0"}
  ("body", bytes)             200 with this raw body (malformed JSON, invalid UTF-8, a JSON list...)
  ("delay", seconds, action)  wait, then do ``action``
  ("hang",)                   never answer; return when the client gives up (closes the connection)
  ("drop",)                   close the connection without any response

It speaks what the `openai` client sends: keep-alive connections (several requests per connection), query
parameters of the base URL, and `response_format`. ``response_formats`` are the types it accepts
("json_schema", "json_object"; "text" / none always); another type is refused with HTTP 400 naming
``response_format``, as vLLM and OpenAI do. With a json_schema it checks the schema is strict (every object
closed, every property required) and that its answer validates against it (jsonschema), and answers bare
JSON as a constrained server does; without one it answers JSON in a code fence, as a chat model does.

The server records every request (path with query, headers with lowercase names, JSON body), the requests per image key, the
connections used, and the most requests in flight at once (a hanging request counts until its client
closes the connection).
"""
from __future__ import annotations

import hashlib
import json
import select
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

Action = tuple
GOOD_ANSWER = {
    "image_view": {"foreground": "pill box", "background": "plain white"},
    "foreground_view": {"count": 2, "relation": "a blue lid sits above a white body"},
    "components": [
        {"name": "white body", "count": 1, "location": "center", "colour": "white", "texture": "smooth",
         "shape": "rectangular", "direction": "horizontal", "sentence": "a smooth white rectangular body"},
        {"name": "blue lid", "count": 1, "location": "top", "colour": "blue", "texture": "smooth",
         "shape": "rectangular", "direction": "horizontal", "sentence": "a flat blue lid on the top"},
    ],
    "caption": "a white pill box with a blue lid on a plain white background",
    "defect": None,
}
GOOD_DEFECT = {"type": "scratch", "location": "center", "size": "small", "colour": "dark grey",
               "sentence": "a thin dark scratch across the body"}


def image_key(data_url: str) -> str:
    """The key the server files an image under (the test computes the same from the image)."""
    return hashlib.sha256(data_url.encode("ascii")).hexdigest()


def good_answer(anomalous: bool, fenced: bool = True) -> str:
    answer = dict(GOOD_ANSWER, defect=GOOD_DEFECT if anomalous else None)
    return "```json\n" + json.dumps(answer) + "\n```" if fenced else json.dumps(answer)


def strict_schema_problems(schema: Any, where: str = "schema") -> list[str]:
    """What strict structured outputs would refuse: an object that is not closed or has optional keys."""
    out: list[str] = []
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            props = schema.get("properties", {})
            if schema.get("additionalProperties") is not False:
                out.append(f"{where}: additionalProperties must be false")
            if sorted(schema.get("required", [])) != sorted(props):
                out.append(f"{where}: every property must be required")
        for k, v in schema.items():
            out += strict_schema_problems(v, f"{where}.{k}")
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            out += strict_schema_problems(v, f"{where}[{i}]")
    return out


def _first_user(body: dict) -> tuple[str | None, str]:
    """(image data URL or None, prompt text) of the first user message."""
    for m in body.get("messages", []):
        if m.get("role") != "user":
            continue
        content = m.get("content")
        if isinstance(content, str):
            return None, content
        url, text = None, ""
        for part in content or []:
            if part.get("type") == "image_url":
                url = part["image_url"]["url"]
            elif part.get("type") == "text":
                text += part.get("text", "")
        return url, text
    return None, ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeOpenAIServer

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        srv = self.server
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(raw)
        except ValueError:
            body = {}
        url, text = _first_user(body)
        key = image_key(url) if url else "text:" + hashlib.sha256(text.encode()).hexdigest()
        with srv.lock:
            srv.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "key": key,
                                 "connection": id(self.connection)})
            n = srv.per_key[key]
            srv.per_key[key] += 1
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            refusal = self._refuse_format(body)
            if refusal:
                self._json(400, {"object": "error", "message": refusal, "type": "BadRequestError",
                                 "param": "response_format", "code": 400})
                return
            self._act(_pick(srv.script_for(key, text), n), "this image is anomalous" in text.lower())
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _refuse_format(self, body: dict) -> str:
        """The 400 message for a response_format this server does not take ("" when it takes it)."""
        rf = body.get("response_format")
        self._format = rf.get("type") if isinstance(rf, dict) else None
        self._schema = None
        if self._format in (None, "text"):
            return ""
        if self._format not in self.server.response_formats:
            return f"response_format type {self._format!r} is not supported by this server"
        if self._format == "json_schema":
            spec = rf.get("json_schema") or {}
            problems = strict_schema_problems(spec.get("schema"))
            if not spec.get("name") or not isinstance(spec.get("schema"), dict) or problems:
                return "Invalid schema for response_format: " + "; ".join(problems or ["name and schema needed"])
            self._schema = spec["schema"]
        return ""

    def _good_content(self, anomalous: bool) -> str:
        if self._schema is None:
            return good_answer(anomalous, fenced=self._format != "json_object")
        import jsonschema

        answer = json.loads(good_answer(anomalous, fenced=False))
        if "defects" in self._schema.get("properties", {}):
            answer = {"defects": ["scratch", "dent"]}
        try:  # the schema the client sent must accept a correct answer
            jsonschema.validate(answer, self._schema)
        except jsonschema.ValidationError as exc:
            with self.server.lock:
                self.server.errors.append(f"the client's schema refuses a correct answer: {exc.message}")
        return json.dumps(answer)

    # -- actions
    def _act(self, action: Action, anomalous: bool) -> None:
        kind = action[0]
        if kind == "ok":
            self._json(200, {"id": "cmpl-1", "model": self.server.model_revision,
                             "choices": [{"index": 0, "message": {"role": "assistant",
                                                                  "content": self._good_content(anomalous)}}]})
        elif kind == "content":
            self._json(200, {"model": self.server.model_revision,
                             "choices": [{"message": {"role": "assistant", "content": action[1]}}]})
        elif kind == "status":
            code, headers = action[1], (action[2] if len(action) > 2 else {})
            self._json(code, {"error": {"message": f"scripted {code}", "type": "test"}}, headers)
        elif kind == "body":
            self._raw(200, action[1], "application/json")
        elif kind == "delay":
            time.sleep(action[1])
            self._act(action[2], anomalous)
        elif kind == "hang":
            self._wait_for_client_to_leave(limit=30.0)
            self.close_connection = True
        elif kind == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        else:
            raise ValueError(f"unknown action {action!r}")

    def _wait_for_client_to_leave(self, limit: float) -> None:
        end = time.monotonic() + limit
        while time.monotonic() < end and not self.server.closing.is_set():
            ready, _, _ = select.select([self.connection], [], [], 0.02)
            if ready:
                try:
                    if self.connection.recv(1, socket.MSG_PEEK) == b"":
                        return  # the client closed the connection (its timeout fired)
                except OSError:
                    return

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._raw(code, json.dumps(obj).encode("utf-8"), "application/json", headers)

    def _raw(self, code: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _pick(script: list[Action], n: int) -> Action:
    return script[min(n, len(script) - 1)]


class FakeOpenAIServer(ThreadingHTTPServer):
    """``with FakeOpenAIServer(scripts) as srv: ... srv.url`` (``http://127.0.0.1:PORT/v1``).

    ``scripts``: a dict image key -> list of actions, with ``default`` for every other request; or a function
    (key, prompt text) -> list of actions.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, scripts: dict[str, list[Action]] | Callable[[str, str], list[Action]] | None = None,
                 default: list[Action] | None = None, model_revision: str = "fake-model-2026-01",
                 response_formats: tuple[str, ...] = ("json_schema", "json_object")) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scripts = scripts or {}
        self.default = default or [("ok",)]
        self.model_revision = model_revision
        self.response_formats = tuple(response_formats)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.per_key: dict[str, int] = defaultdict(int)
        self.in_flight = 0
        self.max_in_flight = 0
        self.errors: list[str] = []  # what the server found wrong in the client's requests
        self.closing = threading.Event()
        self._thread: threading.Thread | None = None

    def script_for(self, key: str, text: str) -> list[Action]:
        if callable(self.scripts):
            return self.scripts(key, text)
        return self.scripts.get(key, self.default)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
