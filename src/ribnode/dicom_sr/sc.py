"""Secondary Capture of the bone-suppressed image (PS3.3 A.8.1, highdicom ``sc.SCImage``).

The SC keeps the source's matrix, bit depth and photometric interpretation, so a viewer hangs
it beside the original with the same look; every standard flag for synthetic content is set:
Synthetic Data YES, Conversion Type SYN, Source Image Sequence (121322), Derivation
Description, Contributing Equipment (109100 Synthesizing Equipment), Series Description
"AI SYNTHETIC ...".
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr.geometry import source_spacing
from ribnode.dicom_sr.label import burn_label
from ribnode.dicom_sr.provenance import (
    MANUFACTURER,
    ProcessingContext,
    contribution_description,
    declare_ihe_scheme,
    equipment_kwargs,
    model_equipment,
    pin_times,
)
from ribnode.models.info import SegmentationResult, SuppressionResult

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9901
SERIES_DESCRIPTION = "AI SYNTHETIC bone-suppressed (not original)"
#: What the suppression does, when its model json names no ``derivation`` parameter.
DEFAULT_DERIVATION = "rib and clavicle shadows attenuated inside the lung fields; not an acquired radiograph"

#: Source image for image processing operation (PS3.16 CID 7202).
PURPOSE_SOURCE_FOR_PROCESSING = hd.sr.CodedConcept("121322", "DCM", "Source image for image processing operation")


#: JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K (lossy variants).
LOSSY_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.203",
    }
)


@dataclass(frozen=True)
class ScUids:
    """Series and SOP Instance UID of the SC, and its series' description."""

    series_instance_uid: str
    sop_instance_uid: str
    series_description: str = SERIES_DESCRIPTION


