"""Synthetic nodules, and the lesion-retention test of ``shared/guides/metrics.md``.

A nodule is a sphere seen in projection: ``n(d) = c * sqrt(1 - (d / r)**2)`` for ``d < r``.
The test inserts nodules into real radiographs (``x' = x + n``), runs the suppression on ``x``
and ``x'`` with the same seed (``p``, ``p'``) and measures

* retention ``sum((p' - p) * n) / sum(n * n)``  (1: the nodule passed through untouched),
* spurious change ``max |(p' - p) - n|`` outside the nodule's disc dilated by ``r`` px.

The same renderer makes the training augmentation (nodules added to the input only, so the
network learns that nodules are not bone). Torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

RADII_512 = (3.0, 5.0, 8.0, 12.0)
CONTRASTS = (0.01, 0.02, 0.04)
LOCATIONS = ("rib", "lung")


def nodule(shape: tuple[int, int], centre: tuple[float, float], radius: float,
           contrast: float) -> np.ndarray:
    """The projected-sphere profile on a ``shape`` matrix (float64, zero outside the disc)."""
    if radius <= 0:
        raise ValueError(f"nodule radius {radius}: expected > 0 px")
    rows = np.arange(shape[0], dtype=np.float64)[:, None] - centre[0]
    cols = np.arange(shape[1], dtype=np.float64)[None, :] - centre[1]
    d2 = (rows * rows + cols * cols) / (radius * radius)
    return contrast * np.sqrt(np.clip(1.0 - d2, 0.0, None))


def add_nodules(image: np.ndarray, nodules: Iterable[tuple[float, float, float, float]]) -> np.ndarray:
    """``image`` plus nodules ``(row, col, radius, contrast)`` (float64)."""
    out = np.asarray(image, dtype=np.float64).copy()
    for row, col, radius, contrast in nodules:
        out += nodule(out.shape, (row, col), radius, contrast)
    return out


def sample_training_nodules(rng: np.random.Generator, mask: np.ndarray, count: int,
                            radius_range: tuple[float, float] = (2.0, 14.0),
                            contrast_range: tuple[float, float] = (0.005, 0.05),
                            window: np.ndarray | None = None,
                            ) -> list[tuple[float, float, float, float]]:
    """Random nodules for augmentation: half centred on ribs (``mask``), half in open lung.

    Radii and contrasts are drawn uniformly in the given ranges (px and bone-bright units of the
    matrix of ``mask``); "open lung" is approximated by the central 70 % of the image outside
    the mask. ``window`` (bool, the shape of ``mask``) restricts every centre to it.
    """
    rows, cols = mask.shape
    allowed = np.ones_like(mask, dtype=bool) if window is None else np.asarray(window, dtype=bool)
    on_rib = np.argwhere(mask & allowed)
    centre_box = np.zeros_like(mask)
    centre_box[int(0.15 * rows):int(0.85 * rows), int(0.1 * cols):int(0.9 * cols)] = True
    in_lung = np.argwhere(centre_box & ~mask & allowed)
    out: list[tuple[float, float, float, float]] = []
    for i in range(count):
        pool = on_rib if (i % 2 == 0 and len(on_rib)) or not len(in_lung) else in_lung
        if not len(pool):
            break
        row, col = pool[rng.integers(len(pool))]
        radius = float(rng.uniform(*radius_range))
        contrast = float(rng.uniform(*contrast_range))
        out.append((float(row) + rng.uniform(-0.5, 0.5), float(col) + rng.uniform(-0.5, 0.5),
                    radius, contrast))
    return out


@dataclass(frozen=True)
class LesionTrial:
    """One inserted nodule and what the suppression did to it."""

    case_id: str
    location: str  # "rib" | "lung"
    radius: float
    contrast: float
    retention: float
    spurious: float


def retention_and_spurious(p: np.ndarray, p_nodule: np.ndarray, n: np.ndarray,
                           centre: tuple[float, float], radius: float) -> tuple[float, float]:
    """Retention and spurious change of one nodule (metrics guide definitions, float64)."""
    diff = np.asarray(p_nodule, np.float64) - np.asarray(p, np.float64)
    retention = float((diff * n).sum() / (n * n).sum())
    rows = np.arange(n.shape[0])[:, None] - centre[0]
    cols = np.arange(n.shape[1])[None, :] - centre[1]
    outside = rows * rows + cols * cols >= (2.0 * radius) ** 2
    spurious = float(np.abs(diff - n)[outside].max()) if outside.any() else 0.0
    return retention, spurious


def placements(rng: np.random.Generator, rib_mask: np.ndarray, lung: np.ndarray, location: str,
               radius: float, count: int) -> list[tuple[float, float]]:
    """``count`` nodule centres: on ribs (inside ``rib_mask``) or in open lung (inside ``lung``,
    outside ``rib_mask``), at least ``radius`` px from the border."""
    border = int(np.ceil(radius)) + 1
    valid = np.zeros_like(rib_mask, dtype=bool)
    valid[border:-border, border:-border] = True
    if location == "rib":
        pool = rib_mask & valid
    elif location == "lung":
        pool = lung & ~rib_mask & valid
    else:
        raise ValueError(f"location {location!r}: expected one of {LOCATIONS}")
    candidates = np.argwhere(pool)
    if len(candidates) == 0:
        return []
    picks = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    return [(float(candidates[i][0]), float(candidates[i][1])) for i in picks]


def summarise(trials: Sequence[LesionTrial]) -> dict[tuple[str, float, float], dict[str, float]]:
    """Per (location, radius, contrast): mean/min retention and max spurious change, count."""
    groups: dict[tuple[str, float, float], list[LesionTrial]] = {}
    for trial in trials:
        groups.setdefault((trial.location, trial.radius, trial.contrast), []).append(trial)
    out: dict[tuple[str, float, float], dict[str, float]] = {}
    for key in sorted(groups):
        values = groups[key]
        ret = np.array([t.retention for t in values])
        out[key] = {
            "n": float(len(values)),
            "retention_mean": float(ret.mean()),
            "retention_min": float(ret.min()),
            "retention_p05": float(np.percentile(ret, 5)),
            "spurious_max": float(max(t.spurious for t in values)),
            "spurious_mean": float(np.mean([t.spurious for t in values])),
        }
    return out


SuppressFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
