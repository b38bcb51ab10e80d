"""Training and evaluation pairs for the rib suppression (torch-free).

A pair is a radiograph ``x`` and its bone-suppressed reference ``y`` (bone-bright [0, 1]);
the bone layer is ``x - y``. The rib mask is derived from the pair by the named label
definition of ``ribnode.models.segmentation.data`` (``"local"`` by default, or the
``"reference"`` one of ``shared/data/README.md``), dilated into the region where the
suppression may change anything.

Held-out split (also written into the weights' json and the model card): case ids sorted
within each JSRT stratum (JPCLN, JPCNN); every 5th case of each stratum, starting with the
5th, is held out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ribnode.models.preprocess import dilate_mask, to_working
from ribnode.models.segmentation.data import case_ids, read_png_unit, rib_mask, stratum

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

HOLD_OUT_EVERY = 5
#: The rib-mask definition of the suppression's training and evaluation region. The shipped
#: suppression (2.x) was trained on "local"; the segmenter moved to "local-open" in 3.0.
REGION_LABELS = "local"
DEFAULT_DATA = Path(__file__).resolve().parents[5] / "shared" / "data" / "jsrt-bse-512"


def region_radius(shape: tuple[int, int], radius_512: float) -> int:
    """The mask dilation in source pixels: ``radius_512`` px at 512, scaled to the source."""
    return max(1, int(round(radius_512 * max(shape) / 512.0)))


def split_held_out(ids: list[str], every: int = HOLD_OUT_EVERY) -> tuple[list[str], list[str]]:
    """(train, held_out): sorted ids per stratum, every ``every``-th (index every-1, 2*every-1, ...)."""
    groups: dict[str, list[str]] = {}
    for case in sorted(ids):
        groups.setdefault(stratum(case), []).append(case)
    held = sorted(c for cases in groups.values() for c in cases[every - 1::every])
    held_set = set(held)
    return [c for c in sorted(ids) if c not in held_set], held


@dataclass(frozen=True)
class SuppressionPair:
    """One pair at its own resolution, with the reference rib mask and the dilated region."""

    case_id: str
    radiograph: np.ndarray  # float32 bone-bright [0, 1]
    soft_tissue: np.ndarray  # float32 bone-bright [0, 1]
    rib_mask: np.ndarray  # bool, derived by the label definition (local or reference)
    region: np.ndarray  # bool, rib mask dilated by the model's radius

    @property
    def bone(self) -> np.ndarray:
        return (self.radiograph.astype(np.float64) - self.soft_tissue).astype(np.float32)


def load_pairs(data_dir: Path, ids: list[str] | None = None, inverted: bool = True,
               dilation_512: float = 5.0, labels: str = REGION_LABELS) -> list[SuppressionPair]:
    """Load ``source/``/``target/`` PNG pairs (``1 - x`` if ``inverted``) with masks and regions."""
    data_dir = Path(data_dir)
    pairs = []
    for case in ids if ids is not None else case_ids(data_dir):
        x = read_png_unit(data_dir / "source" / f"{case}.png", inverted)
        y = read_png_unit(data_dir / "target" / f"{case}.png", inverted)
        if x.shape != y.shape:
            raise ValueError(f"{case}: source {x.shape} and target {y.shape} differ in shape")
        mask = rib_mask(x, y, labels)
        region = dilate_mask(mask, region_radius(x.shape, dilation_512))
        pairs.append(SuppressionPair(case, x.astype(np.float32), y.astype(np.float32), mask, region))
    logger.info("loaded %d pairs from %s", len(pairs), data_dir)
    return pairs


@dataclass(frozen=True)
class WorkingPair:
    """A pair resampled to the working size (bone and soft region), for training."""

    case_id: str
    radiograph: np.ndarray  # source resolution, float32 (augmented before resampling)
    rib_mask: np.ndarray  # source resolution, bool
    bone: np.ndarray  # working size, float32 bone-bright units
    region: np.ndarray  # working size, float32 fraction of the dilated region


def to_working_pair(pair: SuppressionPair, size: int) -> WorkingPair:
    """Resample the bone layer and the region of ``pair`` to ``size`` (as at inference)."""
    return WorkingPair(pair.case_id, pair.radiograph, pair.rib_mask,
                       to_working(pair.bone, size),
                       to_working(pair.region.astype(np.float32), size))


def normalise(image: np.ndarray, percentiles: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Linear per-image normalisation ``(x - lo) / (hi - lo)``; returns (n, lo, hi).

    The map is linear so the bone estimate maps back exactly (``B = b * (hi - lo)``).
    """
    lo, hi = np.percentile(image, percentiles)
    lo, hi = float(lo), float(hi)
    if not hi - lo > 1e-6:
        hi = lo + 1e-6
    return ((image - lo) / (hi - lo)).astype(np.float32), lo, hi
