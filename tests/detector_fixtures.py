"""A small caption record and drawn images shared by the detector model and training tests."""
import numpy as np

RECORD = {
    "class_name": "widget",
    "object_name": "widget",
    "texts": [
        {"level": "image", "group": "image", "normal": ["a photo of a grey widget"],
         "abnormal": ["a photo of a broken widget"]},
        {"level": "background", "group": "background", "normal": ["white background"],
         "abnormal": ["dirty white background"]},
        {"level": "component", "group": "cap", "normal": ["a round cap on the top"],
         "abnormal": ["a round cap on the bottom"]},
        {"level": "colour", "group": "colour", "normal": ["grey colour"], "abnormal": ["red colour"]},
    ],
}


def make_image(square: tuple[int, int, int] | None = None, size: int = 64) -> np.ndarray:
    """Constant light-grey image, optionally with a red square (y, x, side)."""
    a = np.full((size, size, 3), 200, np.uint8)
    if square is not None:
        y, x, s = square
        a[y : y + s, x : x + s] = (220, 30, 30)
    return a
