"""The 3 x 3 location grid: the one convention for location words in captions, crops and named defects.

A point's word comes from the thirds of the image width and height (row-major, top to bottom). The caption
builder (`mfsc_builder.crop`), the synthetic data set's truth file and the detector's named defects all read
it from here, so a defect "at the top left" means the same cell as a component "at the top left".
"""
from __future__ import annotations

LOCATION_WORDS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def grid_cell(x: float, y: float, width: float, height: float) -> tuple[int, int]:
    """(row, col) of the point (x right, y down) in the 3 x 3 grid of a width x height image."""
    col = min(2, max(0, int(3 * x / max(width, 1))))
    row = min(2, max(0, int(3 * y / max(height, 1))))
    return row, col


def location_word(x: float, y: float, width: float, height: float) -> str:
    """The grid word of a point: "top left" ... "bottom right", "center" in the middle cell."""
    row, col = grid_cell(x, y, width, height)
    return LOCATION_WORDS[row][col]
