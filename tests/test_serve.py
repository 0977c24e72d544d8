"""`detector serve`: the API through LitServe's test client (the same numbers as `Detector.predict`), the bad inputs
each refused with a 4xx naming the problem, the real server on loopback (start, /health, SIGTERM drains), and the
operator page in headless Chromium (upload, verdict, named defect, the threshold slider deciding on the page only).

The detectors are a tiny CLIP checkpoint trained with the backbone's JSON config path (so the spawned workers and a
fresh `detector serve` process load it) and its ONNX export, served side by side."""
import base64
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pytest
from conftest import TINY_CLIP_CONFIG
from detector_fixtures import make_image
from headless_browser import headless_chromium
from PIL import Image

from fsad_data.atomic import write_png_atomic

KEY = "test-key-" + "x" * 24
RES = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(checkpoint with thresholds, its ONNX export, a folder of test images)."""
    from detector.config import TrainConfig
    from detector.deploy.export import export_checkpoint
    from detector.run.train import train_model
    from detector.store.saved_detector import load_detector, save_detector

    root = tmp_path_factory.mktemp("serve")
    cfg = TrainConfig(class_name="widget", backbone=str(TINY_CLIP_CONFIG), pretrained="none", epochs=1,
                      image_epochs=1, shots=2, baseline="promptad")
    model = train_model(cfg, progress=False, shot_images=[make_image(), make_image((5, 40, 6))],
                        shot_names=["good/000.png", "good/001.png"], record=None)
    ckpt = save_detector(model, root / "widget")
    images = root / "images"
    images.mkdir()
    arrays = [make_image(), make_image((10, 10, 20)), make_image((30, 5, 12), size=80)]
    for i, a in enumerate(arrays):
        write_png_atomic(images / f"{i}.png", a)
    pred = load_detector(ckpt).predict([arrays[1]], resolution=RES)
    pixel = float(np.quantile(pred.maps[0], 0.8))  # the top fifth of the defective image: a region at least
    (ckpt / "threshold.json").write_text(json.dumps({"fused": {
        "pixel_threshold": pixel, "image_threshold": float(pred.scores[0]), "resolution": RES}}))
    onnx = export_checkpoint(ckpt, "onnx", root / "widget-onnx")
    return ckpt, onnx, images


def _settings(served, **kw):
    from detector.deploy.serve import ServeSettings

    ckpt, onnx, _ = served
    return ServeSettings([f"widget={ckpt}", f"onnx={onnx}"], **kw)


def _wait_ready(get, timeout=120.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if get("/health").status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError("the workers did not become ready")


@pytest.fixture(scope="module")
def client(served):
    """The service in this process through LitServe's test set-up and FastAPI's TestClient, with an API key."""
    from fastapi.testclient import TestClient
    from litserve.utils import wrap_litserve_start

    from detector.deploy.serve import Limits, build_server, load_all

    settings = _settings(served, api_key=KEY, limits=Limits(max_bytes=2 << 20, max_pixels=1_000_000, max_images=4),
                         watch=served[2])
    server, _ = build_server(settings, load_all(settings))
    with wrap_litserve_start(server) as srv, TestClient(srv.app, headers={"X-API-Key": KEY}) as c:
        _wait_ready(c.get)
        yield c


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _same(got: dict, want, names_defects: bool) -> None:
    assert got["score"] == pytest.approx(want.score, abs=1e-5)
    assert got["anomalous"] == want.anomalous and got["size"] == list(want.map.shape)
    if names_defects:
        assert [(d["component"], d["location"], d["sentence"][:20]) for d in got["defects"]] == \
            [(d["component"], d["location"], d["sentence"][:20]) for d in want.defects]
        for g, w in zip(got["defects"], want.defects):
            assert g["area"] == pytest.approx(w["area"], abs=1e-6) and g["peak"] == pytest.approx(w["peak"], abs=1e-4)
    else:
        assert got["defects"] is None


def test_predict_equals_detector_predict_for_checkpoint_and_export(client, served):
    from detector import Detector

    ckpt, onnx, images = served
    paths = sorted(images.glob("*.png"))
    for name, source, names in (("widget", ckpt, True), ("onnx", onnx, False)):
        want = Detector.load(source).predict(paths)
        files = [("image", (p.name, p.read_bytes(), "image/png")) for p in paths]
        res = client.post(f"/v1/detectors/{name}/predict", files=files)
        assert res.status_code == 200, res.text
        body = res.json()
        assert [i["name"] for i in body["images"]] == [p.name for p in paths]
        for got, w in zip(body["images"], want):
            _same(got, w, names)
        assert body["thresholds"]["image"] is not None
    # base64 JSON, and one raw image/png body: the same numbers
    want = Detector.load(ckpt).predict(paths[1])[0]
    res = client.post("/v1/detectors/widget/predict", json={"images": [base64.b64encode(paths[1].read_bytes()).decode()]})
    _same(res.json()["images"][0], want, True)
    res = client.post("/v1/detectors/widget/predict", content=paths[1].read_bytes(), headers={"Content-Type": "image/png"})
    _same(res.json()["images"][0], want, True)


def test_thresholds_in_the_request_map_and_overlay(client, served):
    from detector import Detector

    ckpt, _, images = served
    path = images / "1.png"
    det = Detector.load(ckpt)
    auto = det.predict(path)[0]
    want = det.predict(path, threshold=float(np.quantile(auto.map, 0.5)), image_threshold=auto.score + 1)[0]
    res = client.post("/v1/detectors/widget/predict", params={"threshold": float(np.quantile(auto.map, 0.5)),
                      "image_threshold": auto.score + 1, "map": "true", "overlay": "true"},
                      files=[("image", ("1.png", path.read_bytes(), "image/png"))])
    item = res.json()["images"][0]
    _same(item, want, True)
    assert item["anomalous"] is False and res.json()["thresholds"]["image"] == pytest.approx(auto.score + 1)
    amap = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["map_png"])))).astype(np.float64) / 65535
    lo, hi = item["map_range"]
    np.testing.assert_allclose(lo + amap * (hi - lo), want.map, atol=(hi - lo) / 60000 + 1e-6)
    overlay = Image.open(io.BytesIO(base64.b64decode(item["overlay_png"])))
    assert overlay.width >= 64 and overlay.height > 64  # the picture above its caption band


def test_detectors_health_metrics_openapi_and_watch(client, served):
    info = {d["name"]: d for d in client.get("/v1/detectors").json()["detectors"]}
    assert set(info) == {"widget", "onnx"}
    w, o = info["widget"], info["onnx"]
    assert (w["class"], w["shots"], w["resolution"], w["engine"], w["names_defects"]) == ("widget", 2, RES, "pytorch", True)
    assert o["engine"] == "onnx" and o["names_defects"] is False and o["class"] == "widget"
    assert w["thresholds"]["pixel"] is not None and w["provenance"]["pretrained"] == "none"
    assert w["thresholds_in_force"]["image"] == w["thresholds"]["image"] and w["threshold_change"] is False
    assert client.get("/health").json()["status"] == "ok"
    client.post("/v1/detectors/widget/predict", files=[("image", ("a.png", _png(make_image()), "image/png"))])
    text = client.get("/metrics").text
    for name in ("detector_requests_total", "detector_request_seconds_bucket", "detector_batch_images_bucket",
                 "detector_images"):
        assert name in text, name
    assert 'detector_requests_total{detector="widget",status="200"}' in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/detectors/widget/predict", "/v1/detectors/onnx/predict", "/v1/detectors"} <= set(paths)
    names = client.get("/v1/watch").json()["images"]
    assert sorted(names) == ["0.png", "1.png", "2.png"]
    assert client.get("/v1/watch/1.png").content == (served[2] / "1.png").read_bytes()
    for bad in ("..%2Fwidget%2Fconfig.json", "nope.png"):
        assert client.get(f"/v1/watch/{bad}").status_code == 404
    assert client.post("/v1/detectors/widget/thresholds", json={"image": 0.1}).status_code == 403


def _bomb(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height gray pixels, with one compressed row: decoding it whole would
    need width x height bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + \
        chunk(b"IEND", b"")


def _truncated() -> bytes:
    data = _png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return data[: len(data) // 2]


@pytest.mark.parametrize("what, kwargs, status, words", [
    ("too big a body", {"files": [("image", ("a.png", b"\0" * (3 << 20), "image/png"))]}, 413, "over the limit of 2 MiB"),
    ("pixel bomb under Pillow's limit", {"files": [("image", ("b.png", _bomb(2000, 1000), "image/png"))]}, 413,
     "2000 x 1000 = 2000000 pixels, over the limit of 1000000"),
    ("pixel bomb over Pillow's limit", {"files": [("image", ("b.png", _bomb(60000, 60000), "image/png"))]}, 413,
     "too many pixels to decode"),
    ("wrong content type", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
     "content type 'text/plain'"),
    ("not an image", {"files": [("image", ("c.png", b"GIF89a-not-really", "image/png"))]}, 415, "not an image"),
    ("truncated", {"files": [("image", ("d.png", _truncated(), "image/png"))]}, 422, "truncated or corrupt"),
    ("empty file", {"files": [("image", ("e.png", b"", "image/png"))]}, 422, "empty file"),
    ("no image", {"json": {"images": []}}, 422, "no image in the request"),
    ("bad JSON", {"content": b"{nope", "headers": {"Content-Type": "application/json"}}, 422, "not valid JSON"),
    ("bad base64", {"json": {"images": ["***"]}}, 422, "images[0]: not valid base64"),
    ("too many images", {"json": {"images": [base64.b64encode(_png(make_image())).decode()] * 5}}, 413,
     "5 images in one request, over the limit of 4"),
    ("bad threshold", {"json": {"images": [base64.b64encode(_png(make_image())).decode()], "threshold": "abc"}},
     422, "threshold 'abc' is not a finite number"),
    ("unknown option", {"json": {"images": [base64.b64encode(_png(make_image())).decode()], "treshold": 1}},
     422, "unknown option(s) treshold"),
    ("tiny image", {"files": [("image", ("f.png", _png(np.zeros((4, 4, 3), np.uint8)), "image/png"))]}, 422,
     "smaller than 8 x 8"),
])
def test_bad_inputs_are_4xx_naming_the_problem(client, what, kwargs, status, words):
    res = client.post("/v1/detectors/widget/predict", **kwargs)
    assert res.status_code == status, (what, res.text)
    assert words in res.json()["detail"], (what, res.text)
    assert "Traceback" not in res.text


def test_an_unknown_detector_is_a_404_naming_the_served_ones(client):
    files = [("image", ("a.png", _png(make_image()), "image/png"))]
    res = client.post("/v1/detectors/nope/predict", files=files)
    assert res.status_code == 404, res.text
    detail = res.json()["detail"]
    assert "'nope'" in detail and "widget" in detail, detail
    assert client.post("/v1/detectors/widget/predict", files=files).status_code == 200  # the real one is not shadowed


def test_the_api_key_is_asked_and_compared(client):
    files = [("image", ("a.png", _png(make_image()), "image/png"))]
    del client.headers["X-API-Key"]  # the same client (its event loop receives the workers' answers), no key
    try:
        for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY[:-1]}):
            res = client.post("/v1/detectors/widget/predict", files=files, headers=headers)
            assert res.status_code == 401 and "API key" in res.json()["detail"], headers
            assert client.get("/v1/detectors", headers=headers).status_code == 401
            assert client.get("/metrics", headers=headers).status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200  # the LB, the page
        ok = client.post("/v1/detectors/widget/predict", files=files, headers={"Authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    finally:
        client.headers["X-API-Key"] = KEY


def test_names_and_refusals_before_start(served, tmp_path):
    from detector.deploy.serve import ServeSettings, check_settings, detector_names
    from detector.errors import DetectorError

    assert detector_names(["a/b/widget", "x/widget/", "line1=org/model", "org/model"]) == [
        ("widget", "a/b/widget"), ("widget-2", "x/widget/"), ("line1", "org/model"), ("model", "org/model")]
    for kw, words in (({"host": "192.168.1.4"}, "--host 192.168.1.4"), ({"port": 80}, "--port 80"),
                      ({"watch": tmp_path / "none"}, "--watch")):
        with pytest.raises(DetectorError, match=words):
            check_settings(ServeSettings(["x"], **kw))


# ---- the real server ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url, data=None, headers=None, timeout=60):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _multipart(files):
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{n}"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for n, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Running:
    """`detector serve` in a subprocess (its own session and process group) on a free loopback port, ready once
    /health says so. Its output goes to a file, so reading it never waits on a process that holds the pipe;
    ``stop`` always ends the whole process group."""

    def __init__(self, args, log_dir, env=None, ready_s=180.0):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"serve-{self.port}.log"
        cmd = [sys.executable, "-c", "from detector.cli import app; app()", "serve", *map(str, args),
               "--port", str(self.port)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **(env or {})}, start_new_session=True)
        try:
            self._wait_ready(ready_s)
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self, ready_s):
        t0 = time.monotonic()
        while time.monotonic() - t0 < ready_s:
            if self.proc.poll() is not None:
                raise AssertionError(f"detector serve exited {self.proc.returncode}: {self.output()}")
            try:
                if _request(self.url + "/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"detector serve did not become ready in {ready_s:.0f} s: {self.output()}")

    def output(self):
        return self.log.read_text(errors="replace")

    def group(self):
        """The processes still in the server's process group (its children keep it, orphaned or not)."""
        import psutil

        left = []
        for p in psutil.process_iter(["pid"]):
            try:
                if p.pid != os.getpid() and os.getpgid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except (OSError, psutil.Error):
                pass
        return left

    def kill(self):
        """SIGKILL to the whole process group (whatever is left of it), and reap the main process."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, wait_s=60.0):
        """SIGTERM to the main process only (what `docker stop` sends), wait for it; the group is killed after,
        whatever happened. The output."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self.kill()
        return self.output()


