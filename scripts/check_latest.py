"""The canary of pyproject's ranges (``make check-latest``): the newest releases they allow, in a throw-away
virtual environment, against a short smoke of the main job.

Why: ``make setup`` and CI install the exact versions of ``requirements.lock``, so a release that breaks the
project (OpenCV 5.1 once hung every build) reaches neither; but users who ``pip install`` the package get the
newest versions the ranges allow. This installs those, prints which versions differ from the lock, and runs the
smoke: the worker pool's tests and ``scripts/demo.sh`` on the tiny backbone (the demo's build with its worker
processes, one train, eval and predict at the evaluation's threshold). Exit code 0 when the smoke passed.

    python scripts/check_latest.py [--lock requirements.lock] [--keep DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["tests/test_workers.py", "tests/test_demo.py"]
SMOKE_MINUTES = 20
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_versions(lock: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a pip-compile lock."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        if m:
            pins[canonical(m[1])] = m[2]
    return pins


def installed_versions(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    return {canonical(p["name"]): p["version"] for p in json.loads(out)}


def run(cmd: list[str], **kw) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", type=Path, default=ROOT / "requirements.lock")
    ap.add_argument("--keep", type=Path, help="make the venv here and keep it (default: a temporary folder)")
    args = ap.parse_args()
    venv = args.keep or Path(tempfile.mkdtemp(prefix="check-latest-")) / "venv"
    python = venv / "bin" / "python"
    hf_home = tempfile.mkdtemp(prefix="check-latest-hf-")  # an empty Hugging Face cache, removed at the end
    t0 = time.perf_counter()
    try:
        if run([sys.executable, "-m", "venv", str(venv)]) or \
                run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip", "setuptools", "wheel"]) or \
                run([str(python), "-m", "pip", "install", "-q", "--upgrade", "-e", f"{ROOT}[dev]"]):
            print("check-latest: the newest allowed versions did not install (see above)", file=sys.stderr)
            return 1
        installed = installed_versions(python)
        locked = locked_versions(args.lock) if args.lock.is_file() else {}
        differ = sorted((n, locked.get(n, "-"), v) for n, v in installed.items()
                        if n != "finegrained-ad" and locked.get(n) != v)
        env = dict(os.environ, **OFFLINE, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
        env["HF_HOME"] = hf_home
        proc = subprocess.Popen([str(python), "-m", "pytest", "-p", "no:cacheprovider", *SMOKE], cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            smoke = proc.wait(timeout=SMOKE_MINUTES * 60)
        except subprocess.TimeoutExpired:
            smoke = -1
        finally:  # the smoke's own processes go with it, hung or not
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        print(f"\ncheck-latest: {len(differ)} installed version(s) differ from {args.lock.name}:")
        width = max([len(n) for n, _, _ in differ] + [7])
        print(f"  {'package':<{width}}  {'lock':<14} newest allowed")
        for name, was, now in differ:
            print(f"  {name:<{width}}  {was:<14} {now}")
        verdict = {0: "passed", -1: f"hung (over {SMOKE_MINUTES} minutes)"}.get(smoke, f"FAILED (exit {smoke})")
        print(f"check-latest: smoke ({', '.join(SMOKE)}) {verdict} in {time.perf_counter() - t0:.0f} s")
        return 0 if smoke == 0 else 1
    finally:
        shutil.rmtree(hf_home, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(venv.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
