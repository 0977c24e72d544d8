"""The project's own synthetic data set (MVTec-AD layout) and its conversion to the VisA raw and folder layouts.

Three classes, 256x256 RGB PNG, drawn with OpenCV (no anti-aliasing, so every mask is exactly the set of
pixels a defect changed):
- ``pill_box``  (object): a blue rounded body on a white background with three round parts, red at the top
  left, yellow at the centre, green at the bottom right. Defects: ``missing_part`` (one part not drawn; the
  mask is where it should be), ``color_spot`` (a purple spot on the body).
- ``hex_nut``   (object): a grey hexagon with a round centre hole (the black background shows through) on
  black. Defects: ``scratch`` (a light line), ``color_spot`` (an orange rust spot).
- ``fabric``    (texture): a beige cloth with a brown plaid of stripes filling the image. Defects: ``hole``
  (a black blob), ``stain`` (a dark blue blob).
Per class: 8 train/good, 6 test/good, 3 test images per defect type (6 anomalous). Normal images differ by a
small shift, rotation (hex_nut), stripe phase (fabric) and colour jitter. Same seed -> the same bytes.

``<root>/<class>/truth.json`` records what a captioner should find on the normal images: background colour
name, foreground colour, the components with their colour names and 3x3 location words (and grid cells), and
the defect types. The 3x3 location words are ``fsad_data.grid.LOCATION_WORDS`` (row-major, top to bottom).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsad_data.atomic import write_bytes_atomic, write_json_atomic, write_png_atomic, write_text_atomic
from fsad_data.errors import DataError
from fsad_data.folder_lock import FolderInUse, lock_beside
from fsad_data.grid import LOCATION_WORDS, grid_cell
from fsad_data.grid import location_word as grid_location_word

SIZE = 256
N_TRAIN_GOOD = 8
N_TEST_GOOD = 6
N_PER_DEFECT = 3
CLASSES = ("fabric", "hex_nut", "pill_box")
DEFECTS = {
    "pill_box": ("color_spot", "missing_part"),
    "hex_nut": ("color_spot", "scratch"),
    "fabric": ("hole", "stain"),
}
# RGB colours with unambiguous names (what truth.json reports)
WHITE = (245, 245, 245)
BLUE = (40, 90, 200)
RED = (215, 40, 40)
YELLOW = (240, 200, 30)
GREEN = (40, 160, 70)
PURPLE = (140, 40, 190)
BLACK = (0, 0, 0)
GREY = (150, 150, 150)
ORANGE = (230, 120, 20)
SCRATCH = (240, 240, 240)
BEIGE = (215, 195, 150)
BROWN = (120, 75, 40)
DARK_BLUE = (25, 35, 120)

PILL_PARTS = (  # (name, colour name, RGB, centre at zero shift)
    ("red pill", "red", RED, (64, 64)),
    ("yellow pill", "yellow", YELLOW, (128, 128)),
    ("green pill", "green", GREEN, (192, 192)),
)
PILL_RADIUS = 20
NUT_RADIUS = 88
HOLE_RADIUS = 30


def _cell(x: float, y: float, size: int = SIZE) -> tuple[int, int]:
    """(row, col) of a point in the 3x3 grid (``fsad_data.grid``)."""
    return grid_cell(x, y, size, size)


def location_word(x: float, y: float, size: int = SIZE) -> str:
    """The 3x3 location word of a point (x right, y down) in the size x size synthetic image."""
    return grid_location_word(x, y, size, size)


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 6) -> tuple[int, int, int]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in colour)  # type: ignore


@dataclass
class _Drawn:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray | None  # (H, W) uint8 0/255 for anomalous images


def _paint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    image[mask > 0] = colour


def _blob_mask(rng: np.random.Generator, centre: tuple[int, int], radius: int) -> np.ndarray:
    """A union of three overlapping discs: an irregular blob."""
    import cv2

    mask = np.zeros((SIZE, SIZE), np.uint8)
    cx, cy = centre
    for _ in range(3):
        ox, oy = (int(v) for v in rng.integers(-radius // 2, radius // 2 + 1, size=2))
        r = int(rng.integers(max(4, radius // 2), radius + 1))
        cv2.circle(mask, (cx + ox, cy + oy), r, 255, -1, lineType=cv2.LINE_8)
    return mask


def _pill_box(rng: np.random.Generator, defect: str | None) -> _Drawn:
    import cv2

    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = _jitter(rng, WHITE, 4)
    dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
    body = _jitter(rng, BLUE)
    x0, y0, x1, y1, r = 24 + dx, 24 + dy, 232 + dx, 232 + dy, 24
    cv2.rectangle(img, (x0 + r, y0), (x1 - r, y1), body, -1, lineType=cv2.LINE_8)
    cv2.rectangle(img, (x0, y0 + r), (x1, y1 - r), body, -1, lineType=cv2.LINE_8)
    for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
        cv2.circle(img, (cx, cy), r, body, -1, lineType=cv2.LINE_8)
    missing = int(rng.integers(0, len(PILL_PARTS))) if defect == "missing_part" else -1
    mask = None
    for i, (_, _, colour, (cx, cy)) in enumerate(PILL_PARTS):
        part = np.zeros((SIZE, SIZE), np.uint8)
        cv2.circle(part, (cx + dx, cy + dy), PILL_RADIUS, 255, -1, lineType=cv2.LINE_8)
        if i == missing:
            mask = part  # the body colour shows where the part should be
        else:
            _paint(img, part, _jitter(rng, colour))
    if defect == "color_spot":
        spots = ((128, 56), (56, 192), (200, 64), (64, 128), (192, 128))  # on the body, away from the parts
        sx, sy = spots[int(rng.integers(0, len(spots)))]
        mask = np.zeros((SIZE, SIZE), np.uint8)
        cv2.circle(mask, (sx + dx, sy + dy), int(rng.integers(12, 17)), 255, -1, lineType=cv2.LINE_8)
        _paint(img, mask, PURPLE)
    return _Drawn(img, mask)


def _hexagon(cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    pts = [
        (cx + radius * math.cos(angle + k * math.pi / 3), cy + radius * math.sin(angle + k * math.pi / 3))
        for k in range(6)
    ]
    return np.round(np.array(pts)).astype(np.int32)


def _hex_nut(rng: np.random.Generator, defect: str | None) -> _Drawn:
    import cv2

    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:] = BLACK
    dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
    cx, cy = 128 + dx, 128 + dy
    angle = math.radians(float(rng.uniform(-8, 8)))
    cv2.fillPoly(img, [_hexagon(cx, cy, NUT_RADIUS, angle)], _jitter(rng, GREY), lineType=cv2.LINE_8)
    cv2.circle(img, (cx, cy), HOLE_RADIUS, BLACK, -1, lineType=cv2.LINE_8)
    mask = None
    if defect == "scratch":
        mask = np.zeros((SIZE, SIZE), np.uint8)
        a = float(rng.uniform(0, math.pi))
        ox, oy = (int(v) for v in rng.integers(-20, 21, size=2))
        half = int(rng.integers(35, 50))
        # a chord on the face beside the hole, parallel to a random direction
        off = 55
        px, py = cx + ox + off * math.cos(a + math.pi / 2), cy + oy + off * math.sin(a + math.pi / 2)
        p0 = (round(px - half * math.cos(a)), round(py - half * math.sin(a)))
        p1 = (round(px + half * math.cos(a)), round(py + half * math.sin(a)))
        cv2.line(mask, p0, p1, 255, 4, lineType=cv2.LINE_8)
        _paint(img, mask, SCRATCH)
    elif defect == "color_spot":
        mask = np.zeros((SIZE, SIZE), np.uint8)
        a = float(rng.uniform(0, 2 * math.pi))
        sx, sy = round(cx + 60 * math.cos(a)), round(cy + 60 * math.sin(a))
        cv2.circle(mask, (sx, sy), int(rng.integers(12, 17)), 255, -1, lineType=cv2.LINE_8)
        _paint(img, mask, ORANGE)
    return _Drawn(img, mask)


def _fabric(rng: np.random.Generator, defect: str | None) -> _Drawn:
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = _jitter(rng, BEIGE)
    stripe = _jitter(rng, BROWN)
    ph, pv = (int(v) for v in rng.integers(0, 16, size=2))
    idx = np.arange(SIZE)
    rows = ((idx + ph) % 16) < 4
    cols = ((idx + pv) % 16) < 4
    img[rows, :] = stripe
    img[:, cols] = stripe
    mask = None
    if defect is not None:
        cx, cy = (int(v) for v in rng.integers(48, SIZE - 48, size=2))
        mask = _blob_mask(rng, (cx, cy), int(rng.integers(12, 19)))
        _paint(img, mask, BLACK if defect == "hole" else DARK_BLUE)
    return _Drawn(img, mask)


_DRAW = {"pill_box": _pill_box, "hex_nut": _hex_nut, "fabric": _fabric}


def _truth(class_name: str) -> dict:
    grid = [list(r) for r in LOCATION_WORDS]
    if class_name == "pill_box":
        comps = [
            {
                "name": name,
                "colour": colour_name,
                "shape": "circle",
                "location": location_word(x, y),
                "cell": list(_cell(x, y)),
                "count": 1,
            }
            for name, colour_name, _, (x, y) in PILL_PARTS
        ]
        return {
            "class_name": class_name, "kind": "object", "foreground": "pill box", "foreground_colour": "blue",
            "background": "white", "component_count": len(comps), "components": comps,
            "defect_types": list(DEFECTS[class_name]), "location_words": grid,
        }
    if class_name == "hex_nut":
        comps = [{
            "name": "hole", "colour": "black", "shape": "circle", "location": "center", "cell": [1, 1],
            "count": 1,
        }]
        return {
            "class_name": class_name, "kind": "object", "foreground": "hex nut", "foreground_colour": "grey",
            "background": "black", "component_count": 1, "components": comps,
            "defect_types": list(DEFECTS[class_name]), "location_words": grid,
        }
    return {
        "class_name": class_name, "kind": "texture", "foreground": "fabric", "foreground_colour": "beige",
        "background": "beige", "colours": ["beige", "brown"], "texture": "striped", "component_count": 0,
        "components": [], "defect_types": list(DEFECTS[class_name]), "location_words": grid,
    }


_NOTE = """Synthetic anomaly-detection data set made by fsad_data.synthetic.make_demo_data (seed {seed}).
Every image is drawn by the program; no real photographs, no third-party data. Released under CC0 1.0:
use it for anything. Layout: MVTec-AD (<class>/train/good, <class>/test/<good|defect>,
<class>/ground_truth/<defect>/<stem>_mask.png with 0/255 masks). <class>/truth.json lists what a captioner
should find on the normal images (colour names, components, 3x3 location words).
"""


def make_demo_data(out: str | Path, seed: int = 0) -> Path:
    """Write the synthetic data set to ``out`` (MVTec-AD layout) and return ``out``. Deterministic for ``seed``."""
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise DataError(f"cannot write the demo data set to {root}: it is a file. Choose a folder path.")
    try:
        with lock_beside(root):  # one writer at a time
            _check_demo_out(root)
            _write_demo_data(root, seed)
    except FolderInUse as exc:
        raise DataError(f"{root} is in use by another run writing the demo data set (lock {exc.lock_file}); "
                        "wait for it to finish or choose another folder") from None
    return root


def _check_demo_out(root: Path) -> None:
    """Write only into a new or empty folder, or an earlier demo data set (its licence note): never beside, or
    over, a user's files."""
    if not root.is_dir() or not any(root.iterdir()):
        return
    note = root / "license.txt"
    head = _NOTE.split("(", 1)[0]
    if not (note.is_file() and note.read_text(encoding="utf-8", errors="replace").startswith(head)):
        raise DataError(f"{root} holds files that are not the demo data set (no license.txt of make_demo_data); "
                        "it is never written into: choose an empty or new folder")


