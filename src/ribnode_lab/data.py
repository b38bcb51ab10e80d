"""The lab's data: JSRT radiographs, BSE-JSRT pairs and SCR anatomy, bone-bright float32.

Development data only (``../shared/data``, never committed, never read at run time). The PNGs
are stored inverted (lungs bright); everything here returns the standard convention, bone
bright, ``1 - x``. One split serves both models, so the suppression can be measured on the
product path (the segmenter's region) on cases neither model saw:

- paired cases (jsrt-bse-512): sorted per JSRT stratum (JPCLN, JPCNN), every 5th held out
  (index 4, 9, ...): 25 of 128;
- unpaired cases (jsrt-scr-512 only, 99): the same rule per stratum, 19 of 99 (lungs and clavicles only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

HOLD_OUT_EVERY = 5
DEFAULT_SHARED = Path("../shared/data")
#: The reference rib mask (``../shared/tools/derive_rib_masks.py``): threshold of full scale.
REFERENCE_THRESHOLD = 0.02


@dataclass
class Case:
    """One JSRT radiograph with what is known about it (None where the data has no label)."""

    case_id: str
    image: np.ndarray  # float32 (512, 512) bone-bright [0, 1]
    lungs: np.ndarray  # bool, SCR lungs
    heart: np.ndarray  # bool, SCR heart
    clavicles: np.ndarray  # bool, SCR clavicles
    soft: np.ndarray | None = None  # float32 bone-suppressed target (paired cases only)

    @property
    def paired(self) -> bool:
        return self.soft is not None

    @property
    def bone(self) -> np.ndarray:
        """The reference bone layer ``x - y`` (paired cases only)."""
        if self.soft is None:
            raise ValueError(f"{self.case_id} has no bone-suppressed pair")
        return self.image - self.soft

    @property
    def lung_field(self) -> np.ndarray:
        """The region in which BSE-JSRT removes bone: SCR lungs and heart, holes filled."""
        return lung_field(self.lungs, self.heart)

    @property
    def ribs(self) -> np.ndarray:
        """The reference rib mask (paired cases only)."""
        if self.soft is None:
            raise ValueError(f"{self.case_id} has no bone-suppressed pair")
        return reference_rib_mask(self.image, self.soft)


def read_unit(path: Path) -> np.ndarray:
    """An inverted 8-bit PNG as bone-bright float32 in [0, 1]."""
    with Image.open(path) as handle:
        array = np.asarray(handle, dtype=np.float32)
    return 1.0 - array / 255.0


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as handle:
        return np.asarray(handle) > 127


def lung_field(lungs: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """SCR lungs plus the heart (the retrocardiac lung), as one filled region."""
    return np.asarray(ndimage.binary_fill_holes(lungs | heart), dtype=bool)


def reference_rib_mask(radiograph: np.ndarray, soft: np.ndarray, threshold: float = REFERENCE_THRESHOLD) -> np.ndarray:
    """``derive_rib_masks.bone_mask`` exactly: smooth (sigma 1), threshold, open, islands >= 30 px, fill."""
    return bone_layer_mask(np.asarray(radiograph, np.float64) - soft, threshold)


def bone_layer_mask(layer: np.ndarray, threshold: float = REFERENCE_THRESHOLD) -> np.ndarray:
    """The reference rule on a bone layer (the true one, or an estimate of it)."""
    bone = ndimage.gaussian_filter(np.asarray(layer, np.float64), sigma=1.0)
    mask = ndimage.binary_opening(bone > threshold, iterations=1)
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    keep = np.isin(labels, 1 + np.flatnonzero(np.asarray(sizes) >= 30))
    return np.asarray(ndimage.binary_fill_holes(keep), dtype=bool)


def stratum(case_id: str) -> str:
    match = re.match(r"[A-Za-z]+", case_id)
    return match.group(0) if match else ""


def held_out(ids: list[str], every: int = HOLD_OUT_EVERY) -> set[str]:
    """Every ``every``-th case id per stratum, sorted (index every-1, 2*every-1, ...)."""
    groups: dict[str, list[str]] = {}
    for case in sorted(ids):
        groups.setdefault(stratum(case), []).append(case)
    return {c for cases in groups.values() for c in cases[every - 1 :: every]}


def load_cases(shared: Path = DEFAULT_SHARED) -> tuple[list[Case], list[Case]]:
    """(train, held_out) cases of jsrt-scr-512, with their BSE-JSRT pairs where there is one."""
    scr, bse = shared / "jsrt-scr-512", shared / "jsrt-bse-512"
    if not (scr / "image").is_dir():
        raise FileNotFoundError(f"{scr}/image not found: the lab needs ../shared/data")
    ids = sorted(p.stem for p in (scr / "image").glob("*.png"))
    paired = {p.stem for p in (bse / "source").glob("*.png") if (bse / "target" / p.name).is_file()}
    held = held_out(sorted(paired)) | held_out(sorted(set(ids) - paired))
    train: list[Case] = []
    test: list[Case] = []
    for case_id in ids:
        is_paired = case_id in paired
        image = read_unit((bse / "source" if is_paired else scr / "image") / f"{case_id}.png")
        case = Case(
            case_id,
            image,
            read_mask(scr / "lungs" / f"{case_id}.png"),
            read_mask(scr / "heart" / f"{case_id}.png"),
            read_mask(scr / "clavicles" / f"{case_id}.png"),
            read_unit(bse / "target" / f"{case_id}.png") if is_paired else None,
        )
        (test if case_id in held else train).append(case)
    return train, test


def nodule(shape: tuple[int, int], centre: tuple[float, float], radius: float, contrast: float) -> np.ndarray:
    """A sphere seen in projection: ``c * sqrt(1 - (d / r)**2)`` inside radius ``r`` (metrics.md)."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    d2 = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2) / float(radius) ** 2
    return (contrast * np.sqrt(np.clip(1.0 - d2, 0.0, None))).astype(np.float32)
