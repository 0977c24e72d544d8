"""Issue 11 section 6, secrets: nothing a server sends can carry the API key into a record, `mfsc show`, the
published card or parquet; server strings are capped; an --api-base with a key in its query string (or
user:password) is never shown. Each test fails on the urllib backend (which stored the `model` field as
given and printed the address verbatim)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer

from mfsc_builder.build import BuildConfig, run_build
from mfsc_builder.errors import BuildError

KEY = "sk-ECHOED-secret-77c1d0e9b2a4"
QKEY = "QUERYSECRET-5be1a9d27c"


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    import openai._base_client

    monkeypatch.setattr(openai._base_client, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("MFSC_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _cfg(demo_root: Path, out: Path, url: str) -> BuildConfig:
    return BuildConfig(source=str(demo_root), out=str(out), classes=["pill_box"],
                       captioner={"name": "openai:fake-vlm", "api_base": url, "concurrency": 2, "timeout": 2.0,
                                  "max_retries": 1, "batch_size": 8})


def _files_with(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*")) if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_server_echoing_the_key_never_gets_it_into_records_show_or_the_card(demo_root, tmp_path, capsys):
    """The server puts the bearer token (and a 10 000-character tail) into its `model` field and the key into
    every answer's caption: records, build_info, `mfsc show` and `mfsc publish --dry-run` hold no key, and the
    stored model revision is capped."""
    import json

    import datasets
    from typer.testing import CliRunner

    from mfsc_builder.cli import app

    def echo(key: str, text: str) -> list:
        answer = {"image_view": {"foreground": "pill box", "background": "plain white"},
                  "foreground_view": {"count": 1, "relation": "one white body"},
                  "components": [{"name": "white body", "count": 1, "location": "center", "colour": "white",
                                  "texture": "smooth", "shape": "rectangular", "direction": "horizontal",
                                  "sentence": f"a white body, token {KEY}"}],
                  "caption": f"a pill box (your key is {KEY})",
                  "defect": ({"type": "scratch", "location": "center", "size": "small", "colour": "grey",
                              "sentence": "a scratch"} if "this image is anomalous" in text.lower() else None)}
        return [("content", json.dumps(answer))]

    out = tmp_path / "out"
    with FakeOpenAIServer(echo, model_revision=f"served-by Bearer {KEY} " + "x" * 10_000) as srv:
        run_build(_cfg(demo_root, out, srv.url))
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in srv.requests)  # the key did go out
    images = datasets.load_from_disk(str(out / "images"))
    rows = [r for split in images for r in images[split].remove_columns(["image", "mask"])]
    assert rows and all(r["provenance"]["status"] == "ok" for r in rows)
    assert all("***" in r["caption"] and KEY not in r["caption"] for r in rows)
    revisions = {r["provenance"]["revision"] for r in rows}
    assert len(revisions) == 1 and KEY not in revisions.pop()
    assert all(len(r["provenance"]["revision"]) <= 120 for r in rows)
    assert not _files_with(out, KEY)
    runner = CliRunner()
    shown = runner.invoke(app, ["show", str(out), "--class", "pill_box"])
    assert shown.exit_code == 0 and "served-by" in shown.output and KEY not in shown.output, shown.output
    pub = runner.invoke(app, ["publish", str(out), "--repo-id", "org/mfsc", "--dry-run", str(tmp_path / "pub")])
    assert pub.exit_code == 0, pub.output
    assert (tmp_path / "pub" / "README.md").is_file() and not _files_with(tmp_path / "pub", KEY)
    assert KEY not in capsys.readouterr().out


def test_a_key_in_the_api_base_query_is_sent_but_never_shown(demo_root, tmp_path, caplog):
    """`--api-base http://host/v1?api-key=...` (Azure-style gateways): the parameter reaches the server with
    every request, and neither the refusal line nor the log shows it, even when the server echoes it."""
    caplog.set_level(logging.DEBUG)
    body = ('{"error": {"message": "key ' + QKEY + ' is not valid for this deployment"}}').encode()
    with FakeOpenAIServer(default=[("status", 401)]) as srv:
        from fake_openai_server import _Handler

        orig = _Handler._act

        def refuse(self, action, anomalous):
            return self._raw(401, body, "application/json") if action[0] == "status" else orig(self, action,
                                                                                               anomalous)

        _Handler._act = refuse
        try:
            with pytest.raises(BuildError) as err:
                run_build(_cfg(demo_root, tmp_path / "out", srv.url + f"?api-key={QKEY}&api-version=2026-01"))
        finally:
            _Handler._act = orig
    assert srv.requests and all(f"api-key={QKEY}" in r["path"] for r in srv.requests)
    assert all(r["path"].startswith("/v1/chat/completions?") for r in srv.requests)
    msg = str(err.value)
    assert "HTTP 401" in msg and "api-key=***" in msg and QKEY not in msg, msg
    assert QKEY not in caplog.text


def test_user_password_in_the_api_base_is_never_shown(monkeypatch):
    from mfsc_builder.captioners.openai_api import OpenAICaptioner, split_api_base

    base, query, shown = split_api_base(f"https://user:{QKEY}@gw.example:8443/v1/?token={QKEY}")
    assert QKEY not in shown and shown == "https://gw.example:8443/v1?token=***"
    assert query == {"token": QKEY} and "?" not in base
    cap = OpenAICaptioner("m", api_base=f"https://user:{QKEY}@gw.example:8443/v1?token={QKEY}")
    assert QKEY not in repr(cap) and KEY not in repr(cap)


def test_long_server_strings_are_refused_not_stored():
    """A 'sentence' of 100 000 characters is an invalid answer (retried, then a fallback), not a record."""
    from fake_openai_server import GOOD_ANSWER

    from mfsc_builder.captioners.schema import validate_answer

    long = dict(GOOD_ANSWER, caption="a " * 50_000)
    fields, errors = validate_answer(long, anomalous=False)
    assert fields is None and any("caption" in e and "long" in e for e in errors), errors
