"""Pixel spacing of a projection radiograph, and the plane it is in (PS3.3 10.7.1.1-10.7.1.3).

Imager Pixel Spacing is at the detector front plane. Pixel Spacing is "in the patient": for DX
(PS3.3 C.8.11.4) a value the modality calibrated, described by Pixel Spacing Calibration Type and
Description (Basic Pixel Spacing Calibration macro, PS3.3 10.7). A DX with only Imager Pixel
Spacing may give an Estimated Radiographic Magnification Factor (0018,1114, DX Positioning
module): Imager Pixel Spacing divided by it is the spacing in the plane of the isocenter
(PS3.3 10.7.1.1, "calibrated for geometric magnification"), the calibration type GEOMETRY.
A zero spacing (RG1 carries ``0\\0``) means "unknown" and is never copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import pydicom

#: The planes a spacing can be in, as the SC and SR state them.
PLANE_SOURCE_CALIBRATED = "patient"  # the source's own Pixel Spacing (its calibration)
PLANE_MAGNIFICATION_CORRECTED = "isocenter"  # Imager Pixel Spacing / magnification factor
PLANE_DETECTOR = "detector"  # Imager Pixel Spacing, not corrected


@dataclass(frozen=True)
class Spacing:
    """Row and column spacing in mm, the plane it is in and how it was obtained."""

    row_mm: float
    col_mm: float
    attribute: str  # "PixelSpacing" | "ImagerPixelSpacing"
    plane: str = PLANE_SOURCE_CALIBRATED  # one of the PLANE_* values
    magnification: float | None = None  # the factor divided out, when it was
    calibration_type: str | None = None  # Pixel Spacing Calibration Type for the SC, if any
    calibration_description: str | None = None

    @property
    def pixel_area_mm2(self) -> float:
        return self.row_mm * self.col_mm

    @property
    def plane_description(self) -> str:
        """One sentence a reader can act on: which plane a distance measured with it is in."""
        if self.plane == PLANE_DETECTOR:
            return (
                "detector plane: Imager Pixel Spacing of the source, not corrected for "
                "geometric magnification (distances in the patient are smaller)"
            )
        if self.plane == PLANE_MAGNIFICATION_CORRECTED:
            return (
                f"isocenter plane: Imager Pixel Spacing of the source divided by its "
                f"Estimated Radiographic Magnification Factor {self.magnification:g}"
            )
        return "patient plane: Pixel Spacing of the source, as the source calibrated it"


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


def _magnification(dataset: pydicom.Dataset) -> float | None:
    value = dataset.get("EstimatedRadiographicMagnificationFactor")
    try:
        factor = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return factor if factor is not None and factor > 0.0 else None


def _source_pixel_spacing(dataset: pydicom.Dataset, pair: tuple[float, float]) -> Spacing:
    """The source's Pixel Spacing, with its own calibration attributes when it has them."""
    kind = str(dataset.get("PixelSpacingCalibrationType", "") or "") or None
    description = str(dataset.get("PixelSpacingCalibrationDescription", "") or "") or None
    if kind is None:
        description = None  # the description is only defined with a type (PS3.3 10.7)
    return Spacing(pair[0], pair[1], "PixelSpacing", PLANE_SOURCE_CALIBRATED, None, kind, description)


def source_spacing(dataset: pydicom.Dataset) -> Spacing | None:
    """The spacing a measurement on the source (or a pixel-aligned derived image) should use.

    1. Pixel Spacing > 0: the source's calibrated spacing (plane "patient").
    2. Else Imager Pixel Spacing > 0 and an Estimated Radiographic Magnification Factor > 0:
       their quotient (plane "isocenter", calibration type GEOMETRY).
    3. Else Imager Pixel Spacing > 0: as it is (plane "detector", no calibration type:
       neither GEOMETRY nor FIDUCIAL describes an uncorrected value).
    4. Else None: no spacing, measurements in pixels.
    """
    pixel = _positive_pair(dataset, "PixelSpacing")
    if pixel is not None:
        return _source_pixel_spacing(dataset, pixel)
    imager = _positive_pair(dataset, "ImagerPixelSpacing")
    if imager is None:
        return None
    factor = _magnification(dataset)
    if factor is None:
        return Spacing(imager[0], imager[1], "ImagerPixelSpacing", PLANE_DETECTOR)
    return Spacing(
        imager[0] / factor,
        imager[1] / factor,
        "ImagerPixelSpacing",
        PLANE_MAGNIFICATION_CORRECTED,
        factor,
        "GEOMETRY",
        f"Imager Pixel Spacing / Estimated Radiographic Magnification {factor:g}",
    )
