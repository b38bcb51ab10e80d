"""Rib-shaped bone layer: keep only what elongated structures can explain (a safety post-step).

Ribs and clavicles are long bands; a nodule is a compact blob. The grey-scale opening of the
bone layer ``B`` with a line segment of length ``L`` keeps every part of ``B`` that contains
such a segment at that height; the maximum over several orientations (a union of directional
openings) keeps the rib bands, whatever their direction, and drops compact bumps shorter than
``L`` in every direction, such as a nodule that the network took for bone. An opening never
exceeds its input (``open(B) <= B``), so this step can only subtract *less*: it never adds or
paints anything into the image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def line_footprint(length: int, angle_deg: float) -> np.ndarray:
    """A one-pixel-wide digital line of ``length`` px through the centre at ``angle_deg``."""
    if length < 1:
        raise ValueError(f"line length {length}: expected >= 1 px")
    half = (length - 1) / 2.0
    size = 2 * int(np.ceil(half)) + 1
    footprint = np.zeros((size, size), dtype=bool)
    theta = np.deg2rad(angle_deg)
    for s in np.linspace(-half, half, 4 * length):
        row = int(round(size // 2 - s * np.sin(theta)))
        col = int(round(size // 2 + s * np.cos(theta)))
        footprint[row, col] = True
    return footprint


def rib_shaped(bone: np.ndarray, length: int, orientations: int = 12) -> np.ndarray:
    """Union of openings of ``bone`` by lines of ``length`` px in ``orientations`` directions."""
    if orientations < 1:
        raise ValueError(f"orientations {orientations}: expected >= 1")
    bone = np.asarray(bone, dtype=np.float32)
    out = np.full_like(bone, -np.inf)
    for k in range(orientations):
        opened = ndimage.grey_opening(bone, footprint=line_footprint(length, 180.0 * k / orientations),
                                      mode="nearest")
        np.maximum(out, opened, out=out)
    return np.minimum(out, bone)
