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
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1),
                                    border_value=0)
    return mask & ~eroded


def surface_distances(source: np.ndarray, target: np.ndarray,
                      spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance from every boundary pixel of ``source`` to the nearest boundary pixel of ``target``.

    Distances are Euclidean, in pixels or, with ``spacing`` (row, col), in its units (mm).
    """
    target_surface = surface(target)
    sampling = None if spacing is None else tuple(float(s) for s in spacing)
    distance = ndimage.distance_transform_edt(~target_surface, sampling=sampling)
    return np.asarray(distance[surface(source)], dtype=np.float64)


def hd95(prediction: np.ndarray, reference: np.ndarray,
         spacing: Sequence[float] | None = None) -> float:
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
    pooled = np.concatenate([surface_distances(pred, ref, spacing),
                             surface_distances(ref, pred, spacing)])
    return float(np.percentile(pooled, 95))


def segmentation_metrics(prediction: np.ndarray, reference: np.ndarray,
                         spacing: Sequence[float] | None = None) -> dict[str, float]:
    """Dice, IoU, HD95 in px and, if ``spacing`` (row, col mm) is known, in mm."""
    figures = {
        "dice": dice(prediction, reference),
        "iou": iou(prediction, reference),
        "hd95_px": hd95(prediction, reference),
    }
    if spacing is not None:
        figures["hd95_mm"] = hd95(prediction, reference, spacing)
    return figures
