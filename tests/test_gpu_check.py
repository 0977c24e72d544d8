"""bench/gpu_check: its dry mode runs every part on CPU with the tiny CLIP; without CUDA it stops with one line."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_dry_mode_prints_every_figure():
    res = _run([sys.executable, "bench/gpu_check.py", "--device", "cpu", "--tiny"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for words in ("train 2+1 epochs", "floor", "ratio", "predict batch   1", "predict batch   2",
                  "encode_image", "bf16 vs fp32", "maps max |diff|", "peak RSS"):
        assert words in out, (words, out)
    diff = float(out.split("maps max |diff| ")[1].split(",")[0])
    assert 0.0 <= diff < 0.1  # bf16 maps stay close to fp32 ones (a broken cast would be far off or NaN)


def test_without_cuda_it_stops_with_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    res = _run([sys.executable, "bench/gpu_check.py", "--device", "cuda"])
    assert res.returncode == 2 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr
    assert "no CUDA device" in res.stderr
    if shutil.which("nvidia-smi") is None:
        res = _run(["bash", "bench/gpu_check.sh"])
        assert res.returncode == 2 and "no CUDA GPU here" in res.stderr and res.stderr.count("\n") == 1