def _write_demo_data(root: Path, seed: int) -> None:
    for ci, cls in enumerate(CLASSES):
        draw = _DRAW[cls]
        base = root / cls

        def rng_for(split_code: int, index: int, _ci: int = ci) -> np.random.Generator:
            return np.random.default_rng([int(seed), _ci, split_code, index])

        for i in range(N_TRAIN_GOOD):
            write_png_atomic(base / "train" / "good" / f"{i:03d}.png", draw(rng_for(0, i), None).image)
        for i in range(N_TEST_GOOD):
            write_png_atomic(base / "test" / "good" / f"{i:03d}.png", draw(rng_for(1, i), None).image)
        for di, defect in enumerate(DEFECTS[cls]):
            for i in range(N_PER_DEFECT):
                drawn = draw(rng_for(2 + di, i), defect)
                assert drawn.mask is not None and drawn.mask.any()
                write_png_atomic(base / "test" / defect / f"{i:03d}.png", drawn.image)
                write_png_atomic(base / "ground_truth" / defect / f"{i:03d}_mask.png", drawn.mask)
        write_json_atomic(base / "truth.json", _truth(cls))
    write_text_atomic(root / "license.txt", _NOTE.format(seed=seed))


def to_visa_raw(mvtec_root: str | Path, out: str | Path) -> Path:
    """Convert an MVTec-AD-layout folder (e.g. the demo set) to the VisA raw layout, for tests of that reader.

    Writes ``<out>/<class>/Data/Images/{Normal,Anomaly}/NNNN.png``, ``<out>/<class>/Data/Masks/Anomaly/NNNN.png``
    and ``<out>/split_csv/1cls.csv`` (object,split,label,image,mask; paths relative to ``out``), plus VisA's
    per-class ``image_anno.csv`` (image,label,mask) naming each defect type in words. Masks are written with
    small label values (1 or 38, alternating), as VisA's are not 0/255, so readers must binarise.
    """
    from PIL import Image  # Pillow's plugins load on first use; only the VisA raw copy needs it here

    src, dst = Path(mvtec_root), Path(out)
    if not src.is_dir():
        raise DataError(f"data set root not found: {src}. Make it first (make_demo_data) or fix the path.")
    rows: list[list[str]] = []
    classes = sorted(p.name for p in src.iterdir() if (p / "train").is_dir() and (p / "test").is_dir())
    for cls in classes:
        normal_i = anomaly_i = 0
        anno: list[list[str]] = []
        for split in ("train", "test"):
            for defect_dir in sorted(p for p in (src / cls / split).iterdir() if p.is_dir()):
                for img in sorted(p for p in defect_dir.iterdir() if p.suffix.lower() == ".png"):
                    if defect_dir.name == "good":
                        rel = f"{cls}/Data/Images/Normal/{normal_i:04d}.png"
                        normal_i += 1
                        write_bytes_atomic(dst / rel, img.read_bytes())
                        rows.append([cls, split, "normal", rel, ""])
                        anno.append([rel, "normal", ""])
                        continue
                    rel = f"{cls}/Data/Images/Anomaly/{anomaly_i:04d}.png"
                    mrel = f"{cls}/Data/Masks/Anomaly/{anomaly_i:04d}.png"
                    value = 1 if anomaly_i % 2 == 0 else 38
                    anomaly_i += 1
                    write_bytes_atomic(dst / rel, img.read_bytes())
                    mask_src = src / cls / "ground_truth" / defect_dir.name / f"{img.stem}_mask.png"
                    with Image.open(mask_src) as m:
                        arr = (np.asarray(m.convert("L")) > 0).astype(np.uint8) * value
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, format="PNG")
                    write_bytes_atomic(dst / mrel, buf.getvalue())
                    rows.append([cls, split, "anomaly", rel, mrel])
                    anno.append([rel, defect_dir.name.replace("_", " "), mrel])
        _write_csv(dst / cls / "image_anno.csv", ["image", "label", "mask"], anno)
    _write_csv(dst / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"], rows)
    return dst


def to_folder(mvtec_root: str | Path, out: str | Path) -> Path:
    """Convert an MVTec-AD-layout folder to the generic ``folder`` layout with an explicit split, for tests
    of that reader: ``<class>/train/normal``, ``<class>/test/normal``, ``<class>/test/anomaly/<defect>`` and
    ``<class>/masks/<defect>/<stem>_mask.png`` (per defect, as stems repeat across defect folders)."""
    src, dst = Path(mvtec_root), Path(out)
    if not src.is_dir():
        raise DataError(f"data set root not found: {src}. Make it first (make_demo_data) or fix the path.")
    for cls in sorted(p.name for p in src.iterdir() if (p / "train").is_dir() and (p / "test").is_dir()):
        for split in ("train", "test"):
            for defect_dir in sorted(p for p in (src / cls / split).iterdir() if p.is_dir()):
                good = defect_dir.name == "good"
                target = dst / cls / split / ("normal" if good else f"anomaly/{defect_dir.name}")
                for img in sorted(p for p in defect_dir.iterdir() if p.suffix.lower() == ".png"):
                    write_bytes_atomic(target / img.name, img.read_bytes())
                    if not good:
                        mask = src / cls / "ground_truth" / defect_dir.name / f"{img.stem}_mask.png"
                        write_bytes_atomic(dst / cls / "masks" / defect_dir.name / mask.name, mask.read_bytes())
    return dst


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())
