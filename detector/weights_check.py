"""Can the pretrained CLIP weights be had here? Answers fast, before a run commits to a backbone.

open_clip retries a failed download for about a minute; the demo and scripts want one clear line instead.
`python -m detector.weights_check NAME TAG` exits 0 when the weights are cached or the Hub answers, and 1
with one line saying why not (the caller then falls back to `--pretrained none`).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

HUB_HOST = "huggingface.co"


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def weights_problem(name: str, tag: str) -> str | None:
    """None when weights `tag` of model `name` are local, cached or downloadable; else the reason, one line."""
    if tag.lower() == "none" or Path(tag).expanduser().exists():
        return None
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return f"'{tag}' is not an open_clip weights tag of {name}"
    hub_file = cfg.get("hf_hub", "")
    if hub_file:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub_file.rstrip("/"))
        for candidate in (filename or "open_clip_pytorch_model.bin", "open_clip_model.safetensors"):
            cached = try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str):
                return None
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        return f"pretrained weights {name}/{tag} are not cached and HF_HUB_OFFLINE=1 forbids downloading them"
    if not _hub_reachable():
        return f"pretrained weights {name}/{tag} are not cached and {HUB_HOST} cannot be reached (no internet)"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m detector.weights_check MODEL_NAME TAG", file=sys.stderr)
        return 2
    problem = weights_problem(argv[0], argv[1])
    if problem:
        print(f"NOTE: {problem}: continuing with RANDOM weights; every figure below is NOT meaningful.")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
