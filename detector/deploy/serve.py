"""``detector serve``: trained detectors behind HTTP, for a camera PC or an MES, plus an operator page.

Built on LitServe (``litserve``): its inference workers (one process per detector and device, ``workers_per_device``
more), its request batching (``max_batch_size`` / ``batch_timeout``: requests that arrive together are scored in one
``Detector.predict`` call) and its FastAPI app (OpenAPI at ``/docs`` and ``/openapi.json``). What this module adds:

- the routes: ``POST /v1/detectors/{name}/predict`` (one LitAPI per detector), ``GET /v1/detectors``, ``GET /health``
  (ready when every detector's worker has loaded, 503 before), ``GET /metrics`` (Prometheus text), the operator
  page at ``/`` (``serve_page/``, plain HTML/JS, no CDN) and, with ``--watch DIR``, ``GET /v1/watch`` (the newest
  image names there) and ``GET /v1/watch/{name}`` (one of those files; names only, never a path);
- bad input refused in the HTTP process, one request at a time, before it reaches a batch (a LitServe batch fails
  as a whole when one request's ``decode_request`` raises): the body's size before it is read whole, the image's
  pixel count from its header before it is decoded, the content type, the image format; each a 4xx whose
  ``detail`` names the problem, never a traceback;
- an optional API key (``X-API-Key`` or ``Authorization: Bearer``), compared in constant time, never logged;
- SIGTERM: the HTTP server stops accepting and finishes the requests in flight before the workers are stopped
  (``DetectorServer._perform_graceful_shutdown``: LitServe's own order closes the queues first).

Every number comes from the owners: ``Detector.load`` loads, ``Detector.predict`` scores, thresholds and decides
(``detector.store.thresholds`` via the API), ``detector.eval.report`` and ``overlay_caption`` draw the overlay.
The served score of an image equals ``Detector.predict``'s for the same file (a test checks it).

No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation at run time (the
``Depends`` that parses a request in the HTTP process).
"""
import base64
import binascii
import gc
import hmac
import io
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from litserve.utils import WorkerSetupStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from detector.deploy.api import Detector, DetectorResult
from detector.deploy.serve_settings import (
    BATCH_TIMEOUT,
    HOSTS,
    MAX_BATCH,
    Limits,
    ServeSettings,
)
from detector.errors import DetectorError
from detector.eval import report
from detector.eval.overlay_caption import add_caption, caption_lines
from detector.store.checkpoint import backbone_name, checkpoint_info, shot_count
from detector.store.files import json_safe
from detector.store.thresholds import image_threshold_in_force
from fsad_data.images import MIN_SIDE, is_image_file, to_rgb_array

log = logging.getLogger("detector.serve")

REQUEST_TIMEOUT = 60.0  # s a request may wait for its worker
DRAIN_S = 30  # s the HTTP server may take to finish the requests in flight on SIGTERM
WATCH_LIST = 24  # newest images listed from --watch DIR
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP")  # what an upload may be (Pillow's format names)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PAGE = "serve_page"  # the operator page's folder in this package
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "page.js": "text/javascript; charset=utf-8",
              "page.css": "text/css; charset=utf-8"}
PUBLIC = {"/health", "/", "/favicon.ico"} | {f"/page/{f}" for f in PAGE_FILES}  # no API key asked
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class BadInput(HTTPException):
    """A request the service refuses: its status and one line naming the problem."""


# ---- the detectors as the HTTP process knows them ------------------------------------------------------------


@dataclass
class Served:
    """One served detector: its description (``describe``) and the thresholds in force."""

    name: str
    source: str
    info: dict[str, Any]
    override: dict[str, float | None] | None = None  # set through the API with --allow-threshold-change

    def in_force(self) -> tuple[float | None, float | None]:
        """(pixel, image): the override, else the detector's own (``detector eval``'s, at its resolution)."""
        t = self.override or self.info["thresholds"]
        return t.get("pixel"), t.get("image")


