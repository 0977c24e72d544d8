"""Report: PNG overlays (image, ground-truth contour, anomaly heat map) and one self-contained HTML page.

The page has no external assets: styles are inline and every picture is a base64 PNG data URI, so the
file can be mailed or opened offline. Table cells carry the exact value in ``data-value`` (what
metrics.json holds) next to the rounded text a person reads.
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# heat map colours are drawn by OpenCV (BGR) and flipped once here; everything leaving this module is RGB
CONTOUR_RGB = (0, 255, 0)
MASK_RGB = (255, 0, 0)


@dataclass
class Table:
    """A titled table; ``rows`` hold numbers (shown rounded, exact in data-value) or strings."""

    title: str
    columns: list[str]
    rows: list[list[object]]
    percent: bool = True  # show floats in [0, 1] as percentages with 2 decimals


@dataclass
class Figure:
    """One picture (RGB uint8) with a caption."""

    caption: str
    image: np.ndarray


@dataclass
class Report:
    """What one HTML page shows, top to bottom."""

    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def normalise_map(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a float map to uint8 0..255 between vmin and vmax (default: the map's own range)."""
    amap = np.asarray(amap, dtype=np.float32)
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    scaled = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def heat_map(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """JET colour map of a score map as an RGB uint8 image."""
    import cv2

    bgr = cv2.applyColorMap(normalise_map(amap, vmin, vmax), cv2.COLORMAP_JET)
    return np.ascontiguousarray(bgr[..., ::-1])


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Image blended with the heat map, the ground-truth outline drawn on top (RGB uint8, image size).

    The map is resized to the image (bilinear) when their sizes differ; the mask likewise (nearest).
    """
    import cv2

    h, w = image.shape[:2]
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(image.astype(np.uint8), 1.0 - alpha, heat_map(amap, vmin, vmax), alpha, 0.0)
    if mask is not None:
        m = np.asarray(mask).astype(np.uint8)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        thickness = max(1, round(min(h, w) / 128))
        cv2.drawContours(out, contours, -1, CONTOUR_RGB, thickness)
    return out


def colour_bar(height: int, vmin: float, vmax: float) -> np.ndarray:
    """The heat map's scale as a vertical bar (vmax red at the top, vmin blue at the bottom) with both
    values written beside it, so a figure says which scores its colours mean (RGB uint8, height x 56)."""
    import cv2

    ramp = np.repeat(np.linspace(vmax, vmin, height, dtype=np.float32)[:, None], 12, axis=1)
    labels = np.full((height, 44, 3), 255, np.uint8)
    for text, y in ((f"{vmax:.3g}", 10), (f"{vmin:.3g}", height - 3)):
        cv2.putText(labels, text, (3, y), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([heat_map(ramp, vmin, vmax), labels], axis=1)


def panel(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
          vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Side by side: the image with the ground-truth contour, the heat-map overlay, and its colour scale
    (RGB uint8); vmin/vmax default to the map's own range."""
    import cv2

    left = image.astype(np.uint8).copy()
    if mask is not None:
        m = np.asarray(mask).astype(np.uint8)
        if m.shape != left.shape[:2]:
            m = cv2.resize(m, (left.shape[1], left.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(left, contours, -1, CONTOUR_RGB, max(1, round(min(left.shape[:2]) / 128)))
    lo = float(np.min(amap)) if vmin is None else float(vmin)
    hi = float(np.max(amap)) if vmax is None else float(vmax)
    right = overlay(image, amap, mask, lo, hi)
    gap = np.full((left.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([left, gap, right, gap, colour_bar(left.shape[0], lo, hi)], axis=1)


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an RGB (H, W, 3) or gray (H, W) uint8 array as PNG bytes (Pillow: no channel swap)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.astype(np.uint8))).save(buf, format="PNG")
    return buf.getvalue()


def format_value(value: object, percent: bool = True) -> str:
    """Text shown in a cell: floats as percentages with 2 decimals, NaN/None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "–"
        return f"{100 * value:.2f}" if percent else f"{value:.4g}"
    return str(value)


def _cell(value: object, percent: bool) -> str:
    text = html.escape(format_value(value, percent))
    if isinstance(value, float | np.floating) and not math.isnan(value):
        return f'<td class="num" data-value="{float(value)!r}">{text}</td>'
    return f"<td>{text}</td>"


def render_table(table: Table) -> str:
    """One <table> with a caption."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "\n".join("<tr>" + "".join(_cell(v, table.percent) for v in row) + "</tr>" for row in table.rows)
    return (f"<h2>{html.escape(table.title)}</h2>\n<table>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #bbb;padding:.3em .6em}
th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}
.figs{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}figcaption{font-size:.85em;max-width:520px}
img{max-width:520px;image-rendering:pixelated}.note{color:#a33}
"""


def render_html(report: Report) -> str:
    """The whole page as one string (inline CSS, base64 images)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
    ]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in report.notes]
    parts += [render_table(t) for t in report.tables]
    if report.figures:
        parts.append("<h2>Anomaly maps</h2><p>Left: image with the ground-truth outline (green). "
                     "Right: anomaly heat map overlay (blue low, red high), its colour bar giving the scores."
                     "</p><div class=\"figs\">")
        for fig in report.figures:
            data = base64.b64encode(png_bytes(fig.image)).decode("ascii")
            cap = html.escape(fig.caption)
            parts.append(f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{cap}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(path: Path, report: Report) -> Path:
    """Render and write the page atomically; returns the path."""
    from fsad_data.atomic import write_text_atomic

    path = Path(path)
    write_text_atomic(path, render_html(report))
    return path
