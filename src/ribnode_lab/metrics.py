"""Image-quality and overlap metrics of ribnode's models (``../shared/guides/metrics.md``).

Torch-free (numpy and scipy). Segmentation: Dice, IoU and the 95th-percentile Hausdorff
distance (HD95). Computed in float64 on boolean masks; the suppression metrics live in the
same module (added by the rib-suppression part).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def _as_masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    return pred, ref


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice = 2|P & R| / (|P| + |R|); 1.0 when both masks are empty."""
    pred, ref = _as_masks(prediction, reference)
    total = float(pred.sum(dtype=np.float64) + ref.sum(dtype=np.float64))
    if total == 0.0:
        return 1.0
    return 2.0 * float(np.logical_and(pred, ref).sum(dtype=np.float64)) / total


def iou(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Intersection over union (Jaccard); 1.0 when both masks are empty."""
    pred, ref = _as_masks(prediction, reference)
    union = float(np.logical_or(pred, ref).sum(dtype=np.float64))
    if union == 0.0:
        return 1.0
    return float(np.logical_and(pred, ref).sum(dtype=np.float64)) / union


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a mask: the mask minus its erosion by the 4-connected cross."""
    mask = np.asarray(mask, dtype=bool)
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=0)
    return mask & ~eroded


def surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance from every boundary pixel of ``source`` to the nearest boundary pixel of ``target``.

    Distances are Euclidean, in pixels or, with ``spacing`` (row, col), in its units (mm).
    """
    target_surface = surface(target)
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    distance = ndimage.distance_transform_edt(~target_surface, sampling=sampling)
    return np.asarray(distance[surface(source)], dtype=np.float64)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between the mask boundaries.

    Both directed boundary-distance sets are pooled and their 95th percentile taken (the
    definition of medpy's ``hd95``). 0.0 when both masks are empty, ``inf`` when exactly one
    is (no finite distance exists).
    """
    pred, ref = _as_masks(prediction, reference)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return math.inf
    pooled = np.concatenate([surface_distances(pred, ref, spacing), surface_distances(ref, pred, spacing)])
    return float(np.percentile(pooled, 95))


def segmentation_metrics(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None
) -> dict[str, float]:
    """Dice, IoU, HD95 in px and, if ``spacing`` (row, col mm) is known, in mm."""
    figures = {
        "dice": dice(prediction, reference),
        "iou": iou(prediction, reference),
        "hd95_px": hd95(prediction, reference),
    }
    if spacing is not None:
        figures["hd95_mm"] = hd95(prediction, reference, spacing)
    return figures


# -- Rib suppression (``shared/guides/metrics.md``; float64, bone-bright [0, 1]) -------------


def _as_float_images(*images: np.ndarray) -> list[np.ndarray]:
    for image in images:  # integer arrays would wrap around in a - b (metrics guide)
        if np.asarray(image).dtype.kind != "f":
            raise TypeError(f"suppression metrics need float images in [0, 1], got {np.asarray(image).dtype}")
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    for array in arrays[1:]:
        if array.shape != arrays[0].shape:
            raise ValueError(f"images of shapes {[a.shape for a in arrays]} differ in shape")
    return arrays


def bone_suppression_ratio(radiograph: np.ndarray, reference: np.ndarray, prediction: np.ndarray) -> float:
    """BSR = 1 - sum((y - p)^2) / sum((x - y)^2): identity scores 0, perfect 1."""
    x, y, p = _as_float_images(radiograph, reference, prediction)
    bone_energy = float(((x - y) ** 2).sum())
    if bone_energy == 0.0:
        raise ValueError("radiograph equals its reference: the bone suppression ratio is undefined")
    return 1.0 - float(((y - p) ** 2).sum()) / bone_energy


def published_bsr(radiograph: np.ndarray, reference: np.ndarray, prediction: np.ndarray) -> float:
    """BS-LDM's one-sided variant: ``p += mean(y - p)``, ``b = max(y - p, 0)``,
    ``1 - sum(b^2) / sum((x - y)^2)``."""
    x, y, p = _as_float_images(radiograph, reference, prediction)
    p = p + (y - p).mean()
    residual = np.maximum(y - p, 0.0)
    bone_energy = float(((x - y) ** 2).sum())
    if bone_energy == 0.0:
        raise ValueError("radiograph equals its reference: the bone suppression ratio is undefined")
    return 1.0 - float((residual**2).sum()) / bone_energy


def psnr(reference: np.ndarray, prediction: np.ndarray) -> float:
    """PSNR in dB with data range 1 (skimage's definition); ``inf`` for identical images."""
    y, p = _as_float_images(reference, prediction)
    mse = float(((y - p) ** 2).mean())
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(reference: np.ndarray, prediction: np.ndarray) -> float:
    """SSIM (skimage ``structural_similarity``, data range 1, float64)."""
    from skimage.metrics import structural_similarity

    y, p = _as_float_images(reference, prediction)
    return float(structural_similarity(y, p, data_range=1.0))


def outside_mask_change(radiograph: np.ndarray, prediction: np.ndarray, region: np.ndarray) -> float:
    """``max |p - x|`` over the pixels outside ``region`` (the rib mask dilated by 5 px)."""
    x, p = _as_float_images(radiograph, prediction)
    region = np.asarray(region, dtype=bool)
    if region.shape != x.shape:
        raise ValueError(f"region {region.shape} differs from the images {x.shape}")
    outside = ~region
    return float(np.abs(p - x)[outside].max()) if outside.any() else 0.0


def suppression_metrics(
    radiograph: np.ndarray, reference: np.ndarray, prediction: np.ndarray, region: np.ndarray
) -> dict[str, float]:
    """All suppression figures of one image: BSR, PSNR gain over identity, PSNR, SSIM,
    published-style BSR and outside-mask change (``region``: rib mask dilated by 5 px)."""
    x, y, p = _as_float_images(radiograph, reference, prediction)
    value = psnr(y, p)
    return {
        "bsr": bone_suppression_ratio(x, y, p),
        "psnr_gain_db": value - psnr(y, x),
        "psnr_db": value,
        "ssim": ssim(y, p),
        "bsr_published": published_bsr(x, y, p),
        "outside_mask_change": outside_mask_change(x, p, region),
    }