def describe(det: Detector, name: str) -> dict[str, Any]:
    """What ``GET /v1/detectors`` says of a loaded detector: class, backbone, shots, thresholds, resolution,
    provenance (``checkpoint_info``), the engine and whether it names defects."""
    t = det.thresholds
    engine = getattr(det.engine, "engine", None)
    return json_safe({
        "name": name, "class": det.class_name, "backbone": backbone_name(det.meta), "shots": shot_count(det.meta),
        "resolution": det.resolution, "engine": engine if isinstance(engine, str) else "pytorch",
        "names_defects": det.names_defects, "source": det.source,
        "thresholds": {"pixel": t.get("pixel_threshold"), "image": t.get("image_threshold"),
                       "source": t.get("source")},
        "provenance": checkpoint_info(det.meta),
    })


def detector_names(sources: list[str]) -> list[tuple[str, str]]:
    """(name, source) per argument: ``NAME=SOURCE`` names it, else the folder's (or Hub id's) last part; a name
    taken twice gets ``-2``, ``-3``."""
    out: list[tuple[str, str]] = []
    for arg in sources:
        left, sep, right = arg.partition("=")
        if sep and NAME.match(left) and right:
            name, source = left, right
        else:
            source = arg
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(arg.rstrip("/")).name).strip("-.") or "detector"
            if not NAME.match(name):
                name = "detector"
        base, k = name, 2
        while name in {n for n, _ in out}:
            name, k = f"{base}-{k}", k + 1
        out.append((name, source))
    return out


# ---- reading a request (HTTP process) --------------------------------------------------------------------------


@dataclass
class PredictInput:
    """One request, checked and decoded: what the inference worker gets."""

    images: list[np.ndarray]
    names: list[str]
    threshold: float | str | None  # "auto": the detector's own; a number: the pixel threshold; None: no mask
    image_threshold: float | None
    want_map: bool = False
    want_overlay: bool = False

    def key(self) -> tuple[Any, Any]:
        """Requests with the same key are scored in one ``Detector.predict`` call."""
        return self.threshold, self.image_threshold


def decode_image(data: bytes, where: str, max_pixels: int) -> np.ndarray:
    """An uploaded file as (H, W, 3) uint8 RGB, converted as ``fsad_data.load_rgb`` converts a file (so the
    scores equal ``Detector.predict``'s for the same file); the pixel count is checked on the header first."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(422, f"{where}: empty file; send the image's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise BadInput(413, f"{where}: too many pixels to decode ({exc}); the limit is {max_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadInput(415, f"{where}: not an image this service reads ({', '.join(FORMATS)})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise BadInput(413, f"{where}: {w} x {h} = {w * h} pixels, over the limit of {max_pixels}; downscale it "
                            "(or start the server with a higher --max-pixels)")
    if im.format not in FORMATS:
        raise BadInput(415, f"{where}: a {im.format} image; send {', '.join(FORMATS)}")
    if min(w, h) < MIN_SIDE:
        raise BadInput(422, f"{where}: {w} x {h} px, smaller than {MIN_SIDE} x {MIN_SIDE}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
        return to_rgb_array(im)
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for a damaged file
        raise BadInput(422, f"{where}: cannot decode the {im.format} image ({exc.__class__.__name__}); the file "
                            "is truncated or corrupt") from None
    finally:
        im.close()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (a declared length first: nothing is read)."""
    declared = request.headers.get("content-length", "")
    too_big = f"request body over the limit of {limit >> 20} MiB; send fewer or smaller images"
    if declared.isdigit() and int(declared) > limit:
        raise BadInput(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


def _flag(value: Any, name: str) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool):
        return value
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise BadInput(422, f"{name}={value!r}: use true or false")


def _number(value: Any, name: str) -> float | None:
    """A threshold given in a request: a finite number, or none (no mask); checked by the thresholds' owner."""
    if value is None or str(value).strip().lower() in ("none", "null"):
        return None
    try:
        return image_threshold_in_force(value, None, name)
    except DetectorError as exc:
        raise BadInput(422, str(exc)) from None


