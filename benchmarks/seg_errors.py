"""Where the rib segmenter's held-out errors lie, and whether a rib-shape post-step removes them.

Three measurements on the shipped segmenter (ONNX Runtime, probabilities brought back to
512x512 with ``to_source``, as ``eval-seg`` does), against the labels it was trained on:

1. **Errors by distance to the label's edge.** Every false-positive and false-negative pixel
   of the held-out masks, pooled, binned by its Euclidean distance to the nearest pixel of the
   other class of the label (1 px, 2 px, 3-4 px, 5-8 px, farther). It also gives the pooled
   Dice the masks would have if the errors up to each distance were not counted, and, for the
   false positives farther than 8.5 px from any labelled rib, the pair's bone layer there and
   whether they lie inside the area BSE-JSRT changed at all (its field: pixels changed by more
   than 1.5 grey levels, closed 5 times and hole-filled).
2. **How much a one-pixel edge is worth.** The mean Dice of each held-out label against itself
   dilated and eroded by one pixel (3x3 cross), and against the label re-derived after adding
   uniform noise of +-0.5 grey level (of 255) to the bone-suppressed image (seed 0): the size of
   a label's own rounding.
3. **Rib-shape post-steps on the probability map** before the threshold: isotropic Gaussian
   smoothing, and a mean or median along the rib through each pixel (the direction from the
   structure tensor of the thresholded mask, ``suppression.shape.rib_axis_orientation``, 12
   directions), at thresholds 0.4 / 0.5 / 0.6. Scored on every third training case (for
   choosing) and on the held-out cases.

Run: ``.venv/bin/python benchmarks/seg_errors.py --data ../shared/data/jsrt-bse-512``
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.metrics import dice  # noqa: E402
from ribnode.models.segmentation.data import (  # noqa: E402
    DEFAULT_LABELS, LABEL_DEFINITIONS, bone_layer, case_ids, load_pair, rib_mask,
)
from ribnode.models.segmentation.evaluate import select_cases  # noqa: E402
from ribnode.models.segmentation.runtime import RibSegmenter  # noqa: E402
from ribnode.models.suppression.shape import along_rib_lines, rib_axis_orientation  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402

BINS = (1.5, 2.5, 4.5, 8.5, np.inf)
BIN_NAMES = ("up to 1.5 px (touching the edge)", "1.5-2.5 px", "2.5-4.5 px", "4.5-8.5 px", "over 8.5 px")
THRESHOLDS = (0.4, 0.5, 0.6)


def error_bins(masks: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Pooled false positives / negatives by distance to the label's edge, in ``BINS``."""
    edges = (0.0,) + BINS
    fp, fn = np.zeros(len(BINS)), np.zeros(len(BINS))
    both = total = 0
    for predicted, label in masks:
        inside, outside = ndimage.distance_transform_edt(label), ndimage.distance_transform_edt(~label)
        distance = np.where(label, inside, outside)
        fp += np.histogram(distance[predicted & ~label], edges)[0]
        fn += np.histogram(distance[~predicted & label], edges)[0]
        both += int((predicted & label).sum())
        total += int(predicted.sum() + label.sum())
    errors = fp + fn
    forgiven = [2 * both / (2 * both + errors[k:].sum()) for k in range(1, len(BINS))]
    return {"false_positive": fp.tolist(), "false_negative": fn.tolist(),
            "share": (errors / errors.sum()).tolist(), "pooled_dice": 2 * both / total,
            "dice_without_errors_up_to": forgiven}


def count_far_positives(far: dict[str, int], predicted: np.ndarray, label: np.ndarray,
                        radiograph: np.ndarray, soft_tissue: np.ndarray) -> None:
    """Add one image's false positives farther than 8.5 px from the label to ``far``."""
    where = predicted & (ndimage.distance_transform_edt(~label) > BINS[-2])
    bone = bone_layer(radiograph, soft_tissue)[where]
    changed = np.abs(np.asarray(radiograph, dtype=np.float64) - soft_tissue) > 1.5 / 255.0
    field = ndimage.binary_fill_holes(ndimage.binary_closing(changed, iterations=5))
    far["bone under 0.004"] += int((bone < 0.004).sum())
    far["bone 0.004-0.008"] += int(((bone >= 0.004) & (bone < 0.008)).sum())
    far["bone over 0.008"] += int((bone >= 0.008).sum())
    far["outside the field"] += int((where & ~field).sum())
    far["all"] += int(where.sum())


def along_ribs(probability: np.ndarray, length: int, statistic: str, orientations: int = 12) -> np.ndarray:
    """The probability replaced by its mean or median along the rib through each pixel."""
    direction = rib_axis_orientation(probability >= 0.5, orientations)
    everywhere = np.ones(probability.shape, dtype=bool)
    return along_rib_lines(probability, everywhere, direction, length, statistic, orientations)


