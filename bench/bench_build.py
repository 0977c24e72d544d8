"""Benchmark of `mfsc build` on inspection-sized images: throughput, peak memory and dataset size against the
builder of an earlier commit, run in the same session on the same files; and the builder's own overhead
next to a model backend.

Why a git baseline: the figures that matter are ratios (these machines are noisy), and the honest baseline
is the code users had, not a slowed-down mode of the new code. The baseline tree is `git archive`d from
``--baseline`` (default: main before issue 12's speed work) into a temporary folder; every build runs in its
own Python process (as `mfsc build` does), baseline and ours interleaved, and the best of ``--repeat`` runs
is shown. Memory is the peak of the summed proportional set size (PSS) of the build and all its worker
processes, sampled every 20 ms. The images are the synthetic set's, scaled to ``--size`` with sensor-like noise (flat upscaled
images would compress unrealistically well); ``--format jpg`` makes a VisA-like JPEG set.

The model backend is stood in for by a captioner that sleeps a fixed time per image (default 0.5 s, a fast
VLM on a GPU) and returns the attribute captioner's fields; the builder's overhead is the total time minus
the sleeps (the stand-in's one real answer, about 0.2 s, counts as the builder's). Prints figures; asserts
nothing.

    .venv/bin/python bench/bench_build.py [--size 1024] [--format png|jpg] [--repeat 2] [--baseline REV]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "1f0c3f6"  # main before issue 12 part 3 (worker processes, files kept as they are)

CHILD = r'''
import json, sys, time
from pathlib import Path

class SleepyCaptioner:
    """A model backend with a known cost and no CPU use: it sleeps a fixed time per image and answers every
    image with the attribute captioner's fields of the first one (computed once, outside the model's time)."""
    def __init__(self, per_image):
        from mfsc_builder.captioners import make_captioner
        self.inner = make_captioner("attributes")
        self.name, self.model, self.revision = "hf", "sleepy-stand-in", "bench"
        self.prompt_version = self.inner.prompt_version
        self.per_image, self.seconds, self.answer = per_image, 0.0, None
    def caption(self, requests):
        if self.answer is None:
            self.answer = self.inner.caption(requests[:1])[0]
        t = time.perf_counter()
        time.sleep(self.per_image * len(requests))
        self.seconds += time.perf_counter() - t
        return [self.answer] * len(requests)
    def propose_defects(self, object_name, image):
        return None

def main():
    args = json.loads(sys.argv[1])
    from mfsc_builder.build import BuildConfig, run_build
    cap = SleepyCaptioner(args.pop("sleep")) if "sleep" in args else None
    t = time.perf_counter()
    summary = run_build(BuildConfig(**args), captioner=cap)
    seconds = time.perf_counter() - t
    print("RESULT " + json.dumps({"seconds": seconds, "images": sum(summary.images.values()),
                                  "stages": summary.seconds, "model": cap.seconds if cap else 0.0}))

if __name__ == "__main__":
    main()
'''


def make_source(dest: Path, size: int, fmt: str) -> Path:
    """The synthetic set (60 images, 3 classes) at ``size`` px with deterministic noise; masks scaled alike."""
    import numpy as np
    from PIL import Image

    from fsad_data import make_demo_data

    demo = make_demo_data(dest / "demo", seed=0)
    out = dest / f"source-{size}-{fmt}"
    rng = np.random.default_rng(0)
    for path in sorted(demo.rglob("*.png")):
        rel = path.relative_to(demo)
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if "ground_truth" in rel.parts:
            Image.open(path).resize((size, size), Image.NEAREST).save(target)
            continue
        big = np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        noisy = np.clip(big + rng.normal(0, 4, big.shape), 0, 255).astype(np.uint8)
        if fmt == "jpg":
            Image.fromarray(noisy).save(target.with_suffix(".jpg"), quality=92)
        else:
            Image.fromarray(noisy).save(target)
    for note in demo.glob("*.txt"):
        (out / note.name).write_bytes(note.read_bytes())
    return out


def baseline_tree(rev: str, dest: Path) -> Path | None:
    """The project at ``rev`` unpacked into ``dest``, or None (with a line saying why) outside a git checkout."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"no baseline: cannot git archive {rev} ({exc}); showing this tree only")
        return None
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


