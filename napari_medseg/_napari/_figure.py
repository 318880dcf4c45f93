"""Demo pictures that explain themselves: the canvas screenshot with a caption band below it (outside the
image) saying what the picture shows and which model ran, and a legend entry for every colour drawn.

Pillow only (napari depends on it); no Qt, so the composition is tested without a viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ..io.errors import InvalidInput

STYLES = ("fill", "outline", "dot", "ring", "text")
BAND = (30, 30, 30)
INK = (235, 235, 235)
MUTED = (175, 175, 175)


@dataclass
class Swatch:
    """One legend entry: ``label`` drawn beside a sample of ``color`` (RGB(A), floats in [0, 1] or
    0-255 ints) in ``style`` (:data:`STYLES`: a filled square, an outlined square, a dot, a ring, a text
    sample); ``edge`` is the ring drawn around a dot."""

    label: str
    color: tuple
    style: str = "fill"
    edge: tuple | None = None

    def __post_init__(self):
        if self.style not in STYLES:
            raise InvalidInput(f"legend style must be one of {', '.join(STYLES)}, not {self.style!r}")


@dataclass
class Caption:
    """What a demo picture shows: a title, explanatory lines and the legend."""

    title: str
    lines: list[str] = field(default_factory=list)
    legend: list[Swatch] = field(default_factory=list)


def rgb255(color) -> tuple[int, int, int]:
    """An RGB(A) colour as three 0-255 ints (floats are read as 0-1)."""
    c = np.asarray(color, dtype=float).ravel()[:3]
    if c.size != 3:
        raise InvalidInput(f"not an RGB colour: {color!r}")
    if c.max() <= 1.0:
        c = c * 255.0
    return tuple(int(round(v)) for v in np.clip(c, 0, 255))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def _swatch(draw, x: int, y: int, s: int, sw: Swatch, font) -> None:
    rgb = rgb255(sw.color)
    box = (x, y, x + s, y + s)
    if sw.style == "fill":
        draw.rectangle(box, fill=rgb)
    elif sw.style == "outline":
        draw.rectangle(box, outline=rgb, width=3)
    elif sw.style == "dot":
        draw.ellipse(box, fill=rgb, outline=rgb255(sw.edge) if sw.edge else None, width=3 if sw.edge else 0)
    elif sw.style == "ring":
        draw.ellipse(box, outline=rgb, width=3)
    else:  # text sample
        draw.text((x, y - 2), "Ab", fill=rgb, font=font)


def compose(screenshot, caption: Caption, out) -> Path:
    """Write ``out``: the ``screenshot`` (a PNG path or an (H, W, 3|4) uint8 array) above a caption band
    with the title, the lines and the legend, laid out to the picture's width. Returns ``out``."""
    from PIL import Image, ImageDraw

    img = Image.open(screenshot).convert("RGB") if isinstance(screenshot, (str, Path)) else \
        Image.fromarray(np.asarray(screenshot)[..., :3].astype(np.uint8))
    width = max(img.width, 480)
    pad, sq, gap = 14, 16, 10
    title_font, font = _font(18), _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (width, 10)))
    text_w = width - 2 * pad
    title = _wrap(probe, caption.title, title_font, text_w)
    body = [ln for line in caption.lines for ln in _wrap(probe, line, font, text_w)]
    # legend: entries flow left to right, wrapping to the next row
    rows, row, used = [], [], 0
    for sw in caption.legend:
        w = sq + 6 + int(probe.textlength(sw.label, font=font)) + 2 * gap
        if row and used + w > text_w:
            rows.append(row)
            row, used = [], 0
        row.append((sw, w))
        used += w
    if row:
        rows.append(row)
    line_h, title_h, row_h = 19, 24, sq + 10
    band = pad + len(title) * title_h + len(body) * line_h + (8 if rows else 0) + len(rows) * row_h + pad
    fig = Image.new("RGB", (width, img.height + band), BAND)
    fig.paste(img, ((width - img.width) // 2, 0))
    draw = ImageDraw.Draw(fig)
    y = img.height + pad
    for line in title:
        draw.text((pad, y), line, fill=INK, font=title_font)
        y += title_h
    for line in body:
        draw.text((pad, y), line, fill=MUTED, font=font)
        y += line_h
    y += 8 if rows else 0
    for row in rows:
        x = pad
        for sw, w in row:
            _swatch(draw, x, y, sq, sw, font)
            draw.text((x + sq + 6, y), sw.label, fill=INK, font=font)
            x += w
        y += row_h
    out = Path(out)
    fig.save(out)
    return out
