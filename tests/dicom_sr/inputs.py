"""Inputs for the dicom_sr tests, made without the models.

Sources: the real RG1 CR chest of pydicom-data (MONOCHROME1, 15 bits, 1955x1841) and small
synthetic DX images written with pydicom (MONOCHROME2, 12 bits). Masks and bone-suppressed
images are made with numpy: the suppressed image is the source with a known change inside the
mask, so every test knows exactly what the objects must contain.
"""

from __future__ import annotations

import datetime

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult

SEG_MODEL = ModelInfo("ribnode rib-segmentation", "1.0.0", "a1" * 32, {"threshold": 0.5})
SUP_MODEL = ModelInfo("ribnode rib-suppression", "1.0.0", "b2" * 32, {"schedule": "ddim"})
CREATED = datetime.datetime(2026, 11, 21, 1, 2, 3, tzinfo=datetime.UTC)


def synthetic_dx(
    rows: int = 200,
    columns: int = 160,
    spacing: str = "imager",
    seed: int = 0,
    synthetic: bool = False,
) -> Dataset:
    """A small DX For Presentation image: MONOCHROME2, 12 bits stored in 16.

    ``spacing``: "imager" (Imager Pixel Spacing 0.2 only), "zero" (Imager Pixel Spacing 0\\0),
    "pixel" (Pixel Spacing 0.15 and Imager Pixel Spacing 0.2), "none".
    """
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["dx", str(seed), spacing])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(seed)])
    ds.PatientName, ds.PatientID = "Test^Ribnode", "RN-0001"
    ds.PatientBirthDate, ds.PatientSex = "19700101", "M"
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "101010", "1", "A1"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.Modality, ds.Manufacturer = "DX", "Test"
    ds.SeriesNumber, ds.InstanceNumber = 1, 3
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    if spacing == "imager":
        ds.ImagerPixelSpacing = [0.2, 0.2]
    elif spacing == "zero":
        ds.ImagerPixelSpacing = [0, 0]
    elif spacing == "pixel":
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.PixelSpacing = [0.15, 0.15]
    if synthetic:
        ds.SyntheticData = "YES"
    pixels = rng.integers(600, 3500, size=(rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def rib_mask(rows: int, columns: int) -> np.ndarray:
    """Three oblique bands, rib-like, clear of the corners (where the label goes)."""
    r, c = np.mgrid[0:rows, 0:columns]
    mask = np.zeros((rows, columns), dtype=bool)
    for k in range(3):
        centre = rows * (0.35 + 0.18 * k) + 0.25 * (c - columns / 2)
        mask |= np.abs(r - centre) < rows * 0.03
    mask[:, : columns // 8] = False
    return mask


def clavicle_mask(rows: int, columns: int) -> np.ndarray:
    """Two short oblique bands near the top, one each side (they overlap the ribs' region)."""
    r, c = np.mgrid[0:rows, 0:columns]
    mask = np.zeros((rows, columns), dtype=bool)
    for side in (-1, 1):
        centre = rows * 0.2 - side * 0.15 * (c - columns / 2)
        half = (c - columns / 2) * side
        mask |= (np.abs(r - centre) < rows * 0.025) & (half > columns * 0.05) & (half < columns * 0.4)
    return mask


def lung_mask(rows: int, columns: int) -> np.ndarray:
    """Two ellipses, the lung fields (the retrocardiac shadow included: they meet in the middle)."""
    r, c = np.mgrid[0:rows, 0:columns]
    mask = np.zeros((rows, columns), dtype=bool)
    for centre in (columns * 0.3, columns * 0.7):
        mask |= ((r - rows * 0.55) / (rows * 0.38)) ** 2 + ((c - centre) / (columns * 0.24)) ** 2 < 1
    return mask


def model_inputs(
    source: Dataset,
    change: int = 200,
    seed: int = 42,
    seg_model: ModelInfo = SEG_MODEL,
    sup_model: ModelInfo = SUP_MODEL,
    structures: tuple[str, ...] = ("ribs", "clavicles", "lungs"),
    steps: int = 4,
) -> tuple[SegmentationResult, SuppressionResult]:
    """Segmentation and suppression results: bone-bright values lowered by ``change`` in the
    rib mask. ``structures``: the masks the segmentation result carries (all three by default;
    ``()`` for a model that gives the ribs only, through ``mask``)."""
    stored = source.pixel_array
    mask = rib_mask(*stored.shape)
    sign = 1 if source.PhotometricInterpretation == "MONOCHROME1" else -1
    high = (1 << int(source.BitsStored)) - 1
    soft = stored.astype(np.int64)
    soft[mask] = np.clip(soft[mask] + sign * change, 0, high)
    soft_stored = soft.astype(stored.dtype)
    bone = np.zeros(stored.shape, dtype=np.float32)
    bone[mask] = change / high
    shapes = {"ribs": mask, "clavicles": clavicle_mask(*stored.shape), "lungs": lung_mask(*stored.shape)}
    segmentation = SegmentationResult(
        mask, mask.astype(np.float32), seg_model, {name: shapes[name] for name in structures}
    )
    suppression = SuppressionResult(soft_stored, bone, mask, seed, steps, 512, sup_model)
    return segmentation, suppression


def read_rg1(path: str) -> Dataset:
    """An RG1 file, read fully (pixel data decoded later, on access)."""
    return pydicom.dcmread(path)