@pytest.fixture(scope="module")
def real_server(served, tmp_path_factory):
    ckpt, onnx, images = served
    srv = Running([f"widget={ckpt}", f"onnx={onnx}", "--watch", images], tmp_path_factory.mktemp("serve-log"))
    try:
        yield srv
    finally:
        srv.stop()


def test_real_server_on_loopback_serves_both_detectors(real_server, served):
    import psutil

    from detector import Detector

    ckpt, _, images = served
    body, ctype = _multipart([("1.png", (images / "1.png").read_bytes())])
    for name in ("widget", "onnx"):
        status, out = _request(f"{real_server.url}/v1/detectors/{name}/predict", body, {"Content-Type": ctype})
        assert status == 200, out
        got = json.loads(out)["images"][0]
        assert got["score"] == pytest.approx(Detector.load(ckpt).predict(images / "1.png")[0].score, abs=1e-4)
    listening = {c.laddr.ip for p in [psutil.Process(real_server.proc.pid),
                                      *psutil.Process(real_server.proc.pid).children(recursive=True)]
                 for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == real_server.port}
    assert listening == {"127.0.0.1"}  # loopback unless told otherwise
    status, page = _request(real_server.url + "/")
    assert status == 200 and b"/page/page.js" in page and b"http" not in page.split(b"<body>")[1].lower()


