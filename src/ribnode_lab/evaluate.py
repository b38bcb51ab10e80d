"""Held-out figures of the two models, as ``../shared/guides/metrics.md`` defines them.

- ``segmentation``: Dice, IoU and HD95 per structure (ribs against the reference masks on the
  paired cases; clavicles against SCR; lung fields against SCR lungs + heart), and the share of
  the reference bone energy inside the suppression's region built from the predicted lungs;
- ``suppression``: BSR, PSNR gain, SSIM, published-style BSR, amplitude gain, region coverage and
  area, outside-region change, for the estimator alone and for estimator + refiner, on the
  product path (the region from the shipped segmenter's lung fields);
- ``lesions``: nodules added to held-out radiographs (radii 3/5/8/12 px, contrasts 0.01/0.02/0.04,
  on ribs, behind clavicles and in open lung; one of each location per run, far apart), the whole
  product path run on both; retention, spurious change, and mask pixels of each structure
  changed farther than 2 px outside the nodule's disc.

All at 512, float64, bone-bright [0, 1]. Nothing here is imported by the runtime.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ribnode.models.info import STRUCTURES
from ribnode.models.segmentation.runtime import RibSegmenter
from ribnode.models.suppression.runtime import RibSuppressor
from ribnode_lab.data import Case, nodule
from ribnode_lab.metrics import segmentation_metrics, suppression_metrics

RADII = (3, 5, 8, 12)
CONTRASTS = (0.01, 0.02, 0.04)
LOCATIONS = ("rib", "clavicle", "open")


def summary(values: list[float], worst: str = "min") -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "worst": float(array.min() if worst == "min" else array.max()),
        "n": len(array),
    }


def references(case: Case) -> dict[str, np.ndarray]:
    out = {"clavicles": case.clavicles, "lungs": case.lung_field}
    if case.paired:
        out["ribs"] = case.ribs
    return out


def evaluate_segmentation(
    segmenter: RibSegmenter, suppressor: RibSuppressor | None, cases: list[Case]
) -> dict[str, Any]:
    per: dict[str, dict[str, list[float]]] = {s: {"dice": [], "iou": [], "hd95_px": []} for s in STRUCTURES}
    coverage: list[float] = []
    area: list[float] = []
    rows = []
    for case in cases:
        result = segmenter.segment_image(case.image)
        row: dict[str, Any] = {"case": case.case_id}
        for name, reference in references(case).items():
            figures = segmentation_metrics(result.structures[name], reference)
            for key in per[name]:
                per[name][key].append(figures[key])
            row[name] = figures["dice"]
        if suppressor is not None:
            region = suppressor.region(result.working_probabilities["lungs"], case.image.shape)
            area.append(float(region.mean()))
            if case.paired:
                energy = case.bone.astype(np.float64) ** 2
                coverage.append(float(energy[region].sum() / energy.sum()))
                row["coverage"] = coverage[-1]
        rows.append(row)
    out: dict[str, Any] = {
        name: {k: summary(v, "max" if k == "hd95_px" else "min") for k, v in figs.items() if v}
        for name, figs in per.items()
    }
    if coverage:
        out["region_coverage"] = summary(coverage)
        out["region_area"] = summary(area, "max")
    out["cases"] = rows
    return out


def amplitude_gain(estimated: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """Least-squares slope (through 0) of the estimated layer on the reference, inside the region."""
    e, r = estimated[region].astype(np.float64), reference[region].astype(np.float64)
    return float((e * r).sum() / max((r * r).sum(), 1e-12))


def evaluate_suppression(
    segmenter: RibSegmenter, suppressor: RibSuppressor, cases: list[Case], steps: int | None = None
) -> dict[str, Any]:
    variants = {"estimator": False, "refined": True}
    figures: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    rows = []
    for case in cases:
        if not case.paired:
            continue
        x, y = case.image.astype(np.float64), case.soft.astype(np.float64)  # type: ignore[union-attr]
        lungs = segmenter.segment_image(case.image).working_probabilities["lungs"]
        row: dict[str, Any] = {"case": case.case_id}
        for variant, refine in variants.items():
            bone, region = suppressor.bone_layer(case.image, lungs, seed=0, steps=steps, refine=refine)
            p = x - bone
            values = suppression_metrics(x, y, p, region)
            values["amplitude_gain"] = amplitude_gain(bone, x - y, region)
            energy = (x - y) ** 2
            values["region_coverage"] = float(energy[region].sum() / energy.sum())
            values["region_area"] = float(region.mean())
            for key, value in values.items():
                figures[variant].setdefault(key, []).append(value)
            row[variant] = {k: round(v, 5) for k, v in values.items()}
        rows.append(row)
    worst_max = {"outside_mask_change", "region_area"}
    out: dict[str, Any] = {
        v: {k: summary(vals, "max" if k in worst_max else "min") for k, vals in figs.items()}
        for v, figs in figures.items()
    }
    out["steps"] = steps or suppressor.steps
    out["cases"] = rows
    return out


@dataclass
class Placement:
    location: str
    centre: tuple[int, int]


def location_masks(case: Case, ribs: np.ndarray) -> dict[str, np.ndarray]:
    """Where nodules of each kind may go (centres at least 14 px inside the lung field)."""
    field = ndimage.binary_erosion(case.lung_field, iterations=14)
    clav = case.clavicles & field
    rib = ribs & field & ~ndimage.binary_dilation(case.clavicles, iterations=4)
    open_lung = field & ~ndimage.binary_dilation(ribs | case.clavicles, iterations=4)
    return {"rib": rib, "clavicle": clav, "open": open_lung}


def draw_placements(
    masks: dict[str, np.ndarray], rng: np.random.Generator, spacing: int = 60
) -> list[Placement] | None:
    """One centre per location, at least ``spacing`` px apart; None when a location is empty."""
    chosen: list[Placement] = []
    for location in LOCATIONS:
        candidates = np.argwhere(masks[location])
        if not len(candidates):
            return None
        for _ in range(50):
            centre = tuple(int(v) for v in candidates[rng.integers(len(candidates))])
            if all(np.hypot(centre[0] - p.centre[0], centre[1] - p.centre[1]) >= spacing for p in chosen):
                chosen.append(Placement(location, centre))  # type: ignore[arg-type]
                break
        else:
            return None
    return chosen


def nodule_discs(shape: tuple[int, ...], placements: list[Placement], radius: float) -> list[np.ndarray]:
    """One boolean disc of ``radius`` per placement."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return [((rows - pl.centre[0]) ** 2 + (cols - pl.centre[1]) ** 2) <= radius**2 for pl in placements]