def post_steps() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    steps: dict[str, Callable[[np.ndarray], np.ndarray]] = {"none (shipped)": lambda p: p}
    for sigma in (1.0, 2.0):
        steps[f"Gaussian sigma {sigma:g} px"] = lambda p, s=sigma: ndimage.gaussian_filter(p, s)
    for length in (7, 15, 31):
        for statistic in ("mean", "median"):
            steps[f"{statistic} along the rib, {length} px"] = (
                lambda p, n=length, s=statistic: along_ribs(p, n, s))
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/jsrt-bse-512"))
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--labels", choices=LABEL_DEFINITIONS, default=DEFAULT_LABELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-post-steps", dest="post_steps", action="store_false",
                        help="only the error and label measurements (a few minutes)")
    args = parser.parse_args()

    segmenter = RibSegmenter(weights=args.weights, device="cpu", threads=args.threads)
    ids = case_ids(args.data)
    held = select_cases(ids, "held-out", segmenter.config)
    train = select_cases(ids, "train", segmenter.config)[::3]
    probability: dict[str, np.ndarray] = {}
    label: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    rounding, grown, shrunk = [], [], []
    far = {"bone under 0.004": 0, "bone 0.004-0.008": 0, "bone over 0.008": 0, "outside the field": 0, "all": 0}
    for case in held + train:
        pair = load_pair(args.data, case, labels=args.labels)
        probability[case] = segmenter.segment_image(pair.radiograph).probability.astype(np.float32)
        label[case] = np.asarray(pair.mask, dtype=bool)
        if case in held:
            noisy = pair.soft_tissue + rng.uniform(-0.5, 0.5, pair.soft_tissue.shape) / 255.0
            rounding.append(dice(label[case], rib_mask(pair.radiograph, noisy, args.labels)))
            grown.append(dice(label[case], ndimage.binary_dilation(label[case])))
            shrunk.append(dice(label[case], ndimage.binary_erosion(label[case])))
            count_far_positives(far, probability[case] >= 0.5, label[case], pair.radiograph, pair.soft_tissue)

    bins = error_bins([(probability[c] >= 0.5, label[c]) for c in held])
    results: dict[str, dict[str, float]] = {}
    for name, step in (post_steps() if args.post_steps else {}).items():
        smoothed = {c: step(probability[c]) for c in held + train}
        results[name] = {f"{split} {t}": float(np.mean([dice(smoothed[c] >= t, label[c]) for c in cases]))
                         for split, cases in (("train", train), ("held", held)) for t in THRESHOLDS}

    if args.json:
        args.json.write_text(json.dumps({"bins": bins, "far_positives": far, "rounding": rounding, "dilated": grown,
                                         "eroded": shrunk, "post_steps": results}, indent=1))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Where the held-out errors lie ({now})\n")
    print(f"Machine: 2-core CPU, {cpu_model()}, ONNX Runtime CPU, {args.threads} threads. "
          f"Weights: sha256 `{segmenter.info.weights_sha256}`; labels `{args.labels}`; "
          f"{len(held)} held-out cases, {len(train)} training cases (every third).  ")
    print(f"Command: `.venv/bin/python benchmarks/seg_errors.py {' '.join(sys.argv[1:])}`\n")
    print("| distance to the label's edge | false positives | false negatives | share of all errors | pooled Dice without the errors up to here |")
    print("|---|---|---|---|---|")
    forgiven = bins["dice_without_errors_up_to"] + [1.0]
    for k, name in enumerate(BIN_NAMES):
        print(f"| {name} | {bins['false_positive'][k]:.0f} | {bins['false_negative'][k]:.0f} | "
              f"{bins['share'][k]:.3f} | {forgiven[k]:.4f} |")
    print(f"\nPooled held-out Dice as measured: {bins['pooled_dice']:.4f}.\n")
    print(f"False positives over 8.5 px from any labelled rib: {far['all']}; where the pair's bone layer "
          f"is under 0.004: {far['bone under 0.004']}, 0.004-0.008: {far['bone 0.004-0.008']}, over "
          f"0.008: {far['bone over 0.008']}; outside the area BSE-JSRT changed: {far['outside the field']} "
          f"({far['outside the field'] / max(far['all'], 1):.3f}).\n")
    print(f"A label against itself: dilated by 1 px {np.mean(grown):.4f}, eroded by 1 px "
          f"{np.mean(shrunk):.4f}; re-derived with +-0.5 grey level of noise on the "
          f"bone-suppressed image {np.mean(rounding):.4f} (min {np.min(rounding):.4f}).\n")
    if not results:
        return
    print("| post-step on the probability | " + " | ".join(
        f"{split} Dice @ {t}" for split in ("train", "held-out") for t in THRESHOLDS) + " |")
    print("|---|" + "---|" * (2 * len(THRESHOLDS)))
    for name, scores in results.items():
        print(f"| {name} | " + " | ".join(f"{scores[f'{split} {t}']:.4f}" for split in ("train", "held")
                                          for t in THRESHOLDS) + " |")


if __name__ == "__main__":
    main()
