"""`mfsc build --captioner openai:...` against a faulty OpenAI-compatible server (tests/fake_openai_server.py):
every image ends with a validated record or a recorded fallback, retries are bounded (requests counted per
image), concurrency stays within its limit, and the API key never appears in output, logs or the dataset."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, image_key

from mfsc_builder.build import BuildConfig, run_build
from mfsc_builder.captioners.openai_api import OpenAICaptioner, png_data_url
from mfsc_builder.errors import BuildError

KEY = "sk-SENTINEL-rel6-5f0c1d2e3a4b"
CLASSES = ["pill_box", "hex_nut"]
RETRIES = 2  # --max-retries: each request is tried at most 1 + RETRIES times
TIMEOUT = 0.4  # --timeout (seconds per request)
CONCURRENCY = 3
RA0 = {"Retry-After": "0"}

# fault name -> (script of actions per request of that image, provenance status, requests it must take)
FAULTS = {
    "ok": ([("ok",)], "ok", 1),
    "429-then-ok": ([("status", 429, RA0), ("ok",)], "ok", 2),
    "500-then-ok": ([("status", 500), ("ok",)], "ok", 2),
    "503-twice-then-ok": ([("status", 503, RA0), ("status", 503, RA0), ("ok",)], "ok", 3),
    "slow-ok": ([("delay", 0.15, ("ok",))], "ok", 1),
    "timeout-then-ok": ([("hang",), ("ok",)], "ok", 2),
    "drop-then-ok": ([("drop",), ("ok",)], "ok", 2),
    "malformed-json-then-ok": ([("body", b'{"choices": [{"message": '), ("ok",)], "ok", 2),
    "schema-broken-then-ok": ([("content", '{"image_view": {"foreground": "box"}, "components": []}'), ("ok",)],
                              "retried", 2),
    "prose-then-ok": ([("content", "It is a nice pill box."), ("ok",)], "retried", 2),
    "always-500": ([("status", 500)], "fallback", 2 * (RETRIES + 1)),
    "always-429": ([("status", 429, RA0)], "fallback", 2 * (RETRIES + 1)),
    "always-timeout": ([("hang",)], "fallback", 2 * (RETRIES + 1)),
    "always-drop": ([("drop",)], "fallback", 2 * (RETRIES + 1)),
    "always-schema-broken": ([("content", '{"components": "none"}')], "fallback", 2),
}


@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    """The openai client backs off 0.5 s * 2^attempt (with jitter) without Retry-After; tests keep the same
    rule, 50x faster."""
    import openai._base_client

    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("MFSC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def samples(demo_root):
    from fsad_data import read_dataset

    return read_dataset(demo_root, classes=CLASSES)


@pytest.fixture(scope="module")
def keys(samples) -> dict[str, str]:
    """Sample id -> the image key the server sees (the same PNG data URL the captioner sends)."""
    from fsad_data import load_rgb

    out = {s.id: image_key(png_data_url(load_rgb(s.image_path))) for s in samples}
    assert len(set(out.values())) == len(out), "two images with the same pixels would share a script"
    return out


def _plan(samples) -> dict[str, str]:
    """Sample id -> fault name, cycling through every fault (each one is met by at least two images)."""
    names = sorted(FAULTS)
    assert len(samples) >= 2 * len(names)
    return {s.id: names[i % len(names)] for i, s in enumerate(sorted(samples, key=lambda s: s.id))}


def _cfg(demo_root: Path, out: Path, url: str, **kw) -> BuildConfig:
    # workers=1: crop worker processes would take the cores from the fake server's thread, and a 0.4 s
    # timeout would then turn a slow "ok" into a retry that the exact request counts do not expect
    base = {"source": str(demo_root), "out": str(out), "classes": CLASSES, "part_size": 16, "workers": 1,
            "captioner": {"name": "openai:fake-vlm", "api_base": url, "concurrency": CONCURRENCY,
                          "timeout": TIMEOUT, "max_retries": RETRIES, "batch_size": 8}}
    base.update(kw)
    return BuildConfig(**base)


def _all_bytes(folder: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def test_faulty_server_every_image_gets_a_record_retries_bounded_key_never_leaks(
        demo_root, samples, keys, tmp_path, capsys, caplog):
    import datasets

    plan = _plan(samples)
    scripts = {keys[sid]: FAULTS[fault][0] for sid, fault in plan.items()}
    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    with FakeOpenAIServer(scripts) as srv:
        summary = run_build(_cfg(demo_root, out, srv.url))
    assert not summary.skipped

    # every image has a record; its provenance says what happened to it
    images = datasets.load_from_disk(str(out / "images"))
    rows = {r["id"]: r for split in images for r in images[split].remove_columns(["image", "mask"])}
    assert sorted(rows) == sorted(s.id for s in samples)
    for sid, fault in plan.items():
        prov = rows[sid]["provenance"]
        assert prov["status"] == FAULTS[fault][1], (sid, fault, prov)
        assert prov["backend"] == "openai" and prov["model"] == "fake-vlm" and prov["prompt_version"] == "mfsc_v1"
        if prov["status"] != "fallback":
            assert rows[sid]["caption"] == "a white pill box with a blue lid on a plain white background"
            assert [c["name"] for c in rows[sid]["components"]] == ["white body", "blue lid"]
            if rows[sid]["label"] == 1:
                assert rows[sid]["defect"]["type"] == "scratch"
        else:  # the attribute captioner's fields: a caption and components measured from the image
            assert rows[sid]["caption"] and rows[sid]["components"]
    # retries are bounded: exactly the requests each fault needs, none more
    for sid, fault in plan.items():
        assert srv.per_key[keys[sid]] == FAULTS[fault][2], (sid, fault, srv.per_key[keys[sid]])
    assert len(srv.requests) == sum(FAULTS[f][2] for f in plan.values())
    # the answers were asked for with the record schema, which the server found strict and correct
    assert not srv.errors, srv.errors
    assert all(r["body"]["response_format"]["type"] == "json_schema" for r in srv.requests)
    assert {rows[s]["provenance"]["response_format"] for s in rows} == {"json_schema"}
    # one pool of kept-alive connections: fewer connections than requests
    assert len({r["connection"] for r in srv.requests}) < len(srv.requests)
    # concurrency: never more requests in flight than --concurrency (the server counts hanging ones too)
    assert 1 < srv.max_in_flight <= CONCURRENCY
    # the key went to the server (so the test is meaningful) ...
    assert all(r["headers"].get("authorization") == f"Bearer {KEY}" for r in srv.requests)
    assert all(r["path"] == "/v1/chat/completions" for r in srv.requests)
    # ... and nowhere else: not in output, logs, the stored work or the datasets
    captured = capsys.readouterr()
    assert KEY not in captured.out and KEY not in captured.err and KEY not in caplog.text
    leaks = [str(p) for p, data in _all_bytes(out) if KEY.encode() in data]
    assert not leaks, leaks
    # the class records carry the worst status of their references and are complete
    classes = datasets.load_from_disk(str(out / "classes"))
    assert sorted(classes["class_name"]) == sorted(CLASSES)
    for c in classes:
        assert c["texts"] and c["provenance"]["status"] in ("ok", "retried", "fallback")


def test_rerun_of_a_finished_build_sends_no_request(demo_root, samples, tmp_path):
    """Stored captions are never asked for again: a rerun against a dead server finishes from the store."""
    out = tmp_path / "out"
    with FakeOpenAIServer(default=[("ok",)]) as srv:
        cfg = _cfg(demo_root, out, srv.url)
        cfg.captioner.timeout = 30.0  # only answers are counted here: no timeout retry on a loaded machine
        run_build(cfg)
        first = len(srv.requests)
    assert first == len(samples)
    with FakeOpenAIServer(default=[("drop",)]) as srv2:
        summary = run_build(_cfg(demo_root, out, srv2.url))
    assert summary.resumed and len(srv2.requests) == 0


HOSTILE_BODIES = {
    "choices-not-a-list": b'{"choices": "x"}',
    "empty-choices": b'{"choices": []}',
    "null-content": b'{"choices": [{"message": {"content": null}}]}',
    "json-list": b"[]",
    "json-null": b"null",
    "json-string": b'"all good"',
    "invalid-utf8": b"\xff\xfe{}",
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_response_bodies_are_retried_not_fatal(demo_root, tmp_path, name):
    """A 200 answer whose body is not a chat completion (JSON list/null/string, bytes that are not UTF-8 crashed
    the build before; fixed in openai_api._post): the request is retried (bounded) and the image still gets
    its record."""
    body = HOSTILE_BODIES[name]
    with FakeOpenAIServer(default=[("body", body), ("ok",)]) as srv:
        run_build(_cfg(demo_root, tmp_path / "out", srv.url, classes=["pill_box"]))
    import datasets

    images = datasets.load_from_disk(str(tmp_path / "out" / "images"))
    statuses = [r["status"] for split in images for r in images[split]["provenance"]]
    assert len(statuses) == 20 and set(statuses) <= {"ok", "retried"}
    assert max(srv.per_key.values()) <= 2 * (RETRIES + 1)


def test_configuration_errors_stop_the_build_without_showing_the_key(demo_root, tmp_path, capsys, caplog):
    """401/403/404 are not retried: one BuildError naming the API, no key even when the server echoes it."""
    from typer.testing import CliRunner

    from mfsc_builder.cli import app

    caplog.set_level(logging.INFO)
    for code in (401, 403, 404):
        with FakeOpenAIServer(default=[("status", code)]) as srv:
            with pytest.raises(BuildError) as e:
                run_build(_cfg(demo_root, tmp_path / f"out{code}", srv.url, classes=["pill_box"]))
            # not retried: each image of the batch (8) is asked at most once
            assert max(srv.per_key.values()) == 1 and len(srv.requests) <= 8 and str(code) in str(e.value) and KEY not in str(e.value)
    # the same through the CLI: exit 1, one line, no key, no traceback
    with FakeOpenAIServer(default=[("status", 401)]) as srv:
        res = CliRunner().invoke(app, ["build", str(demo_root), "--out", str(tmp_path / "cli"), "--classes",
                                       "pill_box", "--captioner", "openai:fake-vlm", "--api-base", srv.url,
                                       "--quiet"], env={"OPENAI_API_KEY": KEY})
    assert res.exit_code == 1 and "401" in res.output and "Traceback" not in res.output, res.output
    assert KEY not in res.output and KEY not in caplog.text
    assert not (tmp_path / "cli" / "images").exists()


def test_server_error_message_echoing_the_key_is_redacted(demo_root, tmp_path, monkeypatch):
    """Servers echo a wrong key in their error message ("Incorrect API key provided: sk-..."): redacted."""
    import json as _json

    body = _json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}. See docs."}}).encode()

    with FakeOpenAIServer(default=[("status", 401)]) as srv:
        # answer 401 with the echoing body
        from fake_openai_server import _Handler

        def _status_with_body(self, action, anomalous, _orig=_Handler._act):
            if action[0] == "status":
                return self._raw(action[1], body, "application/json")
            return _orig(self, action, anomalous)

        monkeypatch.setattr(_Handler, "_act", _status_with_body)
        with pytest.raises(BuildError) as e:
            run_build(_cfg(demo_root, tmp_path / "out", srv.url, classes=["pill_box"]))
    msg = str(e.value)
    assert "HTTP 401" in msg and "Incorrect API" in msg and "***" in msg and KEY not in msg, msg


@pytest.mark.parametrize("header, expect", [("3600", None), ("0.05", 0.05), ("soon", 0.01)])
def test_retry_after_is_honoured_but_capped(monkeypatch, header, expect):
    """Retry-After is honoured up to two minutes (the openai client's rule); a server asking for an hour's
    pause does not stall the build for an hour: that request is not retried and its image falls back; an
    unreadable Retry-After falls back to the exponential backoff (0.01 s here, less up to 25% jitter)."""
    import time

    import numpy as np

    from mfsc_builder.captioners.schema import Ask

    waits: list[float] = []
    with FakeOpenAIServer(default=[("status", 429, {"Retry-After": header}), ("ok",)]) as srv:
        monkeypatch.setattr(time, "sleep", waits.append)  # the server thread never calls sleep here
        cap = OpenAICaptioner("fake-vlm", api_base=srv.url, timeout=TIMEOUT, max_retries=RETRIES)
        reply = cap._complete(Ask(np.zeros((8, 8, 3), np.uint8), [("user", "This image is normal.")], "normal"))
    if expect is None:
        assert reply.text is None and len(srv.requests) == 1 and waits == []
    else:
        assert reply.text and len(srv.requests) == 2
        assert len(waits) == 1 and 0.75 * expect - 1e-6 <= waits[0] <= expect + 1e-6, waits


@pytest.mark.parametrize("accepts, used", [(("json_schema", "json_object"), "json_schema"),
                                           (("json_object",), "json_object"), ((), "prompt")])
def test_refused_record_schema_falls_back_once_and_is_recorded(demo_root, tmp_path, accepts, used):
    """A server that refuses the record schema (HTTP 400 naming response_format) is asked with json_object from
    then on, one that refuses that too with the prompt alone; every record and build_info say which was used,
    and the refusals cost at most one request per format and worker, never one per image."""
    import json

    import datasets

    with FakeOpenAIServer(response_formats=accepts) as srv:
        cfg = _cfg(demo_root, tmp_path / "out", srv.url, classes=["pill_box"])
        cfg.captioner.timeout = 30.0  # no timeout retries on a loaded machine: only refusals add requests
        run_build(cfg)
    images = datasets.load_from_disk(str(tmp_path / "out" / "images"))
    provs = [p for split in images for p in images[split]["provenance"]]
    assert len(provs) == 20 and {p["status"] for p in provs} == {"ok"}
    assert {p["response_format"] for p in provs} == {used}
    info = json.loads((tmp_path / "out" / "build_info.json").read_text())
    assert info["captioner"]["response_format"] == "json_schema"          # what was asked for first
    assert info["captioner"]["response_formats_used"] == {used: 20}
    classes = datasets.load_from_disk(str(tmp_path / "out" / "classes"))
    assert classes[0]["provenance"]["response_format"] == used
    refused = len(srv.requests) - 20
    steps = ["json_schema", "json_object", "prompt"].index(used)
    assert steps <= refused <= steps * CONCURRENCY, refused
    # after the fall back no request asks for the refused formats again
    kinds = [(r["body"].get("response_format") or {}).get("type", "prompt") for r in srv.requests]
    assert kinds[-1] == used and kinds[-(20 - CONCURRENCY):] == [used] * (20 - CONCURRENCY)
    assert not srv.errors, srv.errors


def test_a_400_that_is_not_about_the_format_stops_the_build(demo_root, tmp_path):
    """Only a refusal that names the response format lowers it; any other 400 (a wrong model name) is a
    configuration error: one line, not retried, not turned into fallbacks."""
    with FakeOpenAIServer(default=[("status", 400)]) as srv, pytest.raises(BuildError, match="HTTP 400"):
        run_build(_cfg(demo_root, tmp_path / "out", srv.url, classes=["pill_box"]))
    assert all(r["body"]["response_format"]["type"] == "json_schema" for r in srv.requests)
    assert max(srv.per_key.values()) == 1


def test_prompt_file_and_response_format_from_the_command_line(demo_root, tmp_path):
    """`mfsc build --prompt FILE --response-format prompt`: the server gets the user's prompt and no
    response_format; records carry the file's version, build_info its SHA-256; an edited prompt file is a
    different build (refused on resume, not mixed)."""
    import hashlib
    import json

    import datasets
    from typer.testing import CliRunner

    from mfsc_builder.captioners.schema import PROMPT_DIR
    from mfsc_builder.cli import app

    src = (PROMPT_DIR / "mfsc_v1.txt").read_text(encoding="utf-8")
    mine = tmp_path / "acme.txt"
    mine.write_text(src.replace("# version: mfsc_v1", "# version: acme-7").replace(
        "You describe one industrial inspection image", "ACME-PROMPT: you describe one inspection image"),
        encoding="utf-8")
    out = tmp_path / "out"
    args = ["build", str(demo_root), "--out", str(out), "--classes", "pill_box", "--captioner", "openai:fake-vlm",
            "--prompt", str(mine), "--response-format", "prompt", "--quiet", "--max-retries", "1"]
    with FakeOpenAIServer() as srv:
        res = CliRunner().invoke(app, [*args, "--api-base", srv.url], env={"OPENAI_API_KEY": KEY})
    assert res.exit_code == 0, res.output
    assert srv.requests and all("response_format" not in r["body"] for r in srv.requests)
    assert all("ACME-PROMPT" in r["body"]["messages"][0]["content"][1]["text"] for r in srv.requests)
    images = datasets.load_from_disk(str(out / "images"))
    provs = [p for split in images for p in images[split]["provenance"]]
    assert {(p["prompt_version"], p["response_format"], p["status"]) for p in provs} == {("acme-7", "prompt", "ok")}
    info = json.loads((out / "build_info.json").read_text())
    assert info["captioner"]["prompt_sha256"] == hashlib.sha256(mine.read_bytes()).hexdigest()
    assert info["captioner"]["response_format"] == "prompt"
    mine.write_text(mine.read_text(encoding="utf-8") + "\nBe brief.\n", encoding="utf-8")
    with FakeOpenAIServer() as srv:
        res = CliRunner().invoke(app, [*args, "--api-base", srv.url], env={"OPENAI_API_KEY": KEY})
    assert res.exit_code != 0 and "Traceback" not in res.output and not srv.requests, res.output
    bad_args = [a if a != "prompt" else "yaml" for a in args]
    bad = CliRunner().invoke(app, [*bad_args, "--api-base", "http://127.0.0.1:9/v1", "--out", str(tmp_path / "b")],
                             env={"OPENAI_API_KEY": KEY})
    assert bad.exit_code != 0 and "yaml" in bad.output and "Traceback" not in bad.output, bad.output