def _b64(item: Any, where: str) -> tuple[str, bytes]:
    """(name, bytes) of a JSON image: a base64 string (a data: URL too) or {"name": ..., "data": base64}."""
    name = ""
    if isinstance(item, dict):
        name, item = str(item.get("name") or ""), item.get("data")
    if not isinstance(item, str):
        raise BadInput(422, f"{where}: give the image as a base64 string or {{\"name\": ..., \"data\": base64}}")
    if item.startswith("data:") and "," in item:
        item = item.split(",", 1)[1]
    try:
        return name, base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(422, f"{where}: not valid base64") from None


async def _files(request: Request, body: bytes, content_type: str, limits: Limits
                 ) -> tuple[list[tuple[str, bytes]], dict[str, Any]]:
    """The uploaded files (name, bytes) and the options of a request, by its content type."""
    options: dict[str, Any] = dict(request.query_params)
    if content_type.startswith("multipart/form-data"):
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=limits.max_images + 1, max_fields=64)
        except Exception as exc:  # noqa: BLE001 - starlette's MultiPartException, HTTPException, the parser's errors
            raise BadInput(400, f"cannot read the multipart body: {exc}") from None
        files: list[tuple[str, bytes]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append((value.filename or key, await value.read()))
            else:
                options[key] = value
        return files, options
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise BadInput(422, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadInput(422, 'the JSON body must be an object: {"images": [base64, ...]}')
        items = data.pop("images", None)
        if items is None and "image" in data:
            items = [data.pop("image")]
        if not isinstance(items, list):
            raise BadInput(422, 'the JSON body has no "images" list (or "image"): base64 strings')
        options.update(data)
        return [_b64(item, f"images[{i}]") for i, item in enumerate(items)], options
    if content_type.startswith("image/"):
        return [(request.query_params.get("name", "image"), body)], options
    raise BadInput(415, f"content type {content_type or 'none'!r}: send multipart/form-data (a file field per "
                        "image), application/json ({\"images\": [base64, ...]}) or one image as image/png or "
                        "image/jpeg")


async def read_predict(request: Request) -> PredictInput:
    """A predict request, checked and decoded in the HTTP process (a FastAPI dependency LitServe calls through
    ``decode_request``'s annotation), so a bad one is refused alone, never failing the batch it would join."""
    state: ServeState = request.app.state.serve
    served = state.detectors[request.url.path.split("/")[3]]
    content_type = request.headers.get("content-type", "").lower()
    body = await _read_body(request, state.limits.max_bytes)
    files, options = await _files(request, body, content_type, state.limits)
    if not files:
        raise BadInput(422, "no image in the request; send at least one")
    if len(files) > state.limits.max_images:
        raise BadInput(413, f"{len(files)} images in one request, over the limit of {state.limits.max_images}")
    known = {"threshold", "image_threshold", "map", "overlay", "name"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise BadInput(422, f"unknown option(s) {', '.join(unknown)}; use {', '.join(sorted(known - {'name'}))}")
    pixel = _number(options["threshold"], "threshold") if "threshold" in options else None
    image = _number(options["image_threshold"], "image_threshold") if "image_threshold" in options else None
    if "threshold" not in options and "image_threshold" not in options and served.override is None:
        threshold: float | str | None = "auto"  # the detector's own, exactly as Detector.predict's default
    else:
        in_force = served.in_force()
        threshold = pixel if "threshold" in options else in_force[0]
        image = image if "image_threshold" in options else in_force[1]
    images = await run_in_threadpool(
        lambda: [decode_image(data, f"image {i} ({name})" if name else f"image {i}", state.limits.max_pixels)
                 for i, (name, data) in enumerate(files)])
    return PredictInput(images, [name for name, _ in files], threshold, image,
                        _flag(options.get("map", False), "map"), _flag(options.get("overlay", False), "overlay"))


# ---- the inference worker: one LitAPI per detector -------------------------------------------------------------


class DetectorAPI(ls.LitAPI):
    """``POST /v1/detectors/{name}/predict``: LitServe batches the requests; ``predict`` scores each group of
    requests with the same thresholds in one ``Detector.predict`` call."""

    def __init__(self, name: str, source: str, *, engine: str | None = None, max_batch_size: int = MAX_BATCH,
                 batch_timeout: float = BATCH_TIMEOUT) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout,
                         api_path=f"/v1/detectors/{name}/predict")
        self.name, self.source, self.engine = name, source, engine
        # workers that have loaded (LitServe's own readiness keys collide: it keys a worker by the path's last part)
        self.ready = mp.get_context("spawn").Value("i", 0)
        self.detector: Detector | None = None

    def setup(self, device: str) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the server stops us
        self.detector = Detector.load(self.source, device=device.replace("cuda:0", "cuda") if device else "cpu",
                                      engine=self.engine)
        warm = np.full((64, 64, 3), 128, np.uint8)
        self.detector.predict([warm], threshold=0.5 if self.detector.names_defects else None)  # builds the bank
        with self.ready.get_lock():
            self.ready.value += 1

    def decode_request(self, request: Annotated[PredictInput, Depends(read_predict)]) -> PredictInput:
        return request  # read and checked in the HTTP process (read_predict)

    def batch(self, inputs: list[PredictInput]) -> list[PredictInput]:
        return list(inputs)

    def predict(self, batch: list[PredictInput]) -> list[tuple[PredictInput, Any, int]]:
        assert self.detector is not None
        groups: dict[tuple[Any, Any], list[int]] = {}
        for i, inp in enumerate(batch):
            groups.setdefault(inp.key(), []).append(i)
        out: list[Any] = [None] * len(batch)
        n_images = sum(len(inp.images) for inp in batch)
        for (threshold, image_threshold), members in groups.items():
            images = [im for i in members for im in batch[i].images]
            try:
                results: Any = self.detector.predict(images, threshold=threshold, image_threshold=image_threshold,
                                                     batch_size=max(1, len(images)))
            except DetectorError as exc:
                results = exc
            start = 0
            for i in members:
                k = len(batch[i].images)
                out[i] = (batch[i], results if isinstance(results, Exception) else results[start:start + k],
                          n_images)
                start += k
        return out

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: tuple[PredictInput, Any, int]) -> Response:
        inp, results, n_images = output
        headers = {"X-Batch-Images": str(n_images)}
        if isinstance(results, Exception):
            return JSONResponse({"detail": str(results)}, status_code=422, headers=headers)
        assert self.detector is not None
        pixel, image = self._used(inp)
        items = [encode_result(r, inp, k, pixel, image, self.detector.resolution) for k, r in enumerate(results)]
        body = {"detector": self.name, "thresholds": {"pixel": pixel, "image": image}, "images": items}
        return JSONResponse(json_safe(body), headers=headers)

    def _used(self, inp: PredictInput) -> tuple[float | None, float | None]:
        """The thresholds the request was decided at (what ``Detector.predict`` applied)."""
        assert self.detector is not None
        if inp.threshold == "auto":
            t = self.detector.thresholds
            return t.get("pixel_threshold"), t.get("image_threshold")
        return inp.threshold, inp.image_threshold  # type: ignore[return-value]


def encode_result(r: DetectorResult, inp: PredictInput, k: int, pixel: float | None, image: float | None,
                  resolution: int) -> dict[str, Any]:
    """One image's answer: score, decision, named defects; the map (16-bit PNG over ``map_range``) and the
    overlay (``detector predict``'s look: heat map, mask outline, caption band) when asked for."""
    item: dict[str, Any] = {"index": k, "name": inp.names[k], "size": list(r.map.shape), "score": r.score,
                            "anomalous": r.anomalous, "defects": r.defects}
    lo, hi = float(np.min(r.map)), float(np.max(r.map))
    if inp.want_map:
        scaled = np.zeros(r.map.shape, np.uint16) if hi <= lo else \
            np.round((r.map - lo) / (hi - lo) * 65535).astype(np.uint16)
        item["map_png"] = base64.b64encode(_png16(scaled)).decode()
        item["map_range"] = [lo, hi]
    if inp.want_overlay:
        vmin, vmax = (0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else (lo, hi)
        pic = report.overlay(inp.images[k], r.map, r.mask, vmin, vmax)
        sentences = None if r.defects is None else [d["sentence"] for d in r.defects]
        pic = add_caption(pic, caption_lines(r.score, image, r.anomalous, sentences))
        item["overlay_png"] = base64.b64encode(report.png_bytes(pic)).decode()
        item["overlay_scale"] = [vmin, vmax]
    return item


def _png16(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # uint16 (H, W): mode I;16
    return buf.getvalue()


# ---- the HTTP process: state, metrics, key, routes --------------------------------------------------------------


@dataclass
class ServeState:
    """What the HTTP process holds: the detectors, limits, the key, the metrics, the readiness counters."""

    detectors: dict[str, Served]
    apis: dict[str, DetectorAPI]
    workers: int
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None
    watch: Path | None = None
    allow_threshold_change: bool = False
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("detector_requests", "Predict requests by detector and HTTP status",
                                ["detector", "status"], registry=r)
        self.images = Counter("detector_images", "Images scored", ["detector"], registry=r)
        self.latency = Histogram("detector_request_seconds", "Predict request latency (s)", ["detector"],
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.batch = Histogram("detector_batch_images", "Images in the Detector.predict batch a request joined",
                               ["detector"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.errors = Counter("detector_errors", "Requests answered with an error, by status", ["status"], registry=r)

    def ready(self) -> bool:
        return all(api.ready.value >= self.workers for api in self.apis.values())


class KeyAndMetrics:
    """ASGI middleware: the API key (when one is set) on every path but the page and ``/health``; the predict
    requests' count, latency, batch size and errors."""

    def __init__(self, app: Any, state: ServeState) -> None:
        self.app, self.state = app, state
        self.key = state.api_key.encode() if state.api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if self.key is not None and path not in PUBLIC and not self._key_ok(scope):
            await JSONResponse({"detail": "missing or wrong API key: send it in the X-API-Key header"},
                               status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            self.state.errors.labels("401").inc()
            return
        parts = path.split("/")
        name = parts[3] if len(parts) == 5 and parts[1:3] == ["v1", "detectors"] and parts[4] == "predict" else None
        if name not in self.state.detectors:
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {}

        async def watch(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for k, v in message.get("headers", []):
                    if k.lower() == b"x-batch-images":
                        seen["batch"] = int(v)
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, watch)
        finally:
            status = seen.get("status", 500)
            s = self.state
            s.requests.labels(name, str(status)).inc()
            s.latency.labels(name).observe(time.perf_counter() - t0)
            if "batch" in seen:
                s.batch.labels(name).observe(seen["batch"])
            if status >= 400:
                s.errors.labels(str(status)).inc()

    def _key_ok(self, scope: dict[str, Any]) -> bool:
        given = b""
        for k, v in scope.get("headers", []):
            if k == b"x-api-key":
                given = v
            elif k == b"authorization" and v[:7].lower() == b"bearer ":
                given = given or v[7:].strip()
        assert self.key is not None
        return hmac.compare_digest(given, self.key)


def _routes(server: "DetectorServer", state: ServeState) -> None:
    """The page, /health, /metrics, the detectors' list, the served thresholds and the watched folder, on
    LitServer's FastAPI app (its own ``/`` and ``/health`` are replaced)."""
    app = server.app
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in ("/", "/health")]
    app.state.serve = state
    _page_routes(app)
    _info_routes(app, state)
    _threshold_route(app, state)
    _watch_routes(app, state)


def _page_routes(app: Any) -> None:
    """The operator page: ``/`` and its files under ``/page/``."""
    page = resources.files("detector.deploy") / PAGE

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return Response((page / "index.html").read_bytes(), media_type=PAGE_FILES["index.html"],
                        headers={"Cache-Control": "no-store"})

    @app.get("/page/{file}", include_in_schema=False)
    async def page_file(file: str) -> Response:
        if file not in PAGE_FILES:
            raise HTTPException(404, f"no page file {file!r}")
        return Response((page / file).read_bytes(), media_type=PAGE_FILES[file])


def _info_routes(app: Any, state: ServeState) -> None:
    """``/health``, ``/metrics`` and ``/v1/detectors``."""

    @app.get("/health")
    async def health() -> Response:
        ok = state.ready()
        return JSONResponse({"status": "ok" if ok else "starting", "detectors": sorted(state.detectors)},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/detectors")
    async def detectors() -> dict[str, Any]:
        return {"detectors": [dict(s.info, thresholds_in_force=dict(zip(("pixel", "image"), s.in_force())),
                                   threshold_change=state.allow_threshold_change)
                              for s in state.detectors.values()],
                "limits": {"max_upload_bytes": state.limits.max_bytes, "max_pixels": state.limits.max_pixels,
                           "max_images": state.limits.max_images},
                "watch": state.watch is not None}

    @app.post("/v1/detectors/{name}/predict")
    async def unknown(name: str) -> Response:  # after LitServe's own routes: reached by an unknown name only
        raise BadInput(404, f"no detector named {name!r} is served here; served: {', '.join(sorted(state.detectors))}")


def _threshold_route(app: Any, state: ServeState) -> None:
    """``POST /v1/detectors/{name}/thresholds``: the served thresholds, with --allow-threshold-change only."""

    @app.post("/v1/detectors/{name}/thresholds")
    async def set_thresholds(name: str, request: Request) -> dict[str, Any]:
        if name not in state.detectors:
            raise HTTPException(404, f"no detector {name!r}; GET /v1/detectors lists them")
        if not state.allow_threshold_change:
            raise HTTPException(403, "the served thresholds are fixed: start the server with "
                                     "--allow-threshold-change to change them from the API or the page")
        try:
            data = json.loads(await _read_body(request, 1 << 16))
        except (ValueError, RecursionError):
            raise BadInput(422, "the body is not valid JSON") from None
        served = state.detectors[name]
        if not isinstance(data, dict) or data.get("reset"):
            served.override = None
        else:
            pixel, image = served.in_force()
            served.override = {
                "pixel": _number(data["pixel"], "pixel") if "pixel" in data else pixel,
                "image": _number(data["image"], "image") if "image" in data else image}
        log.warning("thresholds of %s set to %s", name, served.override or "the detector's own")
        return {"detector": name, "thresholds_in_force": dict(zip(("pixel", "image"), served.in_force()))}


def _watch_routes(app: Any, state: ServeState) -> None:
    """``GET /v1/watch`` (the newest image names of --watch DIR) and ``GET /v1/watch/{file}`` (one of them)."""

    @app.get("/v1/watch")
    async def watch_list() -> dict[str, Any]:
        return {"images": await run_in_threadpool(_watched, state)}

    @app.get("/v1/watch/{file}")
    async def watch_file(file: str) -> Response:
        if file not in await run_in_threadpool(_watched, state):
            raise HTTPException(404, f"{file!r} is not among the newest images of the watched folder")
        assert state.watch is not None
        path = state.watch / file
        if path.stat().st_size > state.limits.max_bytes:
            raise BadInput(413, f"{file}: over the upload limit of {state.limits.max_bytes >> 20} MiB")
        return Response(path.read_bytes(), media_type="application/octet-stream")


def _watched(state: ServeState) -> list[str]:
    """The newest image file names directly in the watched folder (none without --watch)."""
    if state.watch is None:
        raise HTTPException(404, "no folder is watched: start the server with --watch DIR")
    try:
        files = [p for p in state.watch.iterdir() if is_image_file(p) and p.is_file()]
    except OSError as exc:
        raise HTTPException(503, f"cannot list the watched folder: {exc.strerror or exc}") from None
    files.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [p.name for p in files[:WATCH_LIST]]


class DetectorServer(ls.LitServer):
    """LitServer that stops in order on SIGTERM (and Ctrl-C): the HTTP server stops accepting and finishes the
    requests in flight, then LitServe's own shutdown stops the queues, the inference workers and the manager.

    LitServe's ``run`` installs no signal handler: a SIGTERM killed its process at once and left the forked uvicorn
    process, the inference workers and the manager running, re-parented to PID 1. Here ``run`` installs one (in
    this process only: the forked manager and uvicorn processes inherit it and act as if it were not there). It
    never calls into the manager itself (the main thread is inside a manager call, ``_shutdown_event.wait()``):
    it wakes a drain thread, which sends SIGTERM to the uvicorn process (uvicorn closes its sockets, lets the
    connections in flight finish within ``drain_s``, ends its lifespan, exits), joins it, then sets
    ``_shutdown_event``, so ``run`` returns through LitServe's ``_perform_graceful_shutdown``. A signal while the
    workers load ends the start before uvicorn starts; a second signal while stopping is ignored."""

    drain_s: float = DRAIN_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._main_pid = os.getpid()
        self._stop = threading.Event()  # set by the first SIGTERM / SIGINT in this process
        self._stopping: str | bool = False  # the signal's name once one came

    def run(self, *args: Any, **kwargs: Any) -> None:
        self._main_pid = os.getpid()
        previous = {}
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            super().run(*args, **kwargs)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._main_pid:  # a forked child (the manager; uvicorn once it restored it): the default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not self._stopping:  # no logging here (its lock may be held); the main thread never holds the event
            self._stopping = signal.Signals(signum).name
            self._stop.set()

    def verify_worker_status(self) -> None:
        """LitServe's wait for a ready worker, that also ends when a stop is asked for meanwhile."""
        while not self._stop.is_set() and not any(
                v == WorkerSetupStatus.READY for v in self.workers_setup_status.values()):
            if any(v == WorkerSetupStatus.ERROR for v in self.workers_setup_status.values()):
                raise RuntimeError("One or more workers failed to start. Shutting down LitServe")
            time.sleep(0.05)

    def _start_server(self, port: int, num_uvicorn_servers: int, log_level: str, sockets: list[socket.socket],
                      uvicorn_worker_type: str, **kwargs: Any) -> dict[Any, Any]:
        if self._stop.is_set():  # stopped while the workers loaded: straight to the shutdown
            log.warning("%s while starting: stopping", self._stopping)
            self._shutdown_event.set()
            return {}
        workers = super()._start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type,
                                        **kwargs)
        if uvicorn_worker_type == "process":
            for sock in sockets:
                sock.close()  # the forked uvicorn holds it: when it closes its copy, nothing listens any more
        threading.Thread(target=self._drain, args=(workers,), name="detector-serve-drain", daemon=True).start()
        return workers

    def _drain(self, uvicorn_workers: dict[Any, Any]) -> None:
        """On the stop signal: uvicorn stops accepting and finishes what is in flight; then ``run`` goes on."""
        self._stop.wait()
        log.warning("%s: finishing the requests in flight, then stopping", self._stopping or "stop")
        self._stop_http(uvicorn_workers)
        try:
            self._shutdown_event.set()
        except Exception:  # the manager is gone (LitServe stopped on its own): nothing to wake
            log.debug("shutdown event not set", exc_info=True)

    def _stop_http(self, uvicorn_workers: dict[Any, Any]) -> None:
        """SIGTERM to the uvicorn processes, then wait for them (``drain_s`` and a margin; killed after)."""
        for worker in uvicorn_workers.values():
            if worker.is_alive() and hasattr(worker, "terminate"):
                worker.terminate()
        for worker in uvicorn_workers.values():
            worker.join(timeout=self.drain_s + 5)
            if worker.is_alive() and hasattr(worker, "kill"):
                log.warning("the HTTP server did not stop in %.0f s: killed", self.drain_s + 5)
                worker.kill()
                worker.join(timeout=5)

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: dict[Any, Any],
                                   shutdown_reason: str = "normal") -> None:
        """LitServe's shutdown, after the uvicorn processes have finished the requests in flight (the drain
        thread's work on a signal; here too when LitServe stops for another reason, e.g. a worker died)."""
        self._stop_http(uvicorn_workers)
        super()._perform_graceful_shutdown(manager, {}, shutdown_reason)


def build_server(settings: ServeSettings, described: dict[str, Served]) -> tuple[DetectorServer, ServeState]:
    """The LitServer of the described detectors, with this module's routes and middleware (not started)."""
    apis = {name: DetectorAPI(name, s.source, engine=settings.engine, max_batch_size=settings.max_batch,
                              batch_timeout=settings.batch_timeout) for name, s in described.items()}
    state = ServeState(described, apis, settings.workers, settings.limits, settings.api_key, settings.watch,
                       settings.allow_threshold_change)
    accelerator = "cuda" if settings.device.startswith("cuda") else "cpu"
    server = DetectorServer(list(apis.values()), accelerator=accelerator, devices=1 if accelerator == "cuda" else
                            "auto", workers_per_device=settings.workers, timeout=REQUEST_TIMEOUT,
                            middlewares=[(KeyAndMetrics, {"state": state})])
    server.uvicorn_graceful_timeout = DRAIN_S  # what uvicorn gives the requests in flight on SIGTERM
    _routes(server, state)
    return server, state


def load_all(settings: ServeSettings) -> dict[str, Served]:
    """Each source loaded once with ``Detector.load`` (a bad one is one line before anything starts) and
    described; the workers load their own copy."""
    described = {}
    for name, source in detector_names(settings.sources):
        det = Detector.load(source, device=settings.device, engine=settings.engine)
        described[name] = Served(name, source, describe(det, name))
        del det
    gc.collect()
    return described


def check_settings(settings: ServeSettings) -> None:
    """Refuse what LitServe would refuse later, in one line, before any detector loads."""
    if settings.host not in HOSTS:
        raise DetectorError(f"--host {settings.host}: use 127.0.0.1 (this machine only, the default), 0.0.0.0 "
                            "(every IPv4 interface) or :: (IPv6); bind one other address with a reverse proxy")
    if not 1024 <= settings.port <= 65535:
        raise DetectorError(f"--port {settings.port}: use a port from 1024 to 65535")
    if settings.watch is not None and not settings.watch.is_dir():
        raise DetectorError(f"--watch {settings.watch}: not a folder")
    if not settings.sources:
        raise DetectorError("give at least one checkpoint, export folder or Hub id to serve")


def run(settings: ServeSettings, say: Any = print) -> None:
    """Load, describe, build and run the server until SIGTERM or Ctrl-C."""
    check_settings(settings)
    described = load_all(settings)
    server, _ = build_server(settings, described)
    where = f"http://{'127.0.0.1' if settings.host == '127.0.0.1' else settings.host}:{settings.port}"
    for s in described.values():
        pixel, image = s.in_force()
        say(f"serving {s.name} ({s.info['engine']}, class {s.info['class']}, thresholds pixel {pixel}, image "
            f"{image}) at {where}/v1/detectors/{s.name}/predict")
    say(f"operator page {where}/ ; API docs {where}/docs" + ("; API key required" if settings.api_key else ""))
    server.run(host=settings.host, port=settings.port, num_api_servers=1, generate_client_file=False,
               log_level=settings.log_level, api_server_worker_type="process")

