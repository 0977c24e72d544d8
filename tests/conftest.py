"""Shared test set-up: offline Hugging Face, a tiny open_clip config, the synthetic data set."""
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf-home-"))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
TINY_CLIP_CONFIG = ASSETS / "fgad-tiny-test.json"
TINY_CLIP_NAME = "fgad-tiny-test"  # registered with open_clip under its file stem


@pytest.fixture(scope="session")
def tiny_clip_name() -> str:
    """Name of a tiny ViT registered with open_clip (8x8 patch grid, 4 blocks, random weights)."""
    import open_clip

    open_clip.add_model_config(TINY_CLIP_CONFIG)
    return TINY_CLIP_NAME


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """The project's synthetic data set (MVTec-AD layout), made once per test session."""
    from fsad_data.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo") / "synthetic", seed=0)