def beyond(discs: list[np.ndarray], margin: int) -> np.ndarray:
    """Pixels farther than ``margin`` px from every disc (the footprint is the disc dilated by it)."""
    return ~np.any([ndimage.binary_dilation(d, iterations=margin) for d in discs], axis=0)


def evaluate_lesions(
    segmenter: RibSegmenter,
    suppressor: RibSuppressor,
    cases: list[Case],
    per_cell: int = 50,
    seed: int = 0,
    steps: int | None = None,
) -> dict[str, Any]:
    """Retention, spurious change and mask stability over ``per_cell`` placements per
    (radius, contrast) and location; the product path on ``x`` and ``x + nodules``."""
    rng = np.random.default_rng(seed)
    cells = list(itertools.product(RADII, CONTRASTS))
    base: dict[str, tuple] = {}
    trials: list[dict[str, Any]] = []
    start = time.time()
    runs = 0
    for index in range(per_cell * len(cells)):
        radius, contrast = cells[index % len(cells)]
        case = cases[rng.integers(len(cases))]
        if case.case_id not in base:
            seg = segmenter.segment_image(case.image)
            bone, region = suppressor.bone_layer(case.image, seg.working_probabilities["lungs"], seed=0, steps=steps)
            ribs = case.ribs if case.paired else seg.structures["ribs"]
            base[case.case_id] = (seg, case.image.astype(np.float64) - bone, region, location_masks(case, ribs))
        seg, p, region, masks = base[case.case_id]
        placements = draw_placements(masks, rng)
        if placements is None:
            continue
        nodules = [nodule(case.image.shape, pl.centre, radius, contrast).astype(np.float64) for pl in placements]
        total = np.sum(nodules, axis=0)
        image2 = np.clip(case.image.astype(np.float64) + total, 0.0, 1.0).astype(np.float32)
        seg2 = segmenter.segment_image(image2)
        bone2, region2 = suppressor.bone_layer(image2, seg2.working_probabilities["lungs"], seed=0, steps=steps)
        p2 = image2.astype(np.float64) - bone2
        diff = p2 - p
        runs += 1
        discs = nodule_discs(p.shape, placements, radius)
        spurious = float(np.abs(diff - total)[beyond(discs, radius)].max())
        far = beyond(discs, 2)
        flips = {name: int((seg.structures[name] ^ seg2.structures[name])[far].sum()) for name in STRUCTURES}
        flips["region"] = int((region ^ region2)[far].sum())
        for pl, n in zip(placements, nodules):
            trials.append(
                {
                    "case": case.case_id,
                    "location": pl.location,
                    "radius": radius,
                    "contrast": contrast,
                    "retention": float((diff * n).sum() / (n * n).sum()),
                    "spurious": spurious,
                    **{f"flips_{k}": v for k, v in flips.items()},
                }
            )
    cells_out = {}
    for location, radius, contrast in itertools.product(LOCATIONS, RADII, CONTRASTS):
        values = [
            t["retention"]
            for t in trials
            if (t["location"], t["radius"], t["contrast"]) == (location, radius, contrast)
        ]
        if values:
            cells_out[f"{location} r{radius} c{contrast}"] = {
                "mean": float(np.mean(values)),
                "min": float(np.min(values)),
                "n": len(values),
            }
    per_run = [t["spurious"] for t in trials[::3]]  # one figure per run (its three nodules)
    return {
        "runs": runs,
        "trials": len(trials),
        "seconds": time.time() - start,
        "retention_worst_cell_mean": min(c["mean"] for c in cells_out.values()),
        "retention_lowest_trial": min(t["retention"] for t in trials),
        "spurious_max": max(per_run),
        "spurious_over_0.005": int(sum(s > 0.005 for s in per_run)),
        "flips_far": {name: int(sum(t[f"flips_{name}"] for t in trials[::3])) for name in (*STRUCTURES, "region")},
        "runs_with_flips": {
            name: int(sum(t[f"flips_{name}"] > 0 for t in trials[::3])) for name in (*STRUCTURES, "region")
        },
        "cells": cells_out,
    }