def test_sigterm_drains_the_request_in_flight(served, tmp_path):
    """SIGTERM to the main process while a request is being scored: the server stops listening, answers that
    request in full, stops its workers and exits 0, leaving no process behind."""
    ckpt, _, _ = served
    big = make_image((200, 300, 400), size=1500)  # a request of a few seconds: decode, predict, map, overlay
    body, ctype = _multipart([(f"{i}.png", _png(big)) for i in range(6)])
    srv = Running([f"widget={ckpt}", "--max-pixels", "4000000"], tmp_path)
    got = {}
    try:
        def call():
            try:
                got["res"] = _request(f"{srv.url}/v1/detectors/widget/predict?overlay=true&map=true", body,
                                      {"Content-Type": ctype}, timeout=90)
            except OSError as exc:
                got["res"] = (None, repr(exc).encode())
            got["done"] = time.monotonic()

        t = threading.Thread(target=call, daemon=True)
        t.start()
        time.sleep(1.0)  # the request is being read or scored
        assert t.is_alive(), "the request finished before SIGTERM: make it bigger"
        sent = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        if t.is_alive():  # still draining: nothing listens any more
            with pytest.raises(OSError):
                _request(srv.url + "/health", timeout=2)
        t.join(100)
        srv.proc.wait(60)
        out = srv.output()
        assert not t.is_alive(), out
        assert got["res"][0] == 200, (got["res"][1][:300], out)
        assert got["done"] > sent  # it was in flight when the signal came
        assert len(json.loads(got["res"][1])["images"]) == 6
        assert srv.proc.returncode == 0, out
        assert "Traceback" not in out and "server stopped" in out, out
        deadline = time.monotonic() + 10
        while srv.group() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not srv.group(), ([(p.pid, p.name(), p.cmdline()[:4]) for p in srv.group()], out)
    finally:
        srv.stop(wait_s=5)


