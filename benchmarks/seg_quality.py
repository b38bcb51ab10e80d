"""Rib-segmentation quality on the held-out JSRT/BSE-JSRT pairs (Dice, IoU, HD95 at 512x512).

Runs ``eval-seg``'s evaluation (ONNX Runtime, probabilities brought back to 512x512 with
``to_source`` before thresholding) on the held-out split recorded in the weights' JSON and on
the training split, against the labels the model was trained on (``local`` by default) and,
on the held-out split, against the shared tool's ``reference`` labels too. As context it also
measures how stable the reference labels are: the Dice between the reference masks at
threshold 0.02 and at 0.015 / 0.025 of full scale. Prints a Markdown section for
``docs/benchmarks/segmentation.md``. Run:

    .venv/bin/python benchmarks/seg_quality.py --data ../shared/data/jsrt-bse-512
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.metrics import dice  # noqa: E402
from ribnode.models.segmentation.data import DEFAULT_LABELS, LABEL_DEFINITIONS as LABELS, load_pair, reference_rib_mask  # noqa: E402
from ribnode.models.segmentation.evaluate import evaluate_folder  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402


def label_stability(data: Path, cases: list[str]) -> dict[str, float]:
    """Mean Dice of the reference masks at 0.02 against the same definition at 0.015 and 0.025."""
    low, high = [], []
    for case in cases:
        pair = load_pair(data, case, labels="reference")
        low.append(dice(pair.mask, reference_rib_mask(pair.radiograph, pair.soft_tissue, 0.015)))
        high.append(dice(pair.mask, reference_rib_mask(pair.radiograph, pair.soft_tissue, 0.025)))
    return {"threshold_0.015": float(np.mean(low)), "threshold_0.025": float(np.mean(high))}


def row(name: str, report: dict[str, Any]) -> str:
    mean, worst = report["mean"], report["worst"]
    return (f"| {name} | {report['count']} | {mean['dice']:.4f} | {mean['iou']:.4f} | "
            f"{mean['hd95_px']:.2f} | {worst['case']}: Dice {worst['dice']:.4f}, "
            f"HD95 {worst['hd95_px']:.2f} px | {report['max_hd95_px']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/jsrt-bse-512"))
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write all figures as JSON")
    parser.add_argument("--labels", choices=LABELS, default=DEFAULT_LABELS,
                        help="the labels the model was trained on (scored first)")
    args = parser.parse_args()

    labels = args.labels
    held = evaluate_folder(args.data, weights=args.weights, cases="held-out", threads=2, labels=labels)
    train = evaluate_folder(args.data, weights=args.weights, cases="train", threads=2, labels=labels)
    other = "local" if labels == "local-open" else ("reference" if labels == "local" else "local-open")
    held_other = evaluate_folder(args.data, weights=args.weights, cases="held-out", threads=2, labels=other)
    stability = label_stability(args.data, [r["case"] for r in held["images"]])
    if args.json:
        args.json.write_text(json.dumps({"held_out": held, "train": train, f"held_out_{other}": held_other,
                                         "label_stability": stability}, indent=1))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Rib segmentation quality ({now})\n")
    print(f"Machine: 2-core CPU, {cpu_model()}, ONNX Runtime CPU.  ")
    print(f"Weights: sha256 `{held['weights_sha256']}`; data `{args.data}` (512x512, HD95 in px "
          f"at 512, no pixel spacing for PNGs); labels: `{labels}` definition (the model's), and "
          f"`{other}` for comparison.  ")
    weights = f" --weights {args.weights}" if args.weights is not None else ""
    print(f"Command: `.venv/bin/python benchmarks/seg_quality.py --data {args.data}{weights}`\n")
    print("| split | images | mean Dice | mean IoU | mean HD95 px | worst image (lowest Dice) | largest HD95 px |")
    print("|---|---|---|---|---|---|---|")
    print(row(f"held out, {labels} labels", held))
    print(row(f"train (seen in training), {labels} labels", train))
    print(row(f"held out, {other} labels", held_other))
    print(f"\nReference-label stability on the held-out cases: Dice(mask@0.02, mask@0.015) = "
          f"{stability['threshold_0.015']:.4f}, Dice(mask@0.02, mask@0.025) = "
          f"{stability['threshold_0.025']:.4f}.\n")
    print("Held-out images, one by one:\n")
    print(f"| case | Dice ({labels}) | IoU | HD95 px | {labels} rib fraction | Dice ({other}) | {other} rib fraction |")
    print("|---|---|---|---|---|---|---|")
    for image, alt in zip(held["images"], held_other["images"]):
        print(f"| {image['case']} | {image['dice']:.4f} | {image['iou']:.4f} | "
              f"{image['hd95_px']:.2f} | {image['label_fraction']:.3f} | {alt['dice']:.4f} | "
              f"{alt['label_fraction']:.3f} |")


if __name__ == "__main__":
    main()
