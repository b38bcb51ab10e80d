"""Pixel spacing of a projection radiograph, by the rules of PS3.3 10.7.1.1.

Pixel Spacing is "in the patient"; Imager Pixel Spacing is at the detector front plane. A zero
spacing (RG1 carries ``0\\0``) means "unknown" and must never be copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydicom


@dataclass(frozen=True)
class Spacing:
    """Row and column spacing in mm and the source attribute it came from."""

    row_mm: float
    col_mm: float
    attribute: str  # "PixelSpacing" | "ImagerPixelSpacing"

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.col_mm


def _positive_pair(dataset: pydicom.Dataset, keyword: str) -> tuple[float, float] | None:
    value = dataset.get(keyword)
    if value is None:
        return None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    if len(values) != 2 or min(values) <= 0.0:
        return None
    return values[0], values[1]


def source_spacing(dataset: pydicom.Dataset) -> Spacing | None:
    """Pixel Spacing when non-zero, else Imager Pixel Spacing when non-zero, else None."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(dataset, keyword)
        if pair is not None:
            return Spacing(pair[0], pair[1], keyword)
    return None
