"""fsad_data: data set layouts, the Sample record, RGB image/mask decoding, shot selection, the synthetic set,
and the infrastructure both halves share (atomic writes, the settings reader, the CLI error guard).

Shared by `mfsc_builder` and `detector`; imports neither. The one error type is `DataError`.
The names below are loaded on first use (PEP 562), so importing a light submodule such as
`fsad_data.cli_guard` does not pull numpy and OpenCV into `mfsc --help` / `detector --help`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SampleList": "dataset", "Skip": "dataset", "read_dataset": "dataset", "validate_samples": "dataset",
    "DataError": "errors", "load_mask": "images", "load_rgb": "images", "LAYOUTS": "layouts",
    "detect_layout": "layouts", "readable_name": "names", "Sample": "samples", "samples_frame": "samples",
    "select_shots": "shots", "shots_record": "shots", "shots_selection": "shots", "make_demo_data": "synthetic",
    "to_folder": "synthetic", "to_visa_raw": "synthetic",
}
__all__ = [
    "LAYOUTS", "DataError", "Sample", "SampleList", "Skip", "detect_layout", "load_mask", "load_rgb",
    "make_demo_data", "read_dataset", "readable_name", "samples_frame", "select_shots", "shots_record",
    "shots_selection", "to_folder", "to_visa_raw", "validate_samples",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fsad_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fsad_data.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and editors see
    from fsad_data.dataset import SampleList, Skip, read_dataset, validate_samples
    from fsad_data.errors import DataError
    from fsad_data.images import load_mask, load_rgb
    from fsad_data.layouts import LAYOUTS, detect_layout
    from fsad_data.names import readable_name
    from fsad_data.samples import Sample, samples_frame
    from fsad_data.shots import select_shots, shots_record, shots_selection
    from fsad_data.synthetic import make_demo_data, to_folder, to_visa_raw
