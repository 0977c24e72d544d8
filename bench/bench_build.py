"""Benchmark of `mfsc build`: images per second with the attribute captioner, and the builder's own
overhead next to a model backend.

Why two figures: with the offline `attributes` captioner the builder's stages are all the work, so
images/s is the number to watch. With a model backend the model dominates; what the builder adds
(decoding, cropping, filling, the stage store, writing the datasets) should stay under 10% of the
model's time. A model is stood in for by a captioner that sleeps a fixed time per image (default
0.5 s, a fast VLM on a GPU) and returns the attribute captioner's fields, so the figure does not depend
on a GPU or downloaded weights. Prints figures; asserts nothing.

    .venv/bin/python bench/bench_build.py [--sleep 0.5] [--classes pill_box] [--repeat 1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class SleepyCaptioner:
    """Attribute fields after a fixed sleep per image: a model backend with a known cost."""

    def __init__(self, seconds_per_image: float) -> None:
        from mfsc_builder.captioners import make_captioner

        self.inner = make_captioner("attributes")
        self.name, self.model, self.revision = "hf", "sleepy-stand-in", "bench"
        self.prompt_version = self.inner.prompt_version
        self.per_image = seconds_per_image
        self.seconds = 0.0  # time inside caption(), i.e. "the model's time"

    def caption(self, requests):
        t = time.perf_counter()
        time.sleep(self.per_image * len(requests))
        out = self.inner.caption(requests)
        self.seconds += time.perf_counter() - t
        return out

    def propose_defects(self, object_name, image):
        return None


def _build(source: Path, out: Path, classes: list[str] | None, captioner=None, batch_size: int = 4):
    from mfsc_builder.build import BuildConfig, run_build

    cfg = BuildConfig(source=str(source), out=str(out), classes=classes, captioner={"batch_size": batch_size})
    t = time.perf_counter()
    summary = run_build(cfg, captioner=captioner)
    return time.perf_counter() - t, summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sleep", type=float, default=0.5, help="stand-in model seconds per image")
    ap.add_argument("--classes", default="pill_box", help="classes for the model-backend run (comma list)")
    ap.add_argument("--repeat", type=int, default=1, help="timed attribute-captioner runs (best is shown)")
    args = ap.parse_args(argv)

    from fsad_data import make_demo_data

    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        source = make_demo_data(tmp_path / "demo", seed=0)
        print(f"synthetic data set: {time.perf_counter() - t:.2f} s")

        # warm-up: first-use imports (datasets, OpenCV, the CLIP tokenizer of the template filler)
        t = time.perf_counter()
        _build(source, tmp_path / "warm", ["pill_box"])
        print(f"warm-up build (imports included): {time.perf_counter() - t:.2f} s")

        best = None
        for r in range(args.repeat):
            secs, summary = _build(source, tmp_path / f"attr{r}", None)
            if best is None or secs < best[0]:
                best = (secs, summary)
        secs, summary = best
        n = sum(summary.images.values())
        print(f"\n[attributes] {n} images, {len(summary.classes)} classes: {secs:.2f} s -> "
              f"{n / secs:.1f} images/s")
        print("  per stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in summary.seconds.items()))

        resume_secs, _ = _build(source, tmp_path / "attr0", None)
        print(f"  rerun on a finished build (nothing to redo, rewrite only): {resume_secs:.2f} s")

        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        cap = SleepyCaptioner(args.sleep)
        secs, summary = _build(source, tmp_path / "model", classes, captioner=cap)
        n = sum(summary.images.values())
        model = cap.seconds
        overhead = secs - model
        print(f"\n[model stand-in, {args.sleep:.2f} s/image] {n} images: total {secs:.2f} s, "
              f"captioner {model:.2f} s, builder {overhead:.2f} s")
        print(f"  builder overhead: {100 * overhead / model:.1f}% of the captioner's time (target < 10%)")
        print("  per stage (s): " + ", ".join(f"{k} {v:.2f}" for k, v in summary.seconds.items()))


if __name__ == "__main__":
    main()
