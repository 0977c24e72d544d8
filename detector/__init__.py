"""FineGrainedAD, the few-shot anomaly detector. ``from detector import Detector`` is its Python API.

``Detector`` and ``DetectorResult`` are looked up lazily (``detector.deploy.api``), so ``import detector`` and the
CLI's ``--help`` import neither torch nor open_clip.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Detector", "DetectorResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from detector.deploy import api  # lazy: `import detector` and `--help` load no numpy or torch

        return getattr(api, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
