"""Training and evaluation data for the rib segmentation: radiograph/bone-suppressed pairs.

Torch-free. The pairs (``source/`` radiographs, ``target/`` bone-suppressed images, PNG) come
from ``../shared/data/jsrt-bse-512`` and are never committed; rib masks are derived from each
pair and cached outside the repository. Three label definitions exist:

- ``"reference"``: ``../shared/tools/derive_rib_masks.py`` re-implemented exactly (an absolute
  threshold of the bone layer at 0.02 of full scale);
- ``"local"`` (the labels of segmentation model 2.0, and the rib suppression's region): the
  same bone layer, thresholded at 30 % of its local peak (the brightest value within 10 px at
  512) and above a floor of 0.008, then cleaned exactly as the reference. A rib's edge is then
  where its projected bone falls to a fixed share of that rib's own peak, so faintly
  suppressed images keep whole ribs instead of fragments;
- ``"local-open"`` (the default since segmentation model 3.0): the local threshold, cleaned
  like the reference except that only pinholes (holes up to 20 px at 512) are filled. The
  reference's hole filling also fills the lung that crossing ribs enclose (an anterior rib
  over two posterior ones) and labels it rib.

Why each is better, and by how much: ``docs/models/rib-segmentation.md``.
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
#: ribnode's local definition: share of the local peak, peak window radius (px at 512), floor.
LOCAL_FRACTION = 0.3
LOCAL_RADIUS_512 = 10
LOCAL_FLOOR = 0.008
#: local-open: largest hole (px at 512, scaled by area) that is filled; larger ones are lung.
OPEN_MAX_HOLE_512 = 20
LABEL_DEFINITIONS = ("local", "local-open", "reference")
DEFAULT_LABELS = "local-open"
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
    return _clean(bone_layer(radiograph, soft_tissue) > threshold)


def local_rib_mask(radiograph: np.ndarray, soft_tissue: np.ndarray,
                   fraction: float = LOCAL_FRACTION, radius_512: float = LOCAL_RADIUS_512,
                   floor: float = LOCAL_FLOOR) -> np.ndarray:
    """Rib mask by ribnode's local definition (relative to each rib's own peak).

    Same bone layer as the reference (``radiograph - soft``, Gaussian sigma 1 px); a pixel is
    bone where that layer exceeds ``fraction`` of its maximum within ``radius_512`` px (at 512,
    scaled to the image) and also exceeds ``floor``; then the reference's opening, island
    removal and hole filling.
    """
    return _clean(_local_threshold(radiograph, soft_tissue, fraction, radius_512, floor))


def local_open_rib_mask(radiograph: np.ndarray, soft_tissue: np.ndarray,
                        max_hole_512: float = OPEN_MAX_HOLE_512) -> np.ndarray:
    """Rib mask by the local threshold, keeping the lung that ribs enclose (``"local-open"``).

    As ``local_rib_mask``, but the clean-up fills only holes of at most ``max_hole_512`` px
    (at 512, scaled by the image's area): pinholes inside a rib. A larger hole is the lung
    between crossing ribs, and stays out of the mask.
    """
    max_hole = max_hole_512 * (max(radiograph.shape) / 512.0) ** 2
    return _clean(_local_threshold(radiograph, soft_tissue, LOCAL_FRACTION, LOCAL_RADIUS_512, LOCAL_FLOOR),
                  max_hole=max_hole)


def _local_threshold(radiograph: np.ndarray, soft_tissue: np.ndarray, fraction: float,
                     radius_512: float, floor: float) -> np.ndarray:
    bone = bone_layer(radiograph, soft_tissue)
    radius = max(1, int(round(radius_512 * max(bone.shape) / 512.0)))
    peak = ndimage.maximum_filter(bone, size=2 * radius + 1)
    return np.asarray((bone > fraction * peak) & (bone > floor))


def rib_mask(radiograph: np.ndarray, soft_tissue: np.ndarray, labels: str = DEFAULT_LABELS) -> np.ndarray:
    """The rib mask of one pair under the named label definition (``LABEL_DEFINITIONS``)."""
    if labels == "local":
        return local_rib_mask(radiograph, soft_tissue)
    if labels == "local-open":
        return local_open_rib_mask(radiograph, soft_tissue)
    if labels == "reference":
        return reference_rib_mask(radiograph, soft_tissue)
    raise ValueError(f"labels {labels!r}: expected one of {', '.join(LABEL_DEFINITIONS)}")


def bone_layer(radiograph: np.ndarray, soft_tissue: np.ndarray) -> np.ndarray:
    """The bone layer every label definition starts from: ``radiograph - soft``, Gaussian sigma 1 px."""
    if radiograph.shape != soft_tissue.shape:
        raise ValueError(
            f"radiograph {radiograph.shape} and soft tissue {soft_tissue.shape} differ in shape"
        )
    return np.asarray(ndimage.gaussian_filter(
        np.asarray(radiograph, np.float64) - np.asarray(soft_tissue, np.float64), sigma=REFERENCE_SIGMA
    ))


def _clean(mask: np.ndarray, max_hole: float | None = None) -> np.ndarray:
    """The reference's clean-up: open once, drop islands under 30 px, fill holes (all of them,
    or with ``max_hole`` only those of at most that many pixels)."""
    mask = ndimage.binary_opening(mask, iterations=1)
    keep = _drop_small(mask, REFERENCE_MIN_ISLAND)
    filled = np.asarray(ndimage.binary_fill_holes(keep), dtype=bool)
    if max_hole is None:
        return filled
    holes = filled & ~keep
    return keep | (holes & ~_drop_small(holes, int(np.floor(max_hole)) + 1))


def _drop_small(mask: np.ndarray, smallest: int) -> np.ndarray:
    """``mask`` without its (4-connected) components of fewer than ``smallest`` px."""
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return np.isin(labels, 1 + np.flatnonzero(np.asarray(sizes) >= smallest))


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


def _cache_key(data_dir: Path, case_id: str, inverted: bool, labels: str) -> str:
    digest = hashlib.sha256()
    for sub in ("source", "target"):
        digest.update((data_dir / sub / f"{case_id}.png").read_bytes())
    definition = (f"thr={REFERENCE_THRESHOLD}" if labels == "reference" else
                  f"local={LOCAL_FRACTION},{LOCAL_RADIUS_512},{LOCAL_FLOOR}")
    if labels == "local-open":
        definition += f";open={OPEN_MAX_HOLE_512}"
    digest.update(f"inv={inverted};{definition}".encode())
    return digest.hexdigest()[:16]


def load_pair(data_dir: Path, case_id: str, inverted: bool = True,
              cache_dir: Path | None = DEFAULT_CACHE, labels: str = DEFAULT_LABELS) -> Pair:
    """Load one pair and its rib mask: ``DIR/masks/<id>.png`` if present, else derived (cached).

    ``labels`` names the derivation (one of ``LABEL_DEFINITIONS``, see the module doc).
    """
    if labels not in LABEL_DEFINITIONS:
        raise ValueError(f"labels {labels!r}: expected one of {', '.join(LABEL_DEFINITIONS)}")
    radiograph = read_png_unit(data_dir / "source" / f"{case_id}.png", inverted)
    soft = read_png_unit(data_dir / "target" / f"{case_id}.png", inverted)
    given = data_dir / "masks" / f"{case_id}.png"
    if given.is_file():
        mask = np.asarray(Image.open(given)) > 127
    else:
        mask = _cached_mask(data_dir, case_id, inverted, radiograph, soft, cache_dir, labels)
    if mask.shape != radiograph.shape:
        raise ValueError(f"{case_id}: mask {mask.shape} differs from radiograph {radiograph.shape}")
    return Pair(case_id, radiograph.astype(np.float32), soft.astype(np.float32), mask)


def _cached_mask(data_dir: Path, case_id: str, inverted: bool, radiograph: np.ndarray,
                 soft: np.ndarray, cache_dir: Path | None, labels: str) -> np.ndarray:
    if cache_dir is None:
        return rib_mask(radiograph, soft, labels)
    path = cache_dir / f"{case_id}-{_cache_key(data_dir, case_id, inverted, labels)}.png"
    if path.is_file():
        return np.asarray(Image.open(path)) > 127
    mask = rib_mask(radiograph, soft, labels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.png")  # atomic for parallel runs
        Image.fromarray(mask.astype(np.uint8) * 255).save(partial)
        partial.replace(path)
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
