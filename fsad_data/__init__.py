"""fsad_data: data set layouts, the Sample record, RGB image/mask decoding, shot selection, the synthetic set.

Shared by `mfsc_builder` and `detector`; imports neither. The one error type is `DataError`.
"""
from fsad_data.dataset import SampleList, Skip, read_dataset, validate_samples
from fsad_data.errors import DataError
from fsad_data.images import load_mask, load_rgb
from fsad_data.layouts import LAYOUTS, detect_layout
from fsad_data.names import readable_name
from fsad_data.samples import Sample, samples_frame
from fsad_data.shots import select_shots, shots_record, shots_selection
from fsad_data.synthetic import make_demo_data, to_folder, to_visa_raw

__all__ = [
    "LAYOUTS", "DataError", "Sample", "SampleList", "Skip", "detect_layout", "load_mask", "load_rgb",
    "make_demo_data", "read_dataset", "readable_name", "samples_frame", "select_shots", "shots_record",
    "shots_selection", "to_folder", "to_visa_raw", "validate_samples",
]