def _leaves(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Paired differences ``after - before`` of every per-case figure two eval JSONs share.

    Cases are matched by id; per figure: the mean difference, its standard error, how many cases
    went up and how many were compared. A difference smaller than two standard errors is noise."""
    old = {row["case"]: _leaves(row) for row in before["cases"]}
    new = {row["case"]: _leaves(row) for row in after["cases"]}
    common = [case for case in new if case in old]
    keys = sorted({k for case in common for k in new[case] if k in old[case]})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        diff = np.array([new[c][key] - old[c][key] for c in common if key in new[c] and key in old[c]])
        if not len(diff) or not np.all(np.isfinite(diff)):
            continue
        se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
        out[key] = {"diff": float(diff.mean()), "se": se, "higher": int((diff > 0).sum()), "n": len(diff)}
    return out


def write(figures: dict[str, Any], path: Path | None) -> None:
    text = json.dumps(figures, indent=1)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def evaluate_gate(segmenter: RibSegmenter, cases: list[Case], rg_files: dict[str, Path]) -> dict[str, Any]:
    """The input gate on every JSRT radiograph, RG1 in each encoding, phantoms, RG3 (an
    extremity) and synthetic images that are not chests: what it passes and what it refuses."""
    import pydicom

    from ribnode.models.preprocess import NotAChestError, read_radiograph
    from ribnode.phantom import generate_chest

    def verdict(image: np.ndarray) -> str:
        try:
            segmenter.check_chest(segmenter.segment_image(np.asarray(image, np.float32)))
        except NotAChestError as error:
            return str(error)
        return "pass"

    rows, cols = np.mgrid[:512, :512]
    rng = np.random.default_rng(0)
    groups: dict[str, dict[str, str]] = {
        "jsrt": {c.case_id: verdict(c.image) for c in cases},
        "rg": {name: verdict(read_radiograph(pydicom.dcmread(path)).image) for name, path in rg_files.items()},
        "phantom": {f"seed {s}": verdict(generate_chest(s, 512).radiograph) for s in range(10)},
        "not a chest": {
            "noise": verdict(rng.random((512, 512))),
            "flat": verdict(np.full((512, 512), 0.5)),
            "ramp": verdict(rows / 511.0),
            "disc": verdict(np.clip(np.hypot(rows - 256, cols - 256) / 300, 0, 1)),
            "bars": verdict(((cols // 32) % 2).astype(float)),
        },
    }
    return {
        name: {
            "passed": sum(v == "pass" for v in group.values()),
            "n": len(group),
            "refused": {k: v for k, v in group.items() if v != "pass"},
        }
        for name, group in groups.items()
    }
