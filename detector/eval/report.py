"""Report: PNG overlays (image, ground-truth contour, anomaly heat map) and one self-contained HTML page.

The page has no external assets: styles and the one script are inline and every picture is a base64 data
URI, so the file can be mailed or opened offline. Table cells carry the exact value in ``data-value`` (what
metrics.json holds) next to the rounded text a person reads. Plots (ROC and PR curves, score histograms,
per-class bars) are drawn by matplotlib (Agg, no pyplot state) and embedded as PNG.

The threshold explorer (``threshold_explorer``) holds the two decisions an inspection engineer makes, with the
project's one rule: the image threshold on the image score decides whether an image is anomalous (the
``anomalous`` column of ``detector predict --image-threshold``); the pixel threshold decides the regions (the
masks and named defects of ``--threshold``). The image slider counts false alarms and misses and lists the images
whose decision differs from the evaluation's image threshold; the pixel slider redraws the predicted region
outlines on the overlays from small embedded score maps (uint8 over the page's colour scale) and counts the
images with a region. The page shows, and copies, the ``detector predict`` command that applies both. The Python
re-statements (``flagged_at``, ``regions_at``, ``slider_value``, ``page_threshold``, ``predict_command``) are
what the script computes. The gallery is capped by a byte budget, said on the page.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from fsad_data.atomic import write_text_atomic

# heat map colours are drawn by OpenCV (BGR) and flipped once here; everything leaving this module is RGB
CONTOUR_RGB = (0, 255, 0)
REGION_RGB = (255, 0, 255)  # predicted defect regions (named defects), as the explorer's outlines


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
class Plot:
    """One matplotlib plot as PNG bytes with a caption."""

    caption: str
    png: bytes


@dataclass
class Report:
    """What one HTML page shows, top to bottom."""

    title: str
    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # HTML made by this module (threshold_explorer)


def normalise_map(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Scale a float map to uint8 0..255 between vmin and vmax (default: the map's own range)."""
    amap = np.asarray(amap, dtype=np.float32)
    lo = float(amap.min()) if vmin is None else float(vmin)
    hi = float(amap.max()) if vmax is None else float(vmax)
    scaled = (amap - lo) / (hi - lo) if hi > lo else np.zeros_like(amap)
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