def check_pixels(source: Dataset, pixels: np.ndarray) -> tuple[int, bool]:
    """Validate ``pixels`` against the source's matrix and depth; return (bits stored, signed)."""
    rows, columns = int(source.Rows), int(source.Columns)
    if pixels.shape != (rows, columns):
        raise ValueError(
            f"bone-suppressed image has shape {pixels.shape}, expected the source matrix {(rows, columns)}"
        )
    bits_stored = int(source.BitsStored)
    signed = int(source.get("PixelRepresentation", 0)) == 1
    expected = {8: (np.uint8,), 16: (np.uint16, np.int16)}.get(int(source.BitsAllocated))
    if expected is None or pixels.dtype.type not in expected:
        raise ValueError(
            f"bone-suppressed image has dtype {pixels.dtype}, expected one of {expected} for "
            f"Bits Allocated {source.BitsAllocated}"
        )
    low = -(1 << (bits_stored - 1)) if signed else 0
    high = (1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1
    if pixels.size and (int(pixels.min()) < low or int(pixels.max()) > high):
        raise ValueError(
            f"bone-suppressed values span [{pixels.min()}, {pixels.max()}], outside the "
            f"{bits_stored}-bit range [{low}, {high}] of the source"
        )
    return bits_stored, signed


def window_for(pixels: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """Window Center/Width (PS3.3 C.11.2.1.2) from the 0.5-99.5 percentiles of the output.

    Computed in Modality LUT output units (rescaled), on every 4th pixel: a robust window for
    the image actually written, not the source's window copied blindly.
    """
    sample = pixels[::4, ::4].astype(np.float64) * slope + intercept
    low, high = np.percentile(sample, [0.5, 99.5])
    width = max(float(high - low), 1.0)
    return float((low + high) / 2.0), width


def derivation_text(suppression: SuppressionResult) -> str:
    """What the suppression did, from the model's own json (``derivation``), else the default."""
    text = suppression.model.parameters.get("derivation")
    return str(text).strip() if text else DEFAULT_DERIVATION


def derivation_description(suppression: SuppressionResult) -> str:
    """Derivation Description (ST): what was done, by which model, and that it is not real."""
    model = suppression.model
    return (
        f"AI bone suppression ({model.name} v{model.version}, weights "
        f"sha256:{model.weights_sha256[:16]}, {suppression.steps} steps, seed {suppression.seed}): "
        f"{derivation_text(suppression)}"
    )[:1024]


def _source_image_item(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    item.PurposeOfReferenceCodeSequence = [PURPOSE_SOURCE_FOR_PROCESSING]
    item.SpatialLocationsPreserved = "YES"
    return item


def _copy_if_present(target: Dataset, source: Dataset, keywords: tuple[str, ...]) -> None:
    for keyword in keywords:
        if keyword in source and source[keyword].value not in (None, ""):
            setattr(target, keyword, source[keyword].value)


def _set_pixel_module(sc: Dataset, source: Dataset, bits_stored: int, signed: bool) -> None:
    """Restore the source's depth: highdicom writes Bits Stored = Bits Allocated, unsigned."""
    sc.BitsStored = bits_stored
    sc.HighBit = bits_stored - 1
    sc.PixelRepresentation = 1 if signed else 0
    if "RescaleSlope" in source or "RescaleIntercept" in source:
        # Modality LUT (PS3.3 C.11.1): stored values keep the source's meaning.
        sc.RescaleIntercept = source.get("RescaleIntercept", 0)
        sc.RescaleSlope = source.get("RescaleSlope", 1)
        sc.RescaleType = source.get("RescaleType", "US") or "US"


def _set_lossy_history(sc: Dataset, source: Dataset) -> None:
    """Lossy Image Compression (PS3.3 C.7.6.1.1.5): once lossy, derived images stay lossy."""
    file_meta = getattr(source, "file_meta", None)
    syntax = getattr(file_meta, "TransferSyntaxUID", None) if file_meta is not None else None
    lossy_syntax = syntax in LOSSY_SYNTAXES
    if source.get("LossyImageCompression") == "01" or lossy_syntax:
        sc.LossyImageCompression = "01"
        _copy_if_present(sc, source, ("LossyImageCompressionRatio", "LossyImageCompressionMethod"))
    else:
        sc.LossyImageCompression = "00"


def _set_spacing(sc: Dataset, source: Dataset) -> None:
    """Pixel Spacing and the Basic Pixel Spacing Calibration macro (PS3.3 10.7) of the SC.

    The SC is pixel-aligned with the source, so its spacing is the source's, in the plane
    ``geometry.source_spacing`` chose: the source's calibrated Pixel Spacing (its calibration
    type and description copied), Imager Pixel Spacing corrected by the Estimated Radiographic
    Magnification Factor (GEOMETRY), or Imager Pixel Spacing at the detector plane (no type,
    which neither GEOMETRY nor FIDUCIAL describes, and so no description either: the macro allows
    it only with a type). Image Comments states the plane in every case. No spacing: no Pixel
    Spacing.
    """
    spacing = source_spacing(source)
    if spacing is None:
        return
    sc.PixelSpacing = [
        pydicom.valuerep.DSfloat(spacing.row_mm, auto_format=True),
        pydicom.valuerep.DSfloat(spacing.col_mm, auto_format=True),
    ]
    if spacing.calibration_type is not None:
        sc.PixelSpacingCalibrationType = spacing.calibration_type
        if spacing.calibration_description:
            sc.PixelSpacingCalibrationDescription = spacing.calibration_description[:64]
    sc.ImageComments = f"Pixel Spacing: {spacing.plane_description}"


def burned_in_annotation(source: Dataset, settings: OutputSettings) -> str:
    """YES when the label is burned in, or when the source's pixels (copied outside the lung
    fields) already carry burned-in annotation; NO otherwise (General Image module, PS3.3 C.7.6.1)."""
    source_has = str(source.get("BurnedInAnnotation", "") or "").upper() == "YES"
    return "YES" if settings.burned_in_label or source_has else "NO"


def _sc_equipment(
    suppression: SuppressionResult,
    segmentation: SegmentationResult,
    context: ProcessingContext,
) -> list[hd.ContributingEquipment]:
    """The suppression model synthesized the image: DICOM's Synthesizing Equipment (109100)
    and, as for every algorithm, IHE AIR's Processing Algorithm; the segmentation bounded it."""
    description = contribution_description(
        suppression.model,
        seed=suppression.seed,
        steps=suppression.steps,
        working_size=suppression.working_size,
    )
    synthesizing = model_equipment(suppression.model, "synthesizing", context, description)
    algorithm = model_equipment(suppression.model, "algorithm", context, description)
    segmentation_item = model_equipment(
        segmentation.model,
        "algorithm",
        context,
        contribution_description(segmentation.model) + "; anatomy that bounds the suppression",
    )
    return [synthesizing, algorithm, segmentation_item]


def _sc_pixels(
    source: Dataset,
    suppression: SuppressionResult,
    settings: OutputSettings,
) -> tuple[np.ndarray, int, bool, tuple[float, float]]:
    """Pixels to write (label burned in if asked), bits stored, signedness and the output's own
    window (used only when ``outputs.sc_window`` is "own" or the source has none)."""
    bits_stored, signed = check_pixels(source, suppression.soft_stored)
    photometric = str(source.PhotometricInterpretation)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"source photometric {photometric!r}, expected MONOCHROME1/2")
    pixels = suppression.soft_stored
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    window = window_for(pixels, slope, intercept)  # before the label: the image's own window
    if settings.burned_in_label:
        pixels = burn_label(pixels, photometric, bits_stored, signed)
    # highdicom encodes unsigned words; a signed source is written bit for bit and
    # Pixel Representation restored afterwards.
    unsigned = pixels.view(np.uint16) if pixels.dtype == np.int16 else pixels
    return unsigned, bits_stored, signed, window


def build_sc(
    source: Dataset,
    suppression: SuppressionResult,
    segmentation: SegmentationResult,
    settings: OutputSettings,
    context: ProcessingContext,
    uids: ScUids,
) -> hd.sc.SCImage:
    """The bone-suppressed Secondary Capture, on the source matrix with the source's depth."""
    pixels, bits_stored, signed, (center, width) = _sc_pixels(source, suppression, settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        sc = _sc_image(source, pixels, suppression, segmentation, context, uids)
    for warning in caught:
        # highdicom questions the *source's* values (e.g. a one-component person name); they
        # are copied as received, so this is logged with the source UID, not a Python warning.
        logger.info("source %s: %s", source.SOPInstanceUID, warning.message)
    _finish_sc(sc, source, suppression, settings, context, bits_stored, signed)
    _set_window(sc, source, settings, center, width)
    return sc


#: VOI LUT module attributes (PS3.3 C.11.2) copied from the source by default.
_SOURCE_VOI = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction", "VOILUTSequence")


def _set_window(
    sc: Dataset,
    source: Dataset,
    settings: OutputSettings,
    center: float,
    width: float,
) -> None:
    """The source's own window by default, so that beside the original the only difference a
    reader sees is the suppression; the output's own window when ``outputs.sc_window`` is
    "own", or when the source has none."""
    if settings.sc_window == "source" and ("WindowCenter" in source or "VOILUTSequence" in source):
        for keyword in _SOURCE_VOI:
            if keyword in source:
                sc[keyword] = source[keyword]
        return
    sc.WindowCenter = pydicom.valuerep.DSfloat(center, auto_format=True)
    sc.WindowWidth = pydicom.valuerep.DSfloat(width, auto_format=True)
    sc.WindowCenterWidthExplanation = "ribnode: 0.5-99.5 percentile of the output"


def _sc_image(
    source: Dataset,
    pixels: np.ndarray,
    suppression: SuppressionResult,
    segmentation: SegmentationResult,
    context: ProcessingContext,
    uids: ScUids,
) -> hd.sc.SCImage:
    """highdicom's SCImage with the source's patient and study, ribnode's equipment."""
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=str(source.PhotometricInterpretation),
        bits_allocated=int(source.BitsAllocated),
        coordinate_system="PATIENT",
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        patient_orientation=("L", "F"),  # replaced by the source's own value in _finish_sc
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        contributing_equipment=_sc_equipment(suppression, segmentation, context),
        series_description=uids.series_description,
        **equipment_kwargs(context),
    )


def _finish_sc(
    sc: hd.sc.SCImage,
    source: Dataset,
    suppression: SuppressionResult,
    settings: OutputSettings,
    context: ProcessingContext,
    bits_stored: int,
    signed: bool,
) -> None:
    """Set what highdicom's constructor does not: synthetic flags, references, geometry."""
    # Patient and Study modules in full (Study Description, Patient's Age, ...):
    # ``from_ref_dataset`` copies only the attributes its constructor takes.
    sc.copy_patient_and_study_information(source)
    _set_pixel_module(sc, source, bits_stored, signed)
    sc.SyntheticData = "YES"
    sc.ConversionType = "SYN"
    sc.SecondaryCaptureDeviceManufacturer = MANUFACTURER
    sc.SecondaryCaptureDeviceManufacturerModelName = suppression.model.name[:64]
    sc.SecondaryCaptureDeviceSoftwareVersions = [suppression.model.version[:64], context.software_version]
    sc.DateOfSecondaryCapture = pydicom.valuerep.DA(context.created.date())
    sc.TimeOfSecondaryCapture = pydicom.valuerep.TM(context.created.time().replace(tzinfo=None))
    sc.SourceImageSequence = [_source_image_item(source)]
    sc.DerivationDescription = derivation_description(suppression)
    sc.BurnedInAnnotation = burned_in_annotation(source, settings)
    # Type 2: the source's value, or present and empty when the source has none.
    sc["PatientOrientation"].value = source.get("PatientOrientation") or None
    _copy_if_present(sc, source, ("BodyPartExamined", "Laterality", "ImageLaterality"))
    _set_spacing(sc, source)
    _set_lossy_history(sc, source)
    declare_ihe_scheme(sc)
    pin_times(sc, context.created)
