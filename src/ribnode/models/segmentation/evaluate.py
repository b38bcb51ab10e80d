"""Evaluation of the rib segmentation on radiograph / bone-suppressed PNG pairs (``eval-seg``).

Torch-free: the shipped (or given) ONNX weights run in ONNX Runtime, the reference masks are
derived by the reference definition (or read from ``DIR/masks/``), and Dice, IoU and HD95 are
computed at the pairs' own resolution (512x512 for the shared data) per
``../shared/guides/metrics.md``: probabilities are brought back to the source matrix with
``to_source`` before thresholding.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ribnode.models.metrics import segmentation_metrics
from ribnode.models.segmentation.data import DEFAULT_LABELS, case_ids, load_pair
from ribnode.models.segmentation.runtime import RibSegmenter

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def select_cases(all_ids: list[str], cases: str | None, config: dict[str, Any]) -> list[str]:
    """Cases to evaluate: all, the weights' recorded ``held-out``/``train`` split, or a comma list."""
    if cases is None or cases == "all":
        return all_ids
    if cases in ("held-out", "train"):
        split = (config.get("training") or {}).get("split")
        if not split:
            raise ValueError(f"--cases {cases}: the weights' JSON records no training split")
        wanted = split["held_out" if cases == "held-out" else "train"]
    else:
        wanted = [c.strip() for c in cases.split(",") if c.strip()]
    missing = sorted(set(wanted) - set(all_ids))
    if missing:
        raise ValueError(f"cases not found in the data folder: {', '.join(missing)}")
    return [c for c in all_ids if c in set(wanted)]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each figure and the worst image (lowest Dice)."""
    keys = [k for k in ("dice", "iou", "hd95_px", "hd95_mm") if k in rows[0]]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    worst = min(rows, key=lambda r: r["dice"])
    return {"count": len(rows), "mean": mean, "worst": worst,
            "min_dice": worst["dice"], "max_hd95_px": max(r["hd95_px"] for r in rows)}


def evaluate_folder(data: Path, weights: Path | None = None, cases: str | None = None,
                    inverted: bool = True, threads: int = 0,
                    labels: str = DEFAULT_LABELS) -> dict[str, Any]:
    """Per-image Dice/IoU/HD95 of the segmenter on ``data``, with mean and worst image.

    ``labels`` names the rib-mask definition scored against (one of ``LABEL_DEFINITIONS``).
    """
    segmenter = RibSegmenter(weights=weights, device="auto", threads=threads)
    ids = select_cases(case_ids(Path(data)), cases, segmenter.config)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for case in ids:
        pair = load_pair(Path(data), case, inverted=inverted, labels=labels)
        result = segmenter.segment_image(pair.radiograph)
        row = {"case": case, **segmentation_metrics(result.mask, pair.mask)}
        row["label_fraction"] = float(pair.mask.mean())
        rows.append(row)
        logger.debug("%s: %s", case, row)
    if not rows:
        raise ValueError(f"no cases to evaluate in {data}")
    return {"data": str(data), "weights": str(segmenter.weights),
            "weights_sha256": segmenter.info.weights_sha256, "cases": cases or "all",
            "inverted": inverted, "labels": labels, "resolution": list(pair.mask.shape),
            "seconds": time.perf_counter() - started, "images": rows, **summarise(rows)}


def _fmt(value: float, digits: int = 4) -> str:
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: one line per image, then mean and worst."""
    lines = [f"weights {report['weights']} (sha256 {report['weights_sha256'][:16]}...)",
             f"data {report['data']} cases={report['cases']} labels={report.get('labels', 'reference')} "
             f"at {report['resolution'][0]}x{report['resolution'][1]} (HD95 in px)",
             f"{'case':<14}{'Dice':>8}{'IoU':>8}{'HD95px':>9}"]
    for row in report["images"]:
        lines.append(f"{row['case']:<14}{_fmt(row['dice']):>8}{_fmt(row['iou']):>8}"
                     f"{_fmt(row['hd95_px'], 2):>9}")
    mean, worst = report["mean"], report["worst"]
    lines.append(f"{'mean':<14}{_fmt(mean['dice']):>8}{_fmt(mean['iou']):>8}"
                 f"{_fmt(mean['hd95_px'], 2):>9}   ({report['count']} images)")
    lines.append(f"worst: {worst['case']} Dice {_fmt(worst['dice'])} IoU {_fmt(worst['iou'])} "
                 f"HD95 {_fmt(worst['hd95_px'], 2)} px; largest HD95 {_fmt(report['max_hd95_px'], 2)} px")
    return "\n".join(lines)
