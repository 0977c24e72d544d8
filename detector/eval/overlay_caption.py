"""The caption band under a ``detector predict`` overlay: what the run decided about the image, readable at a
glance without opening scores.csv.

Line 1 is the verdict and the image score against the image threshold (``ANOMALOUS: score 0.734 >= 0.612``,
``normal: score 0.41 < 0.612``, or ``no image threshold: score 0.734``); then, with named defects, one line per
defect, numbered as ``report.draw_regions`` numbers the outlines on the picture (``1. color spot on ...``).

Why a band and not text over the picture: the part stays visible. The picture keeps its pixel coordinates (top
left of the overlay), so a box from defects.json points at the same pixels; the band lies below it. The text
scales with the width (about 70 characters a line at any size, so it stays readable where the overlay is shown
fitted to a screen); a picture narrower than ``MIN_WIDTH`` is padded on the right so a line still fits. Long
sentences wrap; at most ``MAX_LINES`` lines, the defects that do not fit are counted (``+2 more defects``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

MIN_WIDTH = 384  # px: the narrowest band (a 64 px picture gets readable text beside empty band colour)
MAX_LINES = 6  # verdict + named defects; the rest is "+N more defects (defects.json)"
CHARS_PER_LINE = 70  # the font scales so that a line holds about this many characters, at any width
BAND_RGB = (32, 32, 32)
TEXT_RGB = (235, 235, 235)
MUTED_RGB = (170, 170, 170)
VERDICT_RGB = {"ANOMALOUS": (255, 90, 90), "normal": (110, 220, 110), "no image threshold": MUTED_RGB}
_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX (cv2 is imported where text is drawn, not at import)
_CHAR_W = 13.0  # FONT_HERSHEY_SIMPLEX's mean character width at scale 1 (px, lower-case text)


@dataclass(frozen=True)
class Line:
    """One caption line: its text and colour; ``hang`` marks a numbered item whose wrapped lines indent."""

    text: str
    rgb: tuple[int, int, int] = TEXT_RGB
    hang: str = ""


def verdict(anomalous: bool | None) -> str:
    """The verdict word: the decision predict made at the image threshold (None: no image threshold)."""
    return "no image threshold" if anomalous is None else ("ANOMALOUS" if anomalous else "normal")


def caption_lines(score: float, image_threshold: float | None, anomalous: bool | None,
                  sentences: list[str] | None) -> list[Line]:
    """The caption's lines: verdict with score against threshold, then the numbered defect sentences.

    ``anomalous`` is predict's decision (this module shows it, never makes it); ``sentences``: the named
    defects in region order (None: nothing was named, e.g. no pixel threshold; []: no region at the threshold).
    """
    word = verdict(anomalous)
    if anomalous is None or image_threshold is None:
        first = f"{word}: score {_num(score)}"
    else:
        s, t = _pair(score, image_threshold)
        first = f"{word}: score {s} {'>=' if anomalous else '<'} {t}"
    lines = [Line(first, VERDICT_RGB[word])]
    if sentences is not None:
        if not sentences:
            lines.append(Line("no defect region at the pixel threshold", MUTED_RGB))
        lines += [Line(f"{k}. {text}", hang=f"{k}. ") for k, text in enumerate(sentences, start=1)]
    return lines


def add_caption(picture: np.ndarray, lines: list[Line], max_lines: int = MAX_LINES) -> np.ndarray:
    """The picture (RGB uint8, kept at the top left) above a band with ``lines`` wrapped to its width and capped
    at ``max_lines`` (RGB uint8, as wide as the picture or ``MIN_WIDTH``)."""

    h, w = picture.shape[:2]
    width = max(w, MIN_WIDTH)
    scale = width / (CHARS_PER_LINE * _CHAR_W)
    thick = max(1, round(scale * 1.6))
    (_, text_h), _ = cv2.getTextSize("Ag", _FONT, scale, thick)
    line_h, margin = round(text_h * 1.6), max(4, round(text_h * 0.6))
    rows = _fit(lines, width - 2 * margin, scale, thick, max(2, max_lines))
    canvas = np.empty((h + 2 * margin + line_h * len(rows), width, 3), np.uint8)
    canvas[:] = BAND_RGB
    canvas[:h, :w] = picture[..., :3] if picture.ndim == 3 else picture[..., None]
    for i, (x, line) in enumerate(rows):
        base = h + margin + i * line_h + text_h + (line_h - text_h) // 3
        cv2.putText(canvas, line.text, (margin + x, base), _FONT, scale, line.rgb, thick, cv2.LINE_AA)
    return canvas


def _fit(lines: list[Line], width: int, scale: float, thick: int, max_lines: int) -> list[tuple[int, Line]]:
    """(x offset, line) per drawn row: each line wrapped to ``width``, whole items only, the verdict always, and
    a "+N more" row for the items that do not fit under ``max_lines``."""

    def px(text: str) -> int:
        return cv2.getTextSize(text, _FONT, scale, thick)[0][0]

    rows = _wrap(lines[0], width, px)
    rest = lines[1:]
    for i, line in enumerate(rest):
        pieces = _wrap(line, width, px)
        room = max_lines - len(rows) - (0 if i == len(rest) - 1 else 1)  # keep a row for "+N more"
        if len(pieces) > room:
            left = len(rest) - i
            rows.append((0, Line(f"+{left} more defect{'s' if left > 1 else ''} (defects.json)", MUTED_RGB)))
            break
        rows += pieces
    return rows


def _wrap(line: Line, width: int, px: Callable[[str], int]) -> list[tuple[int, Line]]:
    """``line`` split at spaces into rows no wider than ``width`` (a longer word is cut); rows after the first
    indent by the item's number."""
    indent = px(line.hang) if line.hang else 0
    rows: list[str] = []
    current = ""
    for word in line.text.split(" "):
        room = width - (indent if rows else 0)
        trial = f"{current} {word}" if current else word
        if px(trial) <= room or not current:
            current = trial
        else:
            rows.append(current)
            current = word
        while px(current) > width - (indent if rows else 0) and len(current) > 1:  # one word wider than a row
            cut = len(current) - 1
            while cut > 1 and px(current[:cut]) > width - (indent if rows else 0):
                cut -= 1
            rows.append(current[:cut])
            current = current[cut:]
    rows.append(current)
    return [(indent if k else 0, Line(text, line.rgb)) for k, text in enumerate(rows)]


def _num(value: float) -> str:
    return f"{float(value):.3g}"


def _pair(score: float, threshold: float) -> tuple[str, str]:
    """Score and threshold with as many significant digits (3 to 8) as it takes to show that they differ."""
    for digits in range(3, 9):
        s, t = f"{float(score):.{digits}g}", f"{float(threshold):.{digits}g}"
        if s != t or score == threshold:
            return s, t
    return s, t
