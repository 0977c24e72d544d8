"""The openai: backend against a tiny local OpenAI-compatible server (127.0.0.1, no network)."""
import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from mfsc_builder.captioners import CaptionRequest, make_captioner
from mfsc_builder.crop import crop_regions
from mfsc_builder.errors import BuildError

KEY = "sk-test-SECRET-0123456789"
GOOD = {
    "image_view": {"foreground": "toy", "background": "plain white"},
    "foreground_view": {"count": 2, "relation": "a red ball sits above a blue block"},
    "components": [
        {"name": "blue block", "count": 1, "location": "center", "colour": "blue", "texture": "smooth",
         "shape": "rectangular", "direction": "none", "sentence": "a smooth blue block in the middle"},
        {"name": "red ball", "count": 1, "location": "top left", "colour": "red", "texture": "smooth",
         "shape": "circular", "direction": "none", "sentence": "a small red ball"},
    ],
    "caption": "a toy made of a blue block and a red ball on white",
    "defect": None,
}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.active += 1
            srv.max_active = max(srv.max_active, srv.active)
            srv.calls.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            n = len(srv.calls)
        try:
            time.sleep(srv.delay)
            is_retry = any(m["role"] == "assistant" for m in body["messages"])
            mode = srv.mode
            if mode == "429-once" and n == 1:
                return self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"})
            if mode == "401":
                return self._send(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}})
            if mode == "500":
                return self._send(500, {"error": {"message": "boom"}})
            if mode == "garbage" or (mode == "garbage-then-good" and not is_retry):
                content = "I think this is a nice toy."
            elif mode == "defects":
                content = '```json\n["Scratch", "missing_part", "scratch", "dent"]\n```'
            else:
                content = "Here you go:\n```json\n" + json.dumps(GOOD) + "\n```"
            self._send(200, {"model": "tiny-served-2026", "choices": [{"message": {"content": content}}]})
        finally:
            with srv.lock:
                srv.active -= 1

    def _send(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.lock, srv.active, srv.max_active, srv.calls, srv.mode, srv.delay = threading.Lock(), 0, 0, [], "good", 0.0
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _requests(n=1):
    img = np.full((96, 96, 3), 250, np.uint8)
    cv2.rectangle(img, (30, 30), (66, 66), (40, 90, 200), -1)
    cv2.circle(img, (14, 14), 8, (210, 30, 30), -1)
    regs = crop_regions(img)
    return [CaptionRequest(f"toy/train/good/{i:03d}", "toy", img, regs) for i in range(n)]


def _captioner(server, **kw):
    return make_captioner("openai:tiny", api_base=f"http://127.0.0.1:{server.server_port}/v1", **kw)


def test_success_batch_with_bounded_concurrency(server, monkeypatch):
    monkeypatch.setenv("MFSC_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.delay = 0.05
    cap = _captioner(server, concurrency=2)
    assert KEY not in repr(cap) and KEY not in repr(vars(cap))
    reqs = _requests(5)
    res = cap.caption(reqs)
    assert len(res) == 5 and server.max_active <= 2 and len(server.calls) == 5
    r = res[0]
    assert r.provenance.status == "ok" and r.provenance.backend == "openai" and r.provenance.model == "tiny"
    assert r.provenance.revision == "tiny-served-2026" and r.provenance.prompt_version == "mfsc_v1"
    assert [c.name for c in r.fields.components] == ["blue block", "red ball"]
    assert r.fields.defect is None
    # regions are aligned by location; areas come from stage 1
    assert sorted(r.fields.region_names) == ["blue block", "red ball"]
    assert r.fields.components[0].area == pytest.approx(37 * 37 / 96**2, rel=0.05)
    path, headers, body = server.calls[0]
    assert path == "/v1/chat/completions" and headers["authorization"] == f"Bearer {KEY}"
    assert body["model"] == "tiny" and body["temperature"] == 0
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    png = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    assert (cv2.cvtColor(png, cv2.COLOR_BGR2RGB) == reqs[0].image).all()   # RGB round trip


def test_retry_after_then_success(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MFSC_API_KEY", raising=False)
    server.mode = "429-once"
    res = _captioner(server, max_retries=2).caption(_requests(1))
    assert len(server.calls) == 2 and res[0].provenance.status == "ok"
    assert "authorization" not in server.calls[0][1]   # no key in the environment: none sent


def test_invalid_answer_retried_then_fallback(server):
    server.mode = "garbage-then-good"
    res = _captioner(server).caption(_requests(1))
    assert res[0].provenance.status == "retried" and len(server.calls) == 2
    retry_msgs = server.calls[1][2]["messages"]
    assert [m["role"] for m in retry_msgs] == ["user", "assistant", "user"]
    assert "not valid JSON" in retry_msgs[2]["content"]
    server.mode = "garbage"
    res = _captioner(server).caption(_requests(1))
    assert res[0].provenance.status == "fallback" and res[0].provenance.backend == "openai"
    assert res[0].fields.image_view.foreground == "toy" and res[0].fields.components  # attribute fields


def test_server_errors(server, monkeypatch):
    server.mode = "500"
    res = _captioner(server, max_retries=1, timeout=5).caption(_requests(1))
    assert res[0].provenance.status == "fallback"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server.mode = "401"
    with pytest.raises(BuildError) as err:
        _captioner(server).caption(_requests(1))
    assert "HTTP 401" in str(err.value) and KEY not in str(err.value)


def test_timeout_falls_back(server):
    server.delay = 1.0
    cap = _captioner(server, timeout=0.2, max_retries=0)
    res = cap.caption(_requests(1))
    assert res[0].provenance.status == "fallback"


def test_key_required_for_openai_and_defects(server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("MFSC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(BuildError, match="OPENAI_API_KEY"):
        make_captioner("openai:gpt-4o")
    server.mode = "defects"
    assert _captioner(server).propose_defects("toy", _requests(1)[0].image) == ["scratch", "missing part", "dent"]