def heat_map(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """JET colour map of a score map as an RGB uint8 image."""

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


def colour_bar(height: int, vmin: float, vmax: float, ticks: int = 5) -> np.ndarray:
    """The heat map's scale as a vertical bar (vmax red at the top, vmin blue at the bottom) with ``ticks``
    values written beside it at a size readable at normal zoom (about 11 px high whatever the figure's
    height), so a figure says which scores its colours mean (RGB uint8, height x width)."""

    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1
    values = np.linspace(vmax, vmin, max(2, ticks))
    labels_text = [f"{v:.3g}" for v in values]
    text_w = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in labels_text)
    text_h = cv2.getTextSize("0", font, scale, thick)[0][1]
    bar_w, tick_w = 14, 4
    ramp = np.repeat(np.linspace(vmax, vmin, height, dtype=np.float32)[:, None], bar_w, axis=1)
    labels = np.full((height, tick_w + text_w + 6, 3), 255, np.uint8)
    for text, v in zip(labels_text, values):
        y = round((vmax - v) / (vmax - vmin) * (height - 1)) if vmax > vmin else 0
        cv2.line(labels, (0, y), (tick_w - 1, y), (0, 0, 0), 1)
        base = min(height - 2, max(text_h + 1, y + text_h // 2))
        cv2.putText(labels, text, (tick_w + 2, base), font, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return np.concatenate([heat_map(ramp, vmin, vmax), labels], axis=1)


def panel(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None,
          vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Side by side: the image with the ground-truth contour, the heat-map overlay, and its colour scale
    (RGB uint8); vmin/vmax default to the map's own range."""

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


def draw_regions(image: np.ndarray, labels: np.ndarray, boxes: list[list[int]]) -> np.ndarray:
    """Named defect regions on a picture: each region's outline (magenta) and its number (1-based, its
    value in ``labels``) at the box's top-left corner; ``labels`` at the picture's size (RGB uint8 copy)."""

    out = np.ascontiguousarray(image.astype(np.uint8)).copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 200))
    scale = max(0.4, min(h, w) / 600)
    for k, box in enumerate(boxes, start=1):
        contours, _ = cv2.findContours((labels == k).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, REGION_RGB, thick)
        x, y = int(box[0]), max(int(box[1]) - 3, int(12 * scale) + 2)
        cv2.putText(out, str(k), (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, str(k), (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an RGB (H, W, 3) or gray (H, W) uint8 array as PNG bytes (Pillow: no channel swap)."""

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
figure.plot img{image-rendering:auto;max-width:min(100%,1280px)}figure.plot figcaption{max-width:none}
.explorer{position:sticky;top:0;background:#fff;border-bottom:1px solid #bbb;padding:.5em 0;z-index:2}
.explorer input[type=range]{width:min(640px,90vw)}.counts span{font-weight:bold}
.gallery{display:flex;flex-wrap:wrap;gap:.8em}.thumb{position:relative;width:var(--w)}
.thumb img,.thumb canvas{position:absolute;left:0;top:0;width:var(--w);height:var(--h);image-rendering:auto}
.thumb .pic{position:relative;width:var(--w);height:var(--h)}.thumb figcaption{font-size:.8em;overflow-wrap:anywhere}
.thumb.flagged{outline:3px solid #d0f}.thumb ul{margin:.2em 0;padding-left:1.2em;font-size:.8em}
code{background:#f3f3f3;padding:0 .3em}
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
    if report.plots:
        parts.append('<div class="figs">')
        for plot in report.plots:
            cap = html.escape(plot.caption)
            data = base64.b64encode(plot.png).decode("ascii")
            parts.append(f'<figure class="plot"><img alt="{cap}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{cap}</figcaption></figure>")
        parts.append("</div>")
    parts += report.sections
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

    path = Path(path)
    write_text_atomic(path, render_html(report))
    return path


# ---------------------------------------------------------------------------------------------- plots
def _png(fig: object) -> bytes:
    """A matplotlib Figure as PNG bytes (Agg canvas, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)  # type: ignore[attr-defined]
    return buf.getvalue()


def _figure(width: float, height: float) -> object:
    from matplotlib.figure import Figure as MplFigure  # matplotlib (~0.5 s): only the HTML report plots

    return MplFigure(figsize=(width, height), layout="constrained")


def curve_points(curve: object) -> dict[str, np.ndarray]:
    """ROC (fpr, tpr) and PR (recall, precision) points of a ``metrics.Curve`` (highest threshold first),
    with ROC's (0, 0) start."""
    tps = np.asarray(curve.tps, np.float64)  # type: ignore[attr-defined]
    fps = np.asarray(curve.fps, np.float64)  # type: ignore[attr-defined]
    p, n = max(tps[-1], 1.0), max(fps[-1], 1.0)
    return {"fpr": np.concatenate(([0.0], fps / n)), "tpr": np.concatenate(([0.0], tps / p)),
            "recall": tps / p, "precision": tps / np.maximum(tps + fps, 1.0)}


def curves_plot(curves: dict[str, object], values: dict[str, float]) -> bytes:
    """ROC and PR curves side by side for each level given ({"image": Curve, "pixel": Curve}), the AUROC and
    AP of ``values`` in the legends."""
    fig = _figure(8.0, 3.4 * len(curves))
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for row, (level, curve) in zip(axes, curves.items()):
        pts = curve_points(curve)
        auroc, ap = values.get(f"{level}_auroc", float("nan")), values.get(f"{level}_ap", float("nan"))
        row[0].plot(pts["fpr"], pts["tpr"], lw=1.8, label=f"AUROC {100 * auroc:.2f}%")
        row[0].plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        row[0].set(xlabel="false positive rate", ylabel="true positive rate", title=f"{level} ROC",
                   xlim=(0, 1), ylim=(0, 1.02))
        row[1].plot(pts["recall"], pts["precision"], lw=1.8, c="C1", label=f"AP {100 * ap:.2f}%")
        row[1].set(xlabel="recall", ylabel="precision", title=f"{level} precision-recall", xlim=(0, 1),
                   ylim=(0, 1.02))
        for ax in row:
            ax.legend(loc="lower right")
            ax.grid(alpha=0.3)
    return _png(fig)


def histograms_plot(panels: list[dict[str, object]]) -> bytes:
    """Score histograms of normal and anomalous items, one panel each, the threshold as a dashed line.

    A panel: {"title", "normal", "anomalous"} (values) or {"title", "edges", "normal_counts",
    "anomalous_counts"} (already binned), plus "threshold" and "threshold_label"."""
    fig = _figure(4.2 * len(panels), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, pan in zip(axes, panels):
        if "edges" in pan:
            edges = np.asarray(pan["edges"], np.float64)
            for key, colour, name in (("normal_counts", "C0", "normal"), ("anomalous_counts", "C3", "anomalous")):
                counts = np.asarray(pan[key], np.float64)
                ax.stairs(counts / max(counts.sum(), 1.0), edges, color=colour, fill=True, alpha=0.45, label=name)
            ax.set_ylabel("fraction of pixels")
        else:
            normal = np.asarray(pan["normal"], np.float64)
            anomalous = np.asarray(pan["anomalous"], np.float64)
            both = np.concatenate([normal, anomalous])
            both = both[np.isfinite(both)]
            lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
            edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 31)
            ax.hist(normal[np.isfinite(normal)], bins=edges, alpha=0.55, color="C0", label=f"normal ({normal.size})")
            ax.hist(anomalous[np.isfinite(anomalous)], bins=edges, alpha=0.55, color="C3",
                    label=f"anomalous ({anomalous.size})")
            ax.set_ylabel("images")
        t = pan.get("threshold")
        if t is not None and math.isfinite(float(t)):
            ax.axvline(float(t), ls="--", c="k", lw=1.2, label=str(pan.get("threshold_label") or f"threshold {t:.4g}"))
        ax.set(title=str(pan["title"]), xlabel="score")
        ax.legend(fontsize=8)
    return _png(fig)


def bars_plot(title: str, groups: list[str], series: dict[str, tuple[list[float], list[float]]],
              reference: dict[str, float] | None = None, ylabel: str = "%") -> bytes:
    """Grouped bars (one group per class, one bar per series, e.g. per shot count) with the spread as error
    bars; ``reference`` values (the paper's) as black ticks over the groups they belong to (by series)."""
    fig = _figure(max(6.0, 0.55 * len(groups) * max(1, len(series)) + 2), 3.6)
    ax = fig.subplots()
    n = max(1, len(series))
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, (name, (means, stds)) in enumerate(series.items()):
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, means, width, yerr=stds, capsize=3, label=name, alpha=0.85)
        if reference and name in reference and math.isfinite(reference[name]):
            ax.plot([pos[-1] - width / 2, pos[-1] + width / 2], [reference[name]] * 2, c="k", lw=2.5)
    if reference:
        ax.plot([], [], c="k", lw=2.5, label="paper (mean row)")
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set(title=title, ylabel=ylabel)
    finite = [v for means, _ in series.values() for v in means if math.isfinite(v)]
    if finite:
        ax.set_ylim(max(0.0, min(finite) - 10), min(100.0, max(finite) + 5) if max(finite) <= 100 else None)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, n + 1))
    return _png(fig)


def colour_scale_plot(vmin: float, vmax: float) -> bytes:
    """The overlays' colour scale as a horizontal matplotlib colour bar with readable tick labels."""
    from matplotlib import cm, colors  # matplotlib: only the HTML report plots

    fig = _figure(6.0, 0.9)
    ax = fig.subplots()
    hi = vmax if vmax > vmin else vmin + 1e-6
    fig.colorbar(cm.ScalarMappable(norm=colors.Normalize(vmin, hi), cmap="jet"), cax=ax, orientation="horizontal",
                 label="anomaly score (overlay colours)")
    return _png(fig)


# ---------------------------------------------------------------------------------------------- explorer
@dataclass
class Thumb:
    """One overlay of the threshold explorer: the picture (RGB, heat map and ground truth drawn in), the
    image's map quantised to uint8 over the page's colour scale (any smaller size), named defect lines."""

    id: str
    caption: str
    image: np.ndarray
    map_q: np.ndarray
    defects: list[str] = field(default_factory=list)


def quantise_map(amap: np.ndarray, vmin: float, vmax: float, size: int) -> np.ndarray:
    """uint8 levels of a map over [vmin, vmax], resized (area) to at most ``size`` px on the longer side."""

    amap = np.asarray(amap, np.float32)
    h, w = amap.shape
    f = min(1.0, size / max(h, w))
    if f < 1.0:
        amap = cv2.resize(amap, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return normalise_map(amap, vmin, vmax)


def jpeg_bytes(image: np.ndarray, quality: int = 85) -> bytes:
    """An RGB uint8 picture as JPEG (the gallery's photos: a fraction of PNG's size)."""

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.astype(np.uint8))).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def flagged_at(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Images anomalous at an image threshold: image score >= t (``anomalous`` of ``detector predict`` and the
    API; a non-finite score never: the page carries none); what the page's script computes, in Python."""
    s = np.asarray(scores, np.float64)
    return np.isfinite(s) & (s >= float(threshold))


def regions_at(region_thresholds: np.ndarray, threshold: float) -> np.ndarray:
    """Images with a defect region at a pixel threshold (their ``defects.flag_threshold`` >= t): regions only,
    not the image decision; the page's count, in Python."""
    return np.asarray(region_thresholds, np.float64) >= float(threshold)


def slider_value(threshold: float) -> float:
    """The threshold the page uses for a moved slider: its position rounded to 6 significant digits (the number
    shown and copied)."""
    return float(f"{float(threshold):.6g}")


def page_threshold(exact: float, values: np.ndarray) -> float:
    """The number a slider starts at, shows and copies for an evaluation's threshold: the shortest decimal a
    little below the exact value (an F1-max threshold is one of the scores), at most half way down to the next
    lower of ``values`` (the image scores, or the region thresholds) and within 1 %: it decides every image as
    the exact one does, and a rerun whose scores differ in the last bits decides alike."""

    exact = float(exact)
    v = np.asarray(values, np.float64)
    below = v[np.isfinite(v) & (v < exact)]
    gap = exact - float(below.max()) if below.size else (abs(exact) or 1.0) * 0.01
    scale = abs(exact) or 1.0
    top, bottom = exact - min(gap / 4, 1e-4 * scale), exact - min(gap / 2, 0.01 * scale)
    for digits in range(1, 18):
        q = Decimal(repr(top))
        d = float(q.quantize(Decimal(1).scaleb(q.adjusted() - digits + 1), rounding=ROUND_FLOOR))
        if d >= bottom:
            return d
    return top


def js_number(value: float) -> str:
    """A number as the page's script writes it (JavaScript's ``String(x)``: shortest round-trip digits, plain
    from 1e-6 to below 1e21, else ``1.5e-7`` / ``1e+21``), so the command Python restates is the page's text."""

    value = float(value)
    if value == 0:
        return "0"
    _, digits, exp = Decimal(repr(abs(value))).normalize().as_tuple()
    d = "".join(map(str, digits))
    k, n = len(d), len(d) + int(exp)
    minus = "-" if value < 0 else ""
    if k <= n <= 21:
        return minus + d + "0" * (n - k)
    if 0 < n <= 21:
        return minus + d[:n] + "." + d[n:]
    if -6 < n <= 0:
        return minus + "0." + "0" * -n + d
    e = n - 1
    return minus + (d if k == 1 else d[0] + "." + d[1:]) + "e" + ("+" if e >= 0 else "-") + str(abs(e))


def predict_command(base: str, pixel: float, image: float | None) -> str:
    """The command the page shows and copies for the sliders' thresholds: ``base`` (``detector predict
    --checkpoint C IMAGES --out predictions ...``) with ``--threshold`` (pixel) and ``--image-threshold``."""
    text = f"{base} --threshold {js_number(pixel)}"
    return text if image is None else f"{text} --image-threshold {js_number(image)}"


def _finite(value: object) -> float | None:
    v = float(value)  # type: ignore[arg-type]
    return v if math.isfinite(v) else None


def _embedded_thumbs(thumbs: list[Thumb], budget_bytes: int) -> tuple[list[dict[str, object]], int, int]:
    """(overlays as the page's script reads them, bytes embedded, overlays left out): added in order until
    ``budget_bytes`` of embedded data is reached, so a large evaluation still gives a page a browser opens."""
    items, used, left_out = [], 0, 0
    for t in thumbs:
        pic = base64.b64encode(jpeg_bytes(t.image)).decode("ascii")
        amap = base64.b64encode(np.ascontiguousarray(t.map_q, np.uint8).tobytes()).decode("ascii")
        cost = len(pic) + len(amap) + sum(len(d) for d in t.defects) + 200
        if used + cost > budget_bytes:
            left_out += 1
            continue
        used += cost
        items.append({"id": t.id, "caption": t.caption, "w": int(t.image.shape[1]), "h": int(t.image.shape[0]),
                      "mw": int(t.map_q.shape[1]), "mh": int(t.map_q.shape[0]), "pic": pic, "map": amap,
                      "defects": list(t.defects)})
    return items, used, left_out


def _slider_span(values: list[float | None], ref: float, extra: tuple[float, ...] = ()) -> tuple[float, float]:
    """A slider's range: every value and the reference, with 5 % room to flag all or none."""
    finite = [v for v in values if v is not None]
    lo, hi = min([*finite, ref, *extra]), max([*finite, ref, *extra])
    room = 0.05 * ((hi - lo) or abs(ref) or 1.0)
    return lo - room, hi + room


def _image_slider(scores: list[float | None], img_ref: float | None, no_image: str) -> str:
    """The image-threshold slider with its counts and the images that flip, or the note saying why there is
    none (then no image is flagged and the pixel slider works alone)."""
    if img_ref is None:
        return (f'<p class="note" id="no-image-threshold">No image threshold: {html.escape(no_image)}. No '
                "image is flagged here and the command carries the pixel threshold only.</p>")
    lo, hi = _slider_span(scores, img_ref)
    return f"""<p>Image threshold: <input type="range" id="img-thr" min="{lo!r}" max="{hi!r}" step="any"
 value="{img_ref!r}"> <b id="img-value"></b>
 <button id="img-reset" type="button">back to {js_number(img_ref)}</button></p>
<p class="counts">An image is anomalous when its image score is at or above the image threshold (the
 <code>anomalous</code> column of <code>detector predict</code>): false alarms <span id="false-alarms"></span>,
 misses <span id="misses"></span>; <span id="flips-count"></span> images decide differently from the image
 F1-max threshold (shown as {js_number(img_ref)}, which decides every image as it does).</p>
<details><summary>images that flip</summary><ul id="flip-list"></ul></details>"""


def threshold_explorer(rows: list[dict[str, object]], image_reference: float | None, pixel_reference: float,
                       vmin: float, vmax: float, thumbs: list[Thumb], *,
                       command: str = "detector predict --checkpoint CKPT IMAGES --out predictions",
                       budget_bytes: int = 4_000_000, note: str = "",
                       no_image: str = "this evaluation has no image threshold") -> str:
    """The sliders section. ``rows`` hold per image {"id", "label" (0/1), "defect_type", "score" (the image
    score), "region" (the highest pixel threshold at which its map has a defect region)}.

    Two thresholds, as ``detector predict`` applies them: the image slider decides which images are anomalous
    (score >= t: false alarms, misses, images that flip against ``image_reference``, the frame on flagged
    overlays); the pixel slider draws the predicted regions and counts the images that have one. Each starts at
    its reference (``page_threshold`` of the evaluation's F1-max); ``image_reference`` None (no image threshold,
    ``no_image`` says why) leaves the pixel slider alone. ``command`` (the predict command without thresholds)
    is completed with both and shown as copied. Overlays are added in order until ``budget_bytes`` of embedded
    data is reached; the page says how many were left out."""

    scores = [_finite(r["score"]) for r in rows]
    regions = [_finite(r["region"]) for r in rows]
    px_ref = page_threshold(pixel_reference, [r for r in regions if r is not None])
    img_ref = None if image_reference is None or not math.isfinite(float(image_reference)) else \
        page_threshold(float(image_reference), [s for s in scores if s is not None])
    items, used, left_out = _embedded_thumbs(thumbs, budget_bytes)
    data = {"images": [{"id": str(r["id"]), "label": int(r["label"]), "type": str(r.get("defect_type", "")),
                        "score": s, "region": g} for r, s, g in zip(rows, scores, regions)],
            "image": {"reference": img_ref}, "pixel": {"reference": px_ref},
            "vmin": float(vmin), "vmax": float(vmax), "thumbs": items, "command": command}
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    capped = (f"{len(items)} of {len(thumbs)} overlays embedded ({left_out} left out to keep the page under "
              f"{budget_bytes / 1e6:.1f} MB; all images are counted above and listed in scores.csv)."
              if left_out else f"{len(items)} overlays embedded ({used / 1e6:.2f} MB).")
    px_lo, px_hi = _slider_span(regions, px_ref, (vmin, vmax))
    image_part = _image_slider(scores, img_ref, no_image)
    return f"""<h2>Threshold explorer</h2>
<div class="explorer" id="explorer">
{image_part}
<p>Pixel threshold: <input type="range" id="px-thr" min="{px_lo!r}" max="{px_hi!r}" step="any"
 value="{px_ref!r}"> <b id="px-value"></b>
 <button id="px-reset" type="button">back to {js_number(px_ref)}</button>: the predicted defect regions
 (outlined in magenta) are where the map is at or above it; <span id="regions-count"></span> images have a
 region there.</p>
</div>
<p>Run it on new images (replace IMAGES with files or folders; the results go to the folder predictions):
 <code id="cmd"></code> <button id="copy" type="button">copy command</button> <span id="copied"></span></p>
<p>{html.escape(note)} Overlays: heat map of the page's colour scale, ground truth in green, the predicted
regions at the pixel threshold outlined in magenta, a magenta frame on images anomalous at the image threshold.
{html.escape(capped)} The named defects under each overlay are those of the evaluation's pixel threshold.</p>
<div class="gallery" id="gallery"></div>
<script type="application/json" id="explorer-data">{payload}</script>
<script>{_EXPLORER_JS}</script>"""


_EXPLORER_JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const el = (id) => document.getElementById(id);
  const norm = (t) => Number(Number(t).toPrecision(6));
  // a slider's threshold: its reference until moved, then the position rounded (report.slider_value)
  function control(id, ref) {
    const c = {slider: el(id), ref: ref, value: ref};
    if (c.slider) {
      c.slider.addEventListener("input", () => { c.value = norm(c.slider.value); update(); });
      el(id.replace("thr", "reset")).addEventListener("click", () => {
        c.slider.value = String(c.ref);
        c.value = c.ref;
        update();
      });
    }
    return c;
  }
  const flagged = (im, t) => t !== null && im.score !== null && im.score >= t;  // report.flagged_at
  const hasRegion = (im, t) => im.region !== null && im.region >= t;  // report.regions_at
  const thumbs = [];
  const gallery = el("gallery");
  for (const t of D.thumbs) {
    const fig = document.createElement("figure");
    fig.className = "thumb";
    fig.dataset.id = t.id;
    fig.style.setProperty("--w", t.w + "px");
    fig.style.setProperty("--h", t.h + "px");
    const pic = document.createElement("div");
    pic.className = "pic";
    const img = document.createElement("img");
    img.alt = t.caption;
    img.src = "data:image/jpeg;base64," + t.pic;
    const canvas = document.createElement("canvas");
    canvas.width = t.w;
    canvas.height = t.h;
    pic.append(img, canvas);
    const cap = document.createElement("figcaption");
    cap.textContent = t.caption;
    const list = document.createElement("ul");
    for (const d of t.defects) {
      const li = document.createElement("li");
      li.textContent = d;
      list.append(li);
    }
    if (!t.defects.length) {
      const li = document.createElement("li");
      li.textContent = "no defect at the evaluation's pixel threshold";
      list.append(li);
    }
    fig.append(pic, cap, list);
    gallery.append(fig);
    const raw = atob(t.map);
    const q = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) q[i] = raw.charCodeAt(i);
    thumbs.push({t: t, fig: fig, ctx: canvas.getContext("2d"), q: q});
  }
  const byId = new Map(D.images.map((im) => [im.id, im]));
  function outline(th, t) {
    const {ctx, q} = th;
    const {w, h, mw, mh} = th.t;
    ctx.clearRect(0, 0, w, h);
    const span = D.vmax - D.vmin;
    const level = span > 0 ? (t - D.vmin) / span * 255 : 0;
    const inside = (x, y) => x >= 0 && y >= 0 && x < mw && y < mh && q[y * mw + x] >= level;
    const sx = w / mw, sy = h / mh;
    ctx.fillStyle = "#ff00ff";
    for (let y = 0; y < mh; y++) {
      for (let x = 0; x < mw; x++) {
        if (inside(x, y) && !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1))) {
          ctx.fillRect(Math.floor(x * sx), Math.floor(y * sy), Math.ceil(sx), Math.ceil(sy));
        }
      }
    }
  }
  function count(id, n, text) {
    el(id).textContent = text;
    el(id).dataset.count = n;
  }
  let drawnAt = null;
  function update() {
    const ti = image.value, tp = pixel.value;
    if (ti !== null) {
      const normal = D.images.filter((im) => im.label === 0);
      const anomalous = D.images.filter((im) => im.label === 1);
      const fa = normal.filter((im) => flagged(im, ti)).length;
      const miss = anomalous.filter((im) => !flagged(im, ti)).length;
      const flips = D.images.filter((im) => flagged(im, ti) !== flagged(im, image.ref));
      el("img-value").textContent = String(ti);
      count("false-alarms", fa, fa + " of " + normal.length + " normal images");
      count("misses", miss, miss + " of " + anomalous.length + " anomalous images");
      count("flips-count", flips.length, String(flips.length));
      const list = el("flip-list");
      list.replaceChildren();
      for (const im of flips.slice(0, 200)) {
        const li = document.createElement("li");
        const now = flagged(im, ti) ? "flagged" : "passed";
        li.textContent = im.id + " (" + (im.label ? "anomalous" : "normal") + "): now " + now;
        li.dataset.id = im.id;
        list.append(li);
      }
      if (flips.length > 200) {
        const li = document.createElement("li");
        li.textContent = "and " + (flips.length - 200) + " more";
        list.append(li);
      }
    }
    el("px-value").textContent = String(tp);
    const withRegion = D.images.filter((im) => hasRegion(im, tp)).length;
    count("regions-count", withRegion, withRegion + " of " + D.images.length);
    // report.predict_command
    el("cmd").textContent = D.command + " --threshold " + String(tp) +
      (ti !== null ? " --image-threshold " + String(ti) : "");
    for (const th of thumbs) {
      const im = byId.get(th.t.id);
      th.fig.classList.toggle("flagged", Boolean(im && flagged(im, ti)));
      if (tp !== drawnAt) outline(th, tp);
    }
    drawnAt = tp;
  }
  const image = control("img-thr", D.image.reference);
  const pixel = control("px-thr", D.pixel.reference);
  el("copy").addEventListener("click", () => {
    const text = el("cmd").textContent;
    const done = (msg) => { el("copied").textContent = msg; };
    const manual = () => {  // no clipboard (not a secure context, or refused): select it for the user
      done("select and copy: " + text);
      const range = document.createRange();
      range.selectNodeContents(el("cmd"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(() => done("copied"), manual);
    } else {
      manual();
    }
  });
  update();
})();
"""
