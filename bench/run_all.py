"""Run every benchmark in bench/ one after another, each in its own process (clean timings and peak memory).

Each benchmark prints its own figures, always next to a baseline measured in the same run; nothing here
asserts a time. `make bench` runs this; pass `--quick` for fewer repeats.

    python bench/run_all.py [--quick] [--only metrics,build,backbone,predict,train,attributes,analysis,export,workers,anomalib,serve]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "metrics": ["bench_metrics.py"],
    "build": ["bench_build.py"],
    "backbone": ["bench_backbone.py"],
    "predict": ["bench_predict.py"],
    "train": ["bench_train.py"],
    "attributes": ["bench_attributes.py"],
    "analysis": ["bench_analysis.py"],
    "export": ["bench_export.py"],
    "workers": ["bench_workers.py"],
    "anomalib": ["bench_anomalib.py"],
    "serve": ["bench_serve.py"],
}
QUICK = {
    "metrics": ["--repeats", "1"],
    "backbone": ["--repeats", "2"],
    "predict": ["--repeats", "2"],
    "export": ["--repeats", "1"],
    "analysis": ["--limit", "12"],
    "workers": ["--repeat", "1"],
    "serve": ["--model", "tiny", "--duration", "10"],
    "train": ["--epochs", "2", "--image-epochs", "1"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and epochs")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of " + ", ".join(BENCHES))
    args = ap.parse_args()
    failed = []
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHES:
            print(f"unknown benchmark '{name}'; choose from {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        cmd = [sys.executable, str(HERE / BENCHES[name][0])] + (QUICK.get(name, []) if args.quick else [])
        print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t0:.0f} s")
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
