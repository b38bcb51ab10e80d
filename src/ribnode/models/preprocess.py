"""From a DICOM (or PNG) chest radiograph to model input, and from model output back.

Torch-free on purpose: numpy, pydicom (+ pylibjpeg, pyjpegls decoders), Pillow and SimpleITK
only, so the node and dicom_sr may import it.

Conventions (see ``docs/preprocessing.md``):

* ``Radiograph.image`` is bone-bright float32 in [0, 1], on the source Rows x Columns, and
  *linear* in the stored values: ``v = stored * slope + intercept`` (Modality LUT, PS3.3
  C.11.1), ``image = clip((v - lo) / (hi - lo), 0, 1)``, and ``1 - that`` for MONOCHROME1.
  ``lo``/``hi`` come from a robust window (0.5 and 99.5 percentiles). VOI LUT and Window
  Center/Width (PS3.3 C.11.2) are *display* transforms; they are only a fall-back hint here,
  because the suppression subtracts a layer in the stored domain and needs an invertible map.
* Working resolution: ``to_working`` / ``to_source`` resample so that both matrices cover the
  same extent ``[-0.5, N - 0.5]`` (pixel centres at integer coordinates): pixel centres map
  exactly, with no half-pixel shift. Shrinking is anti-aliased (triangle filter as wide as the
  scale factor). Pillow does the resampling (measured ~10x faster than SimpleITK at the same
  accuracy, ``benchmarks/resample.py``); SimpleITK does the mask morphology.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

if TYPE_CHECKING:
    import SimpleITK as sitk  # imported where used: keeps ``import preprocess`` light for node

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MIN_SIDE",
    "DecodeError",
    "ImageSizeError",
    "InputError",
    "MultiFrameError",
    "NotGrayscaleError",
    "Radiograph",
    "clean_mask",
    "dilate_mask",
    "read_png",
    "read_radiograph",
    "robust_window",
    "to_source",
    "to_working",
]

DEFAULT_MAX_PIXELS = 8192 * 8192
MIN_SIDE = 64  # pixels: nothing smaller can be a chest radiograph
WINDOW_PERCENTILES = (0.5, 99.5)
_WINDOW_SAMPLES = 512 * 512  # pixels the robust window looks at (strided sub-sample)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class InputError(ValueError):
    """The input cannot be a chest radiograph this node can process."""


class NotGrayscaleError(InputError):
    """Colour image: Samples per Pixel is not 1 or the photometric is not MONOCHROME1/2."""


class MultiFrameError(InputError):
    """Number of Frames > 1: a radiograph is one frame."""


class ImageSizeError(InputError):
    """Fewer than 64 pixels on a side, or more pixels than the configured limit."""


class DecodeError(InputError):
    """The pixel data is missing, malformed or in a transfer syntax no decoder handles."""


class NotAChestError(InputError):
    """The lung fields the segmentation finds are not those of a frontal chest radiograph."""


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph: stored pixels plus the linear map to bone-bright [0, 1].

    ``image = clip((stored * rescale_slope + rescale_intercept - lo) / (hi - lo), 0, 1)``,
    inverted (``1 - x``) for MONOCHROME1.
    """

    image: np.ndarray  # float32 bone-bright [0, 1], Rows x Columns
    stored: np.ndarray  # stored pixel values as decoded (source dtype), Rows x Columns
    photometric: str  # "MONOCHROME1" | "MONOCHROME2"
    bits_stored: int
    lo: float
    hi: float
    spacing_mm: tuple[float, float] | None  # (row, col) mm
    spacing_source: str | None  # "PixelSpacing" | "ImagerPixelSpacing" | None
    sop_instance_uid: str | None
    transfer_syntax: str | None
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    signed: bool = False  # Pixel Representation 1 (two's complement)
    window: tuple[float, float] | None = None  # first (center, width) of the source, a hint

    @property
    def shape(self) -> tuple[int, int]:
        """(Rows, Columns) of the source matrix."""
        return (int(self.stored.shape[0]), int(self.stored.shape[1]))

    @property
    def stored_range(self) -> tuple[int, int]:
        """Smallest and largest value representable with ``bits_stored`` (PS3.5 8.1.1)."""
        if self.signed:
            return (-(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1)
        return (0, (1 << self.bits_stored) - 1)

    def subtract_layer(self, layer: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Stored-domain result of (radiograph - layer) where ``region`` is True.

        ``layer`` is float in bone-bright [0, 1] units (the units of ``image``) on the source
        matrix. The subtraction is done on the unclipped linear scale, so it is exact and
        invertible up to rounding: one unit of ``image`` is ``(hi - lo) / slope`` stored
        units, with the sign flipped for MONOCHROME1 (bone is dark there). The result is
        rounded, clipped to the ``bits_stored`` range and cast to the stored dtype; outside
        ``region`` it is exactly ``stored``.
        """
        layer = np.asarray(layer)
        region = np.asarray(region, dtype=bool)
        if layer.shape != self.stored.shape or region.shape != self.stored.shape:
            raise ValueError(
                f"layer {layer.shape} and region {region.shape} must both have the source shape {self.stored.shape}"
            )
        if not np.all(np.isfinite(layer[region])):
            raise ValueError("layer has non-finite values inside region")
        sign = 1.0 if self.photometric == "MONOCHROME1" else -1.0
        scale = (self.hi - self.lo) / self.rescale_slope
        result = self.stored.copy()
        changed = self.stored[region].astype(np.float64) + sign * scale * layer[region]
        low, high = self.stored_range
        result[region] = np.clip(np.rint(changed), low, high).astype(self.stored.dtype)
        return result


def _side(ds: Dataset, keyword: str) -> int:
    value = ds.get(keyword)
    if value is None:
        raise ImageSizeError(f"{keyword} is missing: expected the matrix size of a radiograph")
    return int(value)


def _check_header(ds: Dataset, max_pixels: int) -> None:
    """Reject what cannot be a single-frame grayscale radiograph, before any pixel decoding."""
    if "PixelData" not in ds:  # SR, KO, presentation states, float/double pixel data...
        raise DecodeError("no Pixel Data (7FE0,0010) in the dataset: not an image")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if samples != 1 or photometric not in _MONOCHROME:
        raise NotGrayscaleError(
            f"SamplesPerPixel {samples}, PhotometricInterpretation {photometric or 'absent'}: "
            "expected 1 sample, MONOCHROME1 or MONOCHROME2"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise MultiFrameError(f"NumberOfFrames {frames}: expected a single-frame radiograph")
    rows, cols = _side(ds, "Rows"), _side(ds, "Columns")
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise ImageSizeError(f"matrix {rows}x{cols}: expected at least {MIN_SIDE} px a side")
    if rows * cols > max_pixels:
        raise ImageSizeError(f"matrix {rows}x{cols} = {rows * cols} px: over the limit of {max_pixels} px")
    bits = int(ds.get("BitsStored", 0) or 0)
    allocated = int(ds.get("BitsAllocated", 0) or 0)
    if not 8 <= bits <= 16 or allocated not in (8, 16) or bits > allocated:
        raise InputError(
            f"BitsStored {bits} / BitsAllocated {allocated}: expected 8..16 bits stored in 8 or 16 allocated"
        )


def _decode(ds: Dataset) -> np.ndarray:
    """Decode the one frame with pydicom's pixel handlers (pylibjpeg, pyjpegls, RLE, native)."""
    try:
        if _transfer_syntax(ds) is None:
            ds = _with_native_transfer_syntax(ds)
        array = ds.pixel_array
    except InputError:
        raise
    except Exception as exc:  # decoders raise many types; translate them into one typed error
        syntax = _transfer_syntax(ds)
        raise DecodeError(f"cannot decode pixel data (transfer syntax {syntax}): {exc}") from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    if array.shape != (rows, cols):
        raise DecodeError(f"decoded shape {array.shape}, expected Rows x Columns {rows}x{cols}")
    return array


def _with_native_transfer_syntax(ds: Dataset) -> Dataset:
    """A shallow copy of an in-memory dataset (no File Meta) with the syntax it was built in.

    Only native (unencapsulated) Pixel Data can be decoded this way; the caller's dataset is
    left untouched.
    """
    if ds["PixelData"].is_undefined_length:
        raise DecodeError("encapsulated Pixel Data without a Transfer Syntax UID in File Meta")
    out = copy.copy(ds)
    meta = FileMetaDataset()
    if getattr(ds, "file_meta", None) is not None:
        meta.update(ds.file_meta)
    # In-memory datasets hold native little-endian bytes (numpy on every supported host).
    meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
    out.file_meta = meta
    return out


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return str(value) if value else None


def _positive_pair(value: Any) -> tuple[float, float] | None:
    """Two positive finite numbers from a DS pair, else None (zero/missing/malformed)."""
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(pair) != 2 or not all(math.isfinite(v) and v > 0 for v in pair):
        return None
    return (pair[0], pair[1])


def _spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """Pixel Spacing (calibrated, PS3.3 10.7.1.3) first, else Imager Pixel Spacing (detector)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        pair = _positive_pair(ds.get(keyword))
        if pair is not None:
            return pair, keyword
    return None, None


def _number(ds: Dataset, keyword: str, default: float) -> float:
    """A single numeric attribute; ``default`` when absent or empty (Type 2/3 attributes)."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{keyword} {value!r}: expected a single number") from None


def _rescale(ds: Dataset) -> tuple[float, float]:
    """Rescale Slope/Intercept (PS3.3 C.11.1.1.2): the linear Modality LUT."""
    slope = _number(ds, "RescaleSlope", 1.0)
    intercept = _number(ds, "RescaleIntercept", 0.0)
    if not math.isfinite(slope) or slope == 0 or not math.isfinite(intercept):
        raise InputError(f"RescaleSlope {slope}, RescaleIntercept {intercept}: expected finite, slope != 0")
    if "ModalityLUTSequence" in ds:
        logger.warning("Modality LUT Sequence ignored: ribnode keeps the input linear in stored values")
    return slope, intercept


def _window_hint(ds: Dataset) -> tuple[float, float] | None:
    """First Window Center/Width pair (PS3.3 C.11.2.1.2), only a hint for degenerate images."""
    try:
        center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if center is None or width is None:
            return None
        c = float(center[0] if isinstance(center, MultiValue) else center)
        w = float(width[0] if isinstance(width, MultiValue) else width)
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(c) and math.isfinite(w) and w > 0):
        return None
    return (c, w)