# ---- the operator page in a browser ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    yield from headless_chromium()


def test_the_page_uploads_shows_the_verdict_and_defects_and_moves_the_threshold(browser, real_server, served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    images = served[2]
    browser.get(real_server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#detector option"))
    served_t = json.loads(_request(real_server.url + "/v1/detectors")[1])["detectors"]
    widget = next(d for d in served_t if d["name"] == "widget")
    browser.find_element(By.ID, "files").send_keys(str(images / "1.png"))
    card = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".result")))
    score = float(card.get_attribute("data-score"))
    t = widget["thresholds_in_force"]["image"]
    want = "rejected" if score >= t else "passed"
    assert card.get_attribute("data-verdict") == want
    assert card.find_element(By.CSS_SELECTOR, ".verdict").text == ("REJECTED" if want == "rejected" else "passed")
    assert card.find_elements(By.CSS_SELECTOR, "li.defect"), "no named defect shown"
    assert "on the widget" in card.find_element(By.CSS_SELECTOR, "li.defect").text
    assert card.find_element(By.CSS_SELECTOR, "img").get_attribute("src").startswith("data:image/png;base64,")
    tally = lambda: (int(browser.find_element(By.ID, "tally-passed").get_attribute("data-count")),
                     int(browser.find_element(By.ID, "tally-rejected").get_attribute("data-count")))
    assert tally() == ((0, 1) if want == "rejected" else (1, 0))
    # the slider above the score passes the part, below it rejects it: on the page only
    for value, verdict in ((score + 0.01, "passed"), (score - 0.01, "rejected")):
        browser.execute_script("arguments[0].value = arguments[1];"
                               "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
                               browser.find_element(By.ID, "img-thr"), str(value))
        assert card.get_attribute("data-verdict") == verdict
        assert tally() == ((1, 0) if verdict == "passed" else (0, 1))
    assert browser.find_element(By.ID, "thr-apply").is_displayed() is False
    after = json.loads(_request(real_server.url + "/v1/detectors")[1])["detectors"]
    assert next(d for d in after if d["name"] == "widget")["thresholds_in_force"] == widget["thresholds_in_force"]
    # a watched image, picked from the list
    browser.find_element(By.CSS_SELECTOR, "#watch-list button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) == 2)
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    shutil.rmtree(images / "none", ignore_errors=True)
