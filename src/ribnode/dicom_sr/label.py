"""The optional burned-in "AI SYNTHETIC" corner label of the secondary capture.

Drawn with Pillow's built-in bitmap font (``load_default_imagefont``: the same glyphs on every
installation, no font file), scaled by an integer factor so it stays legible on a 2k x 2k
radiograph. Text is display-white on a display-black box, whatever the photometric
interpretation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_TEXT = "AI SYNTHETIC - bone suppressed"


def stored_extremes(dtype: np.dtype, bits_stored: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest value representable in ``bits_stored`` bits."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def label_mask(text: str, rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (box, glyphs) masks of the label in the top-left corner of a rows x columns image."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    pad = 2
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, fill=255, font=font)
    glyphs = np.asarray(canvas) > 127
    scale = max(1, round(rows / 40 / glyphs.shape[0]))
    while scale > 1 and glyphs.shape[1] * scale > columns // 2:
        scale -= 1
    glyphs = np.kron(glyphs, np.ones((scale, scale), dtype=bool)).astype(bool)
    margin = max(2, rows // 100)
    height = min(glyphs.shape[0], rows - margin)
    width = min(glyphs.shape[1], columns - margin)
    box = np.zeros((rows, columns), dtype=bool)
    ink = np.zeros((rows, columns), dtype=bool)
    box[margin : margin + height, margin : margin + width] = True
    ink[margin : margin + height, margin : margin + width] = glyphs[:height, :width]
    return box, ink


def burn_label(
    stored: np.ndarray, photometric: str, bits_stored: int, signed: bool, text: str = LABEL_TEXT
) -> np.ndarray:
    """A copy of ``stored`` with the label burned in (white text on a black box)."""
    if stored.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {stored.shape}")
    low, high = stored_extremes(stored.dtype, bits_stored, signed)
    white, black = (low, high) if photometric == "MONOCHROME1" else (high, low)
    box, ink = label_mask(text, *stored.shape)
    out = stored.copy()
    out[box] = black
    out[ink] = white
    return out