def robust_window(values: np.ndarray, fallback: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(lo, hi)``: the 0.5 and 99.5 percentiles of ``values`` (a strided sub-sample).

    Pixels at exactly the image minimum or maximum are left out when other values remain:
    they are padding, collimator fill or detector saturation, not anatomy. If the window is
    degenerate (a constant image), ``fallback`` (a Window Center/Width) is used, else a unit
    window around the value.
    """
    values = np.asarray(values)
    step = max(1, math.ceil(math.sqrt(values.size / _WINDOW_SAMPLES)))
    sample = (
        values[::step, ::step].astype(np.float64).ravel() if values.ndim == 2 else values.astype(np.float64).ravel()
    )
    vmin, vmax = float(sample.min()), float(sample.max())
    inner = sample[(sample > vmin) & (sample < vmax)]
    if inner.size >= 0.05 * sample.size:
        sample = inner
    lo, hi = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    if hi > lo:
        return lo, hi
    if fallback is not None:
        center, width = fallback
        return center - width / 2.0, center + width / 2.0
    return lo - 0.5, lo + 0.5


def _to_image(modality: np.ndarray, lo: float, hi: float, photometric: str) -> np.ndarray:
    image = (modality - lo) / (hi - lo)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def read_radiograph(source: Dataset | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Radiograph:
    """Decode a DICOM radiograph (any transfer syntax pydicom + pylibjpeg/pyjpegls handle).

    The header is checked (grayscale, single frame, size limits, bits) *before* the pixel data
    is read, so an oversized image costs no memory. Raises an ``InputError`` subclass.
    """
    ds = _open(source)
    _check_header(ds, max_pixels)
    stored = _decode(ds)
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    slope, intercept = _rescale(ds)
    modality = stored.astype(np.float64) * slope + intercept
    window = _window_hint(ds)
    lo, hi = robust_window(modality, fallback=window)
    spacing, spacing_source = _spacing(ds)
    uid = ds.get("SOPInstanceUID")
    logger.debug("decoded %s %s %s window [%g, %g]", uid, stored.shape, photometric, lo, hi)
    return Radiograph(
        image=_to_image(modality, lo, hi, photometric),
        stored=stored,
        photometric=photometric,
        bits_stored=int(ds.BitsStored),
        lo=lo,
        hi=hi,
        spacing_mm=spacing,
        spacing_source=spacing_source,
        sop_instance_uid=str(uid) if uid else None,
        transfer_syntax=_transfer_syntax(ds),
        rescale_slope=slope,
        rescale_intercept=intercept,
        signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
        window=window,
    )


def _open(source: Dataset | str | Path) -> Dataset:
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    try:
        # Large elements (Pixel Data) are read only when decoded, after the header checks.
        return pydicom.dcmread(path, defer_size="1 MB")
    except InvalidDicomError as exc:
        raise DecodeError(f"{path} is not a DICOM file: {exc}") from exc
    except (OSError, ValueError, EOFError) as exc:
        raise DecodeError(f"{path} cannot be parsed as DICOM: {exc}") from exc


def read_png(path: str | Path) -> Radiograph:
    """An 8- or 16-bit grayscale PNG, already bone-bright (display convention).

    PNGs are display-rendered, so the full dtype range is the window (``lo = 0``,
    ``hi = 255`` or ``65535``): ``image = stored / max``. RGB(A)/palette images are accepted
    only if their colour channels are identical.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            stored = _png_gray(img, path)
    except (OSError, SyntaxError) as exc:
        raise DecodeError(f"{path} cannot be read as an image: {exc}") from exc
    rows, cols = stored.shape
    if rows < MIN_SIDE or cols < MIN_SIDE:
        raise ImageSizeError(f"{path}: {rows}x{cols}, expected at least {MIN_SIDE} px a side")
    bits = 8 if stored.dtype == np.uint8 else 16
    hi = float((1 << bits) - 1)
    return Radiograph(
        image=(stored.astype(np.float32) / np.float32(hi)),
        stored=stored,
        photometric="MONOCHROME2",
        bits_stored=bits,
        lo=0.0,
        hi=hi,
        spacing_mm=None,
        spacing_source=None,
        sop_instance_uid=None,
        transfer_syntax=None,
    )


def _png_gray(img: Any, path: Path) -> np.ndarray:
    """The grayscale plane of a PIL image as uint8 or uint16."""
    if getattr(img, "n_frames", 1) > 1:
        raise MultiFrameError(f"{path}: {img.n_frames} frames, expected one")
    mode = img.mode
    if mode in ("L", "LA"):
        return np.asarray(img.getchannel(0), dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        array = np.asarray(img)
        if array.min() < 0 or array.max() > 65535:
            raise InputError(f"{path}: mode {mode} values outside 0..65535")
        return array.astype(np.uint16)
    if mode in ("RGB", "RGBA", "P", "PA"):
        rgb = np.asarray(img.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].copy()
        raise NotGrayscaleError(f"{path}: colour PNG (mode {mode}), expected grayscale")
    raise NotGrayscaleError(f"{path}: PNG mode {mode}, expected 8- or 16-bit grayscale")


# -- Resampling between the source matrix and the working resolution ------------------------


def _resample(image: np.ndarray, shape: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resample a 2-D array onto ``shape`` covering the same extent (pixel-centre aligned).

    Source pixel (r, c) has its centre at (r, c); output pixel (i, j) at
    ``((i + 0.5) * sy - 0.5, (j + 0.5) * sx - 0.5)`` with ``s = source / output`` per axis, so
    both matrices span ``[-0.5, N - 0.5]`` and no half-pixel shift occurs. Pillow's resampler
    has exactly this geometry; its "linear" filter widens to the scale factor when shrinking,
    a triangle (area) anti-alias. Pillow, not SimpleITK, because it is ~10x faster at equal
    accuracy (``benchmarks/resample.py``, ``docs/preprocessing.md``).
    """
    from PIL import Image

    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation {interpolation!r}: expected 'linear' or 'nearest'")
    array = np.asarray(image)
    if array.ndim != 2 or min(array.shape) < 1:
        raise ValueError(f"image of shape {array.shape}: expected a non-empty 2-D array")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"target shape {shape}: expected positive sizes")
    if interpolation == "nearest":
        if array.shape == (rows, cols):
            return array.copy()
        plane = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))  # float32 -> mode F
        out = plane.resize((cols, rows), Image.Resampling.NEAREST)
        return np.asarray(out).astype(array.dtype)
    if array.shape == (rows, cols):
        return array.astype(np.float32, copy=True)
    plane = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))  # float32 -> mode F
    return np.asarray(plane.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)


def to_working(image: np.ndarray, size: int) -> np.ndarray:
    """Source matrix -> ``size`` x ``size`` float32 (anti-aliased linear, pixel-centre aligned).

    A non-square source is stretched to the square (each axis scaled independently), so
    ``to_source`` needs only the source shape to invert the geometry.
    """
    if int(size) < 1:
        raise ValueError(f"working size {size}: expected a positive integer")
    return _resample(image, (int(size), int(size)), "linear").astype(np.float32, copy=False)


def to_source(working: np.ndarray, shape: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """Working matrix -> the source ``shape`` with the exact inverse geometry of ``to_working``.

    ``"linear"`` returns float32 (map probabilities back, then threshold: the smoothest mask
    edge); ``"nearest"`` keeps the dtype of ``working`` (labels, bool masks).
    """
    array = np.asarray(working)
    if interpolation == "nearest" and array.dtype == bool:
        return _resample(array.astype(np.uint8), shape, "nearest").astype(bool)
    out = _resample(array, shape, interpolation)
    return out.astype(np.float32, copy=False) if interpolation == "linear" else out


# -- Mask morphology (SimpleITK) -------------------------------------------------------------


def _mask_image(mask: np.ndarray) -> sitk.Image:
    import SimpleITK as sitk

    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask of shape {array.shape}: expected 2-D")
    return sitk.GetImageFromArray(array.astype(np.uint8))


def dilate_mask(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """Binary dilation by a disc of ``radius_px`` pixels (SimpleITK, ball structuring element)."""
    import SimpleITK as sitk

    radius = int(radius_px)
    if radius < 0:
        raise ValueError(f"radius_px {radius_px}: expected >= 0")
    if radius == 0:
        return np.asarray(mask, dtype=bool).copy()
    out = sitk.BinaryDilate(_mask_image(mask), [radius, radius], sitk.sitkBall, 0.0, 1.0)
    return sitk.GetArrayFromImage(out).astype(bool)


def clean_mask(mask: np.ndarray, open_radius_px: int = 1, min_size_px: int = 30, fill_holes: bool = True) -> np.ndarray:
    """Open (disc ``open_radius_px``), drop islands under ``min_size_px``, fill holes.

    The same steps as the reference rib-mask derivation (``shared/tools/derive_rib_masks.py``),
    done with SimpleITK.
    """
    import SimpleITK as sitk

    image = _mask_image(mask)
    if open_radius_px > 0:
        r = int(open_radius_px)
        image = sitk.BinaryMorphologicalOpening(image, [r, r], sitk.sitkBall, 0.0, 1.0)
    if min_size_px > 1:
        labels = sitk.ConnectedComponent(image, True)
        labels = sitk.RelabelComponent(labels, int(min_size_px))
        image = sitk.Cast(labels > 0, sitk.sitkUInt8)
    if fill_holes:
        image = sitk.BinaryFillhole(image, True, 1.0)
    return sitk.GetArrayFromImage(image).astype(bool)
