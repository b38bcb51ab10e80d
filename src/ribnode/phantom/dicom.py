"""Write a synthetic chest as a DICOM DX study (Digital X-Ray Image Storage - For Presentation).

PS3.3 A.26 (DX IOD) with the modules of a real PA chest: Patient, General Study, General
Series, DX Series, General Equipment, General Image, Image Pixel, DX Anatomy Imaged, DX Image,
DX Detector, DX Positioning, VOI LUT, Acquisition Context, SOP Common. UIDs are deterministic
by seed (``2.25.`` + a name-based UUID of the seed), so the same seed gives the same study.
Stored values are linear in the bone-bright image:
``stored = round(image * (2**bits - 1))``, inverted for MONOCHROME1.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from ribnode.phantom.generator import SyntheticChest

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MANUFACTURER = "ribnode synthetic phantom"
_MAGNIFICATION = 1.1  # source-to-detector / source-to-patient of a 180 cm PA chest
# Study dates are fixed per seed so that files are byte-identical for one seed.
_EPOCH = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)


def synthetic_uid(seed: int, kind: str) -> str:
    """A deterministic UID for one seed and one kind ("study", "series", "instance", ...).

    ``2.25.`` + a name-based (SHA-1, version 5) UUID as an integer (PS3.5 B.2).
    """
    name = f"ribnode-synthetic:{seed}:{kind}"
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def _stored(image: np.ndarray, photometric: str, bits_stored: int) -> np.ndarray:
    top = (1 << bits_stored) - 1
    values = np.clip(image, 0.0, 1.0)
    if photometric == "MONOCHROME1":
        values = 1.0 - values
    return np.rint(values * top).astype(np.uint16)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _patient_study_series(ds: Dataset, seed: int, when: datetime) -> None:
    ds.PatientName = f"SYNTHETIC^CHEST^{seed}"
    ds.PatientID = f"SYN{seed:08d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = synthetic_uid(seed, "study")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.AccessionNumber = f"SYNACC{seed:06d}"[:16]
    ds.ReferringPhysicianName = ""
    ds.StudyID = f"{seed % 10**8}"
    ds.StudyDescription = "XR CHEST PA (synthetic phantom)"
    ds.Modality = "DX"
    ds.SeriesInstanceUID = synthetic_uid(seed, "series")
    ds.SeriesNumber = 1
    ds.SeriesDescription = "CHEST PA"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BodyPartExamined = "CHEST"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "ribnode.phantom"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "ribnode synthetic"


def _image_pixel(ds: Dataset, stored: np.ndarray, photometric: str, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    # DX Image module (PS3.3 C.8.11.3): linear log-exposure values, identity modality LUT.
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME1" else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    low, high = np.percentile(stored, [1.0, 99.0])
    ds.WindowCenter = f"{(low + high) / 2.0:.1f}"
    ds.WindowWidth = f"{max(high - low, 1.0):.1f}"
    ds.WindowCenterWidthExplanation = "percentile 1-99"


def _acquisition(ds: Dataset, chest: SyntheticChest, pixel_spacing: bool) -> None:
    spacing = f"{chest.pixel_spacing_mm:.6f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    if pixel_spacing:
        calibrated = f"{chest.pixel_spacing_mm / _MAGNIFICATION:.6f}"
        ds.PixelSpacing = [calibrated, calibrated]
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "nominal magnification 1.1"
    ds.EstimatedRadiographicMagnificationFactor = f"{_MAGNIFICATION}"
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = f"{1800 / _MAGNIFICATION:.1f}"
    ds.KVP = "120"
    ds.ExposureTime = 8
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.ViewPosition = "PA"
    # PS3.3 C.7.6.1.1.1: a PA chest as viewed, columns run to the patient's left, rows to the feet
    ds.PatientOrientation = ["L", "F"]
    ds.PositionerType = "COLUMN"
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Chest")])
    ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
    ds.AcquisitionContextSequence = Sequence()
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.DerivationDescription = "Synthetic: Beer-Lambert projection of a procedural thorax"


def build_dataset(
    chest: SyntheticChest,
    seed: int,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_spacing: bool = False,
) -> Dataset:
    """The DX For Presentation dataset of one synthetic chest (native little endian)."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric {photometric!r}: expected MONOCHROME1 or MONOCHROME2")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored {bits_stored}: expected 8..16 (in 16 allocated)")
    when = _EPOCH.replace(minute=seed % 60, second=(seed // 60) % 60)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = synthetic_uid(seed, f"instance-{photometric}-{bits_stored}")
    ds.InstanceCreationDate, ds.InstanceCreationTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    _patient_study_series(ds, seed, when)
    ds.InstanceNumber = 1
    ds.SyntheticData = "YES"  # (0008,001C): not an acquired image of a patient
    _acquisition(ds, chest, pixel_spacing)
    _image_pixel(ds, _stored(chest.radiograph, photometric, bits_stored), photometric, bits_stored)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = dicom_uid.PYDICOM_IMPLEMENTATION_UID
    return ds


def write_dicom_study(
    chest: SyntheticChest,
    out_dir: Path,
    seed: int,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    pixel_spacing: bool = False,
    transfer_syntax: str = dicom_uid.ExplicitVRLittleEndian,
) -> list[Path]:
    """Write the study (one DX instance) under ``out_dir``; returns the files written.

    ``transfer_syntax`` may be any syntax pydicom can encode (RLE Lossless, JPEG-LS, JPEG 2000).
    """
    ds = build_dataset(chest, seed, photometric, bits_stored, pixel_spacing)
    if transfer_syntax != dicom_uid.ExplicitVRLittleEndian:
        ds.compress(transfer_syntax)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"synthetic-chest-{seed:05d}.dcm"
    ds.save_as(path, enforce_file_format=True)
    logger.info("wrote %s (%s, %d bits, %s)", path, photometric, bits_stored, transfer_syntax)
    return [path]
