"""The `Sample` record every layout reader yields, and its pandas view for users."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported lazily: readers stay light
    import pandas as pd

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image of a data set. Frozen so it can be a dict key and shared safely between stages."""

    id: str  # "<class>/<split>/<defect_type>/<stem>", unique within a data set
    class_name: str  # folder name, e.g. "metal_nut"
    split: str  # "train" | "test"
    label: int  # 0 normal, 1 anomaly
    defect_type: str  # "good" for normal images
    image_path: Path
    mask_path: Path | None  # None for normal images
    file_name: str  # path relative to the class root, stable across machines (used for shots)

    @property
    def stem(self) -> str:
        """File stem of the image (what PromptAD/WinCLIP seed files name)."""
        return Path(self.file_name).stem


def make_id(class_name: str, split: str, defect_type: str, stem: str) -> str:
    """Build a sample id in the documented "<class>/<split>/<defect_type>/<stem>" form."""
    return f"{class_name}/{split}/{defect_type}/{stem}"


def samples_frame(samples: Iterable[Sample]) -> pd.DataFrame:
    """The samples as a DataFrame (one row each, paths as strings) so users can filter and count with pandas."""
    import pandas as pd

    names = [f.name for f in fields(Sample)]
    rows = []
    for s in samples:
        row = {n: getattr(s, n) for n in names}
        row["image_path"] = str(s.image_path)
        row["mask_path"] = None if s.mask_path is None else str(s.mask_path)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=names)
    return frame.astype({"label": "int64"}) if len(frame) else frame
