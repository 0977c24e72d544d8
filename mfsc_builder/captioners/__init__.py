"""MFSC captioning backends (stage 2): offline attributes, Hugging Face models, OpenAI-compatible servers."""
from mfsc_builder.captioners.base import (
    Captioner,
    CaptionRequest,
    CaptionResult,
    LevelFields,
    make_captioner,
)

__all__ = ["CaptionRequest", "CaptionResult", "Captioner", "LevelFields", "make_captioner"]
