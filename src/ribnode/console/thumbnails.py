"""Thumbnails of a source image, its bone-suppressed Secondary Capture and the layer removed.

All three are rendered from the stored objects (the spool's copy of the source, the staged SC)
at the *original's* window (PS3.3 C.11.2.1.2 Window Center/Width, linear), so that side by side
the only difference is what the suppression did. The removed layer is source minus SC in
modality values (after the Modality LUT), shown with a quarter of the original's window width
centred on zero (the layer is faint beside the whole image): mid grey is "nothing removed",
brighter is where the suppression darkened the image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from PIL import Image

Kind = Literal["original", "suppressed", "removed"]
KINDS: tuple[Kind, ...] = ("original", "suppressed", "removed")


@dataclass(frozen=True)
class Window:
    """A linear VOI window (PS3.3 C.11.2.1.2.1)."""

    center: float
    width: float


def modality_values(dataset: pydicom.Dataset) -> np.ndarray:
    """The first frame in modality values (Rescale Slope/Intercept), float32."""
    pixels = dataset.pixel_array
    if pixels.ndim == 3 and int(dataset.get("SamplesPerPixel", 1)) == 1:
        pixels = pixels[0]
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept


def window_of(dataset: pydicom.Dataset, values: np.ndarray) -> Window:
    """The dataset's first Window Center/Width, else the 0.5-99.5 percentiles of ``values``."""
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = dataset.WindowCenter, dataset.WindowWidth
        center = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        if width >= 1:
            return Window(center, width)
    low, high = np.percentile(values, [0.5, 99.5])
    return Window(float(low + high) / 2, max(float(high - low), 1.0))


def apply_window(values: np.ndarray, window: Window, monochrome1: bool = False) -> np.ndarray:
    """8-bit display values of a linear window; MONOCHROME1 inverted."""
    low = window.center - 0.5 - (window.width - 1) / 2
    scaled = np.clip((values - low) / max(window.width - 1, 1.0), 0.0, 1.0)
    if monochrome1:
        scaled = 1.0 - scaled
    out: np.ndarray = np.round(scaled * 255).astype(np.uint8)
    return out


def render(source_path: Path, sc_path: Path, kind: Kind, size: int = 320) -> bytes:
    """A PNG thumbnail (longest side ``size``) of ``kind``, at the source's window."""
    if kind not in KINDS:
        raise ValueError(f"thumbnail kind {kind!r} is not one of {KINDS}")
    source = pydicom.dcmread(source_path)
    original = modality_values(source)
    window = window_of(source, original)
    monochrome1 = str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if kind == "original":
        display = apply_window(original, window, monochrome1)
    else:
        suppressed = modality_values(pydicom.dcmread(sc_path))
        if suppressed.shape != original.shape:
            raise ValueError(f"SC matrix {suppressed.shape} differs from the source's {original.shape}")
        if kind == "suppressed":
            display = apply_window(suppressed, window, monochrome1)
        else:
            display = apply_window(original - suppressed, Window(0.0, window.width / 4), monochrome1)
    image = Image.fromarray(display, mode="L")
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
