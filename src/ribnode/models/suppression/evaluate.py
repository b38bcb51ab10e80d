"""``eval-suppression`` and ``eval-lesions``: the figures of ``shared/guides/metrics.md``.

Both run the suppression exactly as ``RibSuppressor`` does (working-size sampling, upsampling,
``p = x - B * R``) on float images at the data's own resolution, with the region ``R`` from

* ``reference``: the reference rib-mask derivation of the pair (``shared/data/README.md``),
  dilated 5 px at 512, or
* ``segmenter``: the shipped ``RibSegmenter``'s mask, dilated the same way (what the product
  uses).

The outside-mask change is measured against the reference mask dilated by 5 px (metrics
guide) and against the region the model used (must be exactly 0).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ribnode.models.metrics import outside_mask_change, suppression_metrics
from ribnode.models.suppression.data import SuppressionPair
from ribnode.models.suppression.lesions import (
    CONTRASTS, LOCATIONS, RADII_512, LesionTrial, nodule, placements, retention_and_spurious,
)

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MASK_SOURCES = ("reference", "segmenter")
FIGURES = ("bsr", "psnr_gain_db", "psnr_db", "ssim", "bsr_published", "outside_mask_change",
           "outside_model_region")
#: Direction in which a figure is worse (for the "worst image" row).
WORSE_IS_LOW = {"bsr": True, "psnr_gain_db": True, "psnr_db": True, "ssim": True, "bsr_published": True,
                "outside_mask_change": False, "outside_model_region": False}

RegionFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ImageFigures:
    case_id: str
    mask_source: str
    figures: dict[str, float]
    seconds: float


def mask_function(source: str, segmenter: Any | None) -> Callable[[SuppressionPair], np.ndarray]:
    """Which rib mask one pair is suppressed with: the pair's own (reference) or the segmenter's."""
    if source == "reference":
        return lambda pair: pair.rib_mask
    if source == "segmenter":
        if segmenter is None:
            raise ValueError("mask source 'segmenter' needs a RibSegmenter")
        return lambda pair: segmenter.segment_image(pair.radiograph).mask
    raise ValueError(f"mask source {source!r}: expected one of {MASK_SOURCES}")


def evaluate_pairs(suppressor: Any, pairs: Sequence[SuppressionPair], mask_source: str,
                   segmenter: Any | None = None, seed: int = 0,
                   steps: int | None = None) -> list[ImageFigures]:
    """Suppress every pair (same ``seed`` for all) and compute its figures."""
    make_mask = mask_function(mask_source, segmenter)
    rows = []
    for pair in pairs:
        start = time.perf_counter()
        mask = make_mask(pair)
        region = suppressor.region(mask)
        bone = suppressor.bone_layer(pair.radiograph, mask, seed, steps)
        seconds = time.perf_counter() - start
        x = pair.radiograph.astype(np.float64)
        p = x - bone
        figures = suppression_metrics(x, pair.soft_tissue.astype(np.float64), p, pair.region)
        figures["outside_model_region"] = outside_mask_change(x, p, region)
        rows.append(ImageFigures(pair.case_id, mask_source, figures, seconds))
    return rows


def summary(rows: Sequence[ImageFigures]) -> dict[str, dict[str, float | str]]:
    """Mean and worst (with its case id) of every figure."""
    out: dict[str, dict[str, float | str]] = {}
    for name in FIGURES:
        values = np.array([r.figures[name] for r in rows])
        index = int(np.argmin(values) if WORSE_IS_LOW[name] else np.argmax(values))
        out[name] = {"mean": float(values.mean()), "worst": float(values[index]), "worst_case": rows[index].case_id}
    out["seconds"] = {"mean": float(np.mean([r.seconds for r in rows])), "worst": float(max(r.seconds for r in rows)),
                      "worst_case": ""}
    return out


def format_table(rows: Sequence[ImageFigures]) -> str:
    """Per-image rows, then mean and worst, as a plain-text table."""
    head = f"{'case':<12} {'mask':<10} {'BSR':>7} {'gain dB':>8} {'PSNR':>7} {'SSIM':>7} {'pubBSR':>7} {'out5px':>8} {'outR':>6} {'s':>6}"
    lines = [head]
    for r in rows:
        f = r.figures
        lines.append(f"{r.case_id:<12} {r.mask_source:<10} {f['bsr']:7.4f} {f['psnr_gain_db']:8.2f} {f['psnr_db']:7.2f} "
                     f"{f['ssim']:7.4f} {f['bsr_published']:7.4f} {f['outside_mask_change']:8.4f} "
                     f"{f['outside_model_region']:6.3g} {r.seconds:6.2f}")
    stats = summary(rows)
    for label in ("mean", "worst"):
        s = {k: v[label] for k, v in stats.items()}
        lines.append(f"{label:<12} {rows[0].mask_source:<10} {s['bsr']:7.4f} {s['psnr_gain_db']:8.2f} {s['psnr_db']:7.2f} "
                     f"{s['ssim']:7.4f} {s['bsr_published']:7.4f} {s['outside_mask_change']:8.4f} "
                     f"{s['outside_model_region']:6.3g} {s['seconds']:6.2f}")
    return "\n".join(lines)


def lung_field(rib_mask: np.ndarray) -> np.ndarray:
    """A rough lung field: the convex hull of the rib mask in each half of the image.

    There are no lung labels; the hull of each hemithorax's ribs holds the lung and the
    intercostal spaces (and some mediastinum near the midline).
    """
    from skimage.morphology import convex_hull_image

    lung = np.zeros_like(rib_mask, dtype=bool)
    half = rib_mask.shape[1] // 2
    for cols in (slice(0, half), slice(half, None)):
        part = rib_mask[:, cols]
        if part.sum() >= 3:
            lung[:, cols] = convex_hull_image(part)
    return lung


def lesion_trials(suppressor: Any, case_id: str, image: np.ndarray, rib_mask: np.ndarray,
                  placements_per_cell: int, rng: np.random.Generator, seed: int = 0,
                  radii_512: Sequence[float] = RADII_512, contrasts: Sequence[float] = CONTRASTS,
                  locations: Sequence[str] = LOCATIONS) -> list[LesionTrial]:
    """Insert nodules one at a time into ``image`` and measure retention and spurious change.

    The region comes from ``rib_mask`` of the image *without* the nodule (the segmentation is
    held fixed, so the test isolates the suppression itself); the same seed for ``x`` and ``x'``.
    ``x`` and the nodule images run one at a time (a batch multiplies the attention's memory).
    """
    x = image.astype(np.float64)
    lung = lung_field(rib_mask)
    scale = max(image.shape) / 512.0
    trials = []
    p = x - suppressor.bone_layers([x.astype(np.float32)], rib_mask, seed)[0]  # same for every centre
    for location in locations:
        for radius_512 in radii_512:
            radius = radius_512 * scale
            for centre in placements(rng, rib_mask, lung, location, radius, placements_per_cell):
                nodules = [nodule(image.shape, centre, radius, c) for c in contrasts]
                bones = [suppressor.bone_layers([(x + n).astype(np.float32)], rib_mask, seed)[0] for n in nodules]
                for contrast, n, bone in zip(contrasts, nodules, bones):
                    retention, spurious = retention_and_spurious(p, x + n - bone, n, centre, radius)
                    trials.append(LesionTrial(case_id, location, radius_512, contrast, retention, spurious))
    return trials
