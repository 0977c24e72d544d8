"""Benchmark: `detector serve` on loopback under 8 concurrent clients vs `Detector.predict` in-process, same images,
same run.

A detector is trained for one epoch with random weights (speed does not depend on the weights) on the project's
synthetic set (``--model tiny``: the tests' tiny CLIP config; default ``ViT-B-16-plus-240``), saved, and served by
`detector serve` in a subprocess on a free loopback port. ``--clients`` threads (keep-alive HTTP connections) each
send one test image per request (multipart, PNG bytes of the demo's test images, cycled) for ``--duration`` s. Printed:
throughput (images/s), p50/p99 latency, the batch sizes LitServe formed (each response's ``X-Batch-Images``), errors
(non-200 answers), the server's RSS (its process and children) after warm-up and at the end, and the same images
scored in this process with ``Detector.predict`` (decoding the same files, ``--max-batch`` images a call) for
``--duration`` s once the load has stopped: the ratio served / in-process. Target: >= 0.8x, 0 errors, RSS flat.
Figures only, no timed assertion.

    python bench/bench_serve.py [--model tiny|ViT-B-16-plus-240] [--duration 60] [--clients 8] [--max-batch 8]
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TINY = ROOT / "tests" / "assets" / "fgad-tiny-test.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240", help="open_clip name, or 'tiny' (the tests' config)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load, and of the in-process baseline")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-timeout", type=float, default=0.005)
    args = ap.parse_args()
    backbone = str(TINY) if args.model == "tiny" else args.model

    from detector.config import TrainConfig
    from detector.run.train import train_model
    from detector.store.saved_detector import save_detector
    from fsad_data import make_demo_data

    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_data(Path(tmp) / "demo")
        model = train_model(TrainConfig(data=str(root), class_name="pill_box", shots=1, seed=0, out=str(tmp),
                                        backbone=backbone, pretrained="none", epochs=1, image_epochs=1,
                                        baseline="promptad"), progress=False)
        ckpt = save_detector(model, Path(tmp) / "ckpt")
        del model
        paths = sorted((root / "pill_box" / "test").glob("*/*.png"))
        served = _served(args, ckpt, paths)
        inproc = _in_process(args, ckpt, paths)
    ratio = served["throughput"] / inproc
    print(f"model {args.model} (random weights), {len(paths)} demo test images, {args.clients} clients, "
          f"{args.duration:.0f} s each, max batch {args.max_batch}, batch timeout {args.batch_timeout * 1000:.0f} ms, "
          f"{os.cpu_count()} CPUs")
    print(f"served:      {served['throughput']:8.2f} images/s   requests {served['requests']}   "
          f"errors {served['errors']}")
    print(f"in-process:  {inproc:8.2f} images/s   (Detector.predict, {args.max_batch} files a call)")
    print(f"ratio served / in-process: {ratio:.2f}x   target: >= 0.8x")
    print(f"latency p50 {served['p50'] * 1000:.0f} ms, p99 {served['p99'] * 1000:.0f} ms")
    sizes = ", ".join(f"{k}: {v}" for k, v in sorted(served["batches"].items()))
    print(f"batch sizes seen (images in the Detector.predict call: requests): {sizes}")
    print(f"server RSS (all processes) after warm-up {served['rss0']:.0f} MB, at the end {served['rss1']:.0f} MB "
          f"({served['rss1'] - served['rss0']:+.0f} MB over {served['requests']} requests)")
    print(f"server stop: {served['stop']}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def _body(name: str, data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    head = f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\nContent-Type: image/png\r\n\r\n'
    return head.encode() + data + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def _post(conn: http.client.HTTPConnection, body: bytes, ctype: str) -> tuple[int, int]:
    conn.request("POST", "/v1/detectors/bench/predict", body=body, headers={"Content-Type": ctype})
    res = conn.getresponse()
    res.read()
    return res.status, int(res.getheader("X-Batch-Images") or 0)


def _served(args: argparse.Namespace, ckpt: Path, paths: list[Path]) -> dict:
    port = _free_port()
    cmd = [sys.executable, "-c", "from detector.cli import app; app()", "serve", f"bench={ckpt}", "--port", str(port),
           "--max-batch", str(args.max_batch), "--batch-timeout", str(args.batch_timeout)]
    with open(ckpt.parent / "serve.log", "wb") as log:  # a file, not a pipe nobody reads while the load runs
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait(proc, port, ckpt.parent / "serve.log")
        bodies = [_body(p.name, p.read_bytes()) for p in paths]
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for body in bodies:
            _post(warm, *body)
        warm.close()
        rss0 = _rss_mb(proc.pid)
        lat: list[float] = []
        batches: Counter[int] = Counter()
        errors = [0]
        lock = threading.Lock()
        stop = time.perf_counter() + args.duration

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            i = k
            while time.perf_counter() < stop:
                t = time.perf_counter()
                try:
                    status, batch = _post(conn, *bodies[i % len(bodies)])
                except (OSError, http.client.HTTPException):
                    status, batch = 0, 0
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                dt = time.perf_counter() - t
                with lock:
                    if status == 200:
                        lat.append(dt)
                        batches[batch] += 1
                    else:
                        errors[0] += 1
                i += args.clients
            conn.close()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss1 = _rss_mb(proc.pid)
    finally:
        stop = _stop(proc)
    lat.sort()
    return {"throughput": len(lat) / wall, "requests": len(lat) + errors[0], "errors": errors[0],
            "p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "batches": dict(batches), "rss0": rss0, "rss1": rss1, "stop": stop}


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM to the server (it drains, then exits); its process group is killed after, whatever happened."""
    t0 = time.perf_counter()
    try:
        proc.terminate()
        proc.wait(90)
        said = f"exit {proc.returncode} {time.perf_counter() - t0:.1f} s after SIGTERM"
    except subprocess.TimeoutExpired:
        said = "still running 90 s after SIGTERM: killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    return said


def _wait(proc: subprocess.Popen, port: int, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 600:
        if proc.poll() is not None:
            raise SystemExit(f"detector serve exited {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("detector serve did not become ready in 600 s")


def _in_process(args: argparse.Namespace, ckpt: Path, paths: list[Path]) -> float:
    """Images per second of ``Detector.predict`` on the same files, ``--max-batch`` a call, for ``--duration`` s."""
    from detector import Detector

    det = Detector.load(ckpt)
    det.predict(paths[: args.max_batch], batch_size=args.max_batch)  # warm-up
    n, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.duration:
        chunk = [paths[(i + k) % len(paths)] for k in range(args.max_batch)]
        det.predict(chunk, batch_size=args.max_batch)
        n += len(chunk)
        i += len(chunk)
    return n / (time.perf_counter() - t0)


if __name__ == "__main__":
    main()
