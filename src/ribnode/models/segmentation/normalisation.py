"""Per-image intensity normalisation and working-size resampling shared by training and inference.

Torch-free (numpy and SimpleITK only): the ONNX Runtime segmenter imports it, and training
calls the very same functions, so JSRT PNGs, a Philips CR and a synthetic DX all reach the
network on one scale.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Recorded in the weights' JSON config; ``normalise`` implements exactly this.
NORMALISATION = {"kind": "percentile-window", "low_percentile": 1.0, "high_percentile": 99.0}


def normalise(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Window a bone-bright image to [0, 1] between its ``low`` and ``high`` percentiles.

    Why: radiographs from different detectors differ in gain, offset and the fraction of the
    matrix that is collimator or air; a robust per-image window makes them look alike to the
    network. A constant image maps to zeros (nothing to segment) instead of dividing by zero.
    """
    if image.ndim != 2:
        raise ValueError(f"normalise expects a 2-D image, got shape {image.shape}")
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    values = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(values, [low, high])
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image contains non-finite values; cannot normalise")
    if hi - lo <= 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def resample(image: np.ndarray, shape: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """Resample a 2-D array onto ``shape`` covering the same field of view, pixel centres aligned.

    The geometry is the one of ``ribnode.models.preprocess.to_working``/``to_source``: both
    grids span the same physical extent, output pixel ``i`` is centred at input coordinate
    ``(i + 0.5) * in / out - 0.5`` (no half-pixel shift). Used when preprocessing is not
    importable (training from PNGs) and for masks in evaluation.
    """
    import SimpleITK as sitk

    if image.ndim != 2:
        raise ValueError(f"resample expects a 2-D array, got shape {image.shape}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"target shape must be positive, got {shape}")
    interpolators = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
    if interpolation not in interpolators:
        raise ValueError(f"interpolation must be one of {sorted(interpolators)}, got {interpolation!r}")
    source = sitk.GetImageFromArray(np.asarray(image, dtype=np.float32))
    # SimpleITK index order is (x, y) = (col, row); input pixels have spacing 1 at origin 0.
    spacing = (image.shape[1] / cols, image.shape[0] / rows)
    origin = ((spacing[0] - 1.0) / 2.0, (spacing[1] - 1.0) / 2.0)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize((cols, rows))
    resampler.SetOutputSpacing(spacing)
    resampler.SetOutputOrigin(origin)
    resampler.SetInterpolator(interpolators[interpolation])
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(source)).astype(np.float32)


def to_working(image: np.ndarray, size: int) -> np.ndarray:
    """Source matrix -> ``size`` x ``size``: ``ribnode.models.preprocess.to_working`` if present."""
    try:
        from ribnode.models.preprocess import to_working as pre_to_working
    except ImportError:
        return resample(image, (size, size), "linear")
    return np.asarray(pre_to_working(image, size), dtype=np.float32)


def to_source(working: np.ndarray, shape: tuple[int, int], interpolation: str = "linear") -> np.ndarray:
    """Working size -> source matrix: ``ribnode.models.preprocess.to_source`` if present."""
    try:
        from ribnode.models.preprocess import to_source as pre_to_source
    except ImportError:
        return resample(working, shape, interpolation)
    return np.asarray(pre_to_source(working, shape, interpolation), dtype=np.float32)