class PeakMemory:
    """Peak memory of a process group (the build, its workers and the resource tracker), from /proc: the sum of each
    process's proportional set size (PSS: a page shared by n processes counts 1/n in each, so the forked
    workers' shared libraries are not counted n times); resident size where PSS is not available."""

    def __init__(self, pgid: int) -> None:
        self.pgid, self.peak, self._stop = pgid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _bytes(pid_dir: Path) -> int:
        try:
            for line in (pid_dir / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return int((pid_dir / "statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if int(fields[2]) == self.pgid:
                        total += self._bytes(stat.parent)
                except (OSError, ValueError, IndexError):
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_child(tree: Path, settings: dict) -> dict:
    """One build in a fresh process with ``tree`` on the path; its timings and peak memory."""
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(settings)], env=env, cwd=str(tree),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    memory = PeakMemory(proc.pid)
    out, err = proc.communicate()
    peak = memory.stop()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"build with {tree} failed (rc {proc.returncode}):\n{err[-2000:]}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["peak_mb"] = peak / 2**20
    return result


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="image side in pixels")
    ap.add_argument("--format", choices=("png", "jpg"), default="png", help="source image files")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each build (the best is shown)")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the baseline builder")
    ap.add_argument("--sleep", type=float, default=0.5, help="stand-in model seconds per image")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp_path = Path(tmp)
        source = make_source(tmp_path, args.size, args.format)
        src_mb = folder_mb(source)
        print(f"source: {source.name}, {src_mb:.1f} MB on disk")
        base = baseline_tree(args.baseline, tmp_path / "baseline")
        runs = {"ours": (ROOT, {}), "ours, --images reference": (ROOT, {"images": "reference"}),
                "ours, --workers 1": (ROOT, {"workers": 1})}
        if base is not None:
            runs = {f"baseline {args.baseline}": (base, {}), **runs}
        best: dict[str, dict] = {}
        for r in range(args.repeat):
            for i, (name, (tree, extra)) in enumerate(runs.items()):
                out = tmp_path / f"out-{i}-{r}"  # a new folder for every run: nothing is resumed
                res = run_child(tree, {"source": str(source), "out": str(out), **extra})
                res["mb"] = folder_mb(out / "images")
                if name not in best or res["seconds"] < best[name]["seconds"]:
                    best[name] = res
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ref = best.get(f"baseline {args.baseline}")
        print(f"\n[attributes captioner, {best['ours']['images']} images of {args.size}x{args.size} "
              f"{args.format.upper()}, {cores} cores, best of {args.repeat}]")
        for name, res in best.items():
            ratio = f"  {ref['seconds'] / res['seconds']:.2f}x the baseline's images/s" if ref else ""
            print(f"  {name:28s} {res['seconds']:6.2f} s  {res['images'] / res['seconds']:5.2f} images/s  "
                  f"peak {res['peak_mb']:6.0f} MB  images/ {res['mb']:6.1f} MB{ratio}")
            print("      stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res["stages"].items()))

        print(f"\n[model stand-in, {args.sleep:.2f} s/image, the same images, best of {args.repeat}]")
        for name, tree in ([(f"baseline {args.baseline}", base)] if base else []) + [("ours", ROOT)]:
            res = min((run_child(tree, {"source": str(source), "out": str(tmp_path / f"model-{name[:4]}-{r}"),
                                        "sleep": args.sleep}) for r in range(args.repeat)),
                      key=lambda x: x["seconds"] - x["model"])
            overhead = res["seconds"] - res["model"]
            print(f"  {name:28s} total {res['seconds']:.2f} s, captioner {res['model']:.2f} s, builder "
                  f"{overhead:.2f} s = {100 * overhead / res['model']:.1f}% of the captioner's time (target < 10%)")


if __name__ == "__main__":
    main()
