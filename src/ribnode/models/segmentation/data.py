"""Training and evaluation data for the rib segmentation: radiograph/bone-suppressed pairs.

Torch-free. The pairs (``source/`` radiographs, ``target/`` bone-suppressed images, PNG) come
from ``../shared/data/jsrt-bse-512`` and are never committed; rib masks are derived from each
pair by the reference definition of ``../shared/tools/derive_rib_masks.py`` (re-implemented
here exactly, and cached outside the repository).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Reference definition of "rib mask" (../shared/data/README.md): threshold of full scale,
#: Gaussian sigma, openings, smallest island kept.
REFERENCE_THRESHOLD = 0.02
REFERENCE_SIGMA = 1.0
REFERENCE_MIN_ISLAND = 30
#: Derived masks are cached here (never in the repository): $XDG_CACHE_HOME/ribnode/seg-masks.
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ribnode" / "seg-masks"


@dataclass(frozen=True)
class Pair:
    """One radiograph with its bone-suppressed target and derived rib mask, bone-bright [0, 1]."""

    case_id: str
    radiograph: np.ndarray  # float32, bone-bright [0, 1]
    soft_tissue: np.ndarray  # float32, bone-bright [0, 1]
    mask: np.ndarray  # bool


def reference_rib_mask(radiograph: np.ndarray, soft_tissue: np.ndarray,
                       threshold: float = REFERENCE_THRESHOLD) -> np.ndarray:
    """Rib (and clavicle) mask of one pair, per the reference definition.

    Both inputs bone-bright in [0, 1] (full scale 1). The bone layer ``radiograph - soft``
    is smoothed (Gaussian, sigma 1 px), thresholded at ``threshold``, opened once, islands
    under 30 px are dropped and holes filled: exactly ``derive_rib_masks.bone_mask``.
    """
    if radiograph.shape != soft_tissue.shape:
        raise ValueError(
            f"radiograph {radiograph.shape} and soft tissue {soft_tissue.shape} differ in shape"
        )
    bone = ndimage.gaussian_filter(
        np.asarray(radiograph, np.float64) - np.asarray(soft_tissue, np.float64), sigma=REFERENCE_SIGMA
    )
    mask = ndimage.binary_opening(bone > threshold, iterations=1)
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(np.asarray(sizes) >= REFERENCE_MIN_ISLAND))
    return np.asarray(ndimage.binary_fill_holes(keep), dtype=bool)


def read_png_unit(path: Path, inverted: bool) -> np.ndarray:
    """A grayscale 8/16-bit PNG as float64 in [0, 1], bone-bright (``1 - x`` if ``inverted``)."""
    with Image.open(path) as handle:
        array = np.asarray(handle)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a grayscale PNG, got array shape {array.shape}")
    full_scale = 65535.0 if array.dtype == np.uint16 else 255.0
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected 8- or 16-bit pixels, got {array.dtype}")
    unit = array.astype(np.float64) / full_scale
    return 1.0 - unit if inverted else unit


def case_ids(data_dir: Path) -> list[str]:
    """Case ids (file stems) that have both ``source/`` and ``target/`` PNGs, sorted."""
    source = data_dir / "source"
    if not source.is_dir():
        raise FileNotFoundError(f"{data_dir} has no source/ folder of radiograph PNGs")
    ids = sorted(p.stem for p in source.glob("*.png") if (data_dir / "target" / p.name).is_file())
    if not ids:
        raise FileNotFoundError(f"{data_dir}: no source/*.png with a matching target/*.png")
    return ids


def _cache_key(data_dir: Path, case_id: str, inverted: bool) -> str:
    digest = hashlib.sha256()
    for sub in ("source", "target"):
        digest.update((data_dir / sub / f"{case_id}.png").read_bytes())
    digest.update(f"inv={inverted};thr={REFERENCE_THRESHOLD}".encode())
    return digest.hexdigest()[:16]


def load_pair(data_dir: Path, case_id: str, inverted: bool = True,
              cache_dir: Path | None = DEFAULT_CACHE) -> Pair:
    """Load one pair and its rib mask: ``DIR/masks/<id>.png`` if present, else derived (cached)."""
    radiograph = read_png_unit(data_dir / "source" / f"{case_id}.png", inverted)
    soft = read_png_unit(data_dir / "target" / f"{case_id}.png", inverted)
    given = data_dir / "masks" / f"{case_id}.png"
    if given.is_file():
        mask = np.asarray(Image.open(given)) > 127
    else:
        mask = _cached_mask(data_dir, case_id, inverted, radiograph, soft, cache_dir)
    if mask.shape != radiograph.shape:
        raise ValueError(f"{case_id}: mask {mask.shape} differs from radiograph {radiograph.shape}")
    return Pair(case_id, radiograph.astype(np.float32), soft.astype(np.float32), mask)


def _cached_mask(data_dir: Path, case_id: str, inverted: bool, radiograph: np.ndarray,
                 soft: np.ndarray, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None:
        return reference_rib_mask(radiograph, soft)
    path = cache_dir / f"{case_id}-{_cache_key(data_dir, case_id, inverted)}.png"
    if path.is_file():
        return np.asarray(Image.open(path)) > 127
    mask = reference_rib_mask(radiograph, soft)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    except OSError as error:  # a read-only home must not stop training or evaluation
        logger.warning("cannot cache the rib mask of %s in %s: %s", case_id, path.parent, error)
    return mask


def stratum(case_id: str) -> str:
    """JSRT stratum of a case id: its letter prefix (JPCLN nodule / JPCNN no nodule)."""
    match = re.match(r"[A-Za-z]+", case_id)
    return match.group(0) if match else ""


def split_cases(ids: list[str], held_out: int, seed: int) -> tuple[list[str], list[str]]:
    """Fixed train/held-out split by case id, stratified by prefix, reproducible by seed.

    Each stratum contributes ``round(held_out * n_stratum / n)`` cases (the largest stratum
    absorbs rounding) so both JSRT strata are represented in proportion.
    """
    if not 0 < held_out < len(ids):
        raise ValueError(f"held_out must be in 1..{len(ids) - 1}, got {held_out}")
    groups: dict[str, list[str]] = {}
    for case in sorted(ids):
        groups.setdefault(stratum(case), []).append(case)
    quotas = {k: round(held_out * len(v) / len(ids)) for k, v in groups.items()}
    largest = max(groups, key=lambda k: len(groups[k]))
    quotas[largest] += held_out - sum(quotas.values())
    rng = random.Random(seed)
    held: list[str] = []
    for key in sorted(groups):
        held.extend(rng.sample(groups[key], quotas[key]))
    held_set = set(held)
    return [c for c in sorted(ids) if c not in held_set], sorted(held)
