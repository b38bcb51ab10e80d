"""Is the amplitude gain low because the estimator shrinks, or because it cannot know the layer?

``python -m ribnode_lab.diagnose_amplitude [--suppression-weights JSON] [--cases held-out|train]``
runs the estimator alone on the paired cases (product path: the region from the shipped
segmentation) and prints

- the amplitude gain, the slope of the estimate ``e`` on the true layer ``b`` (what the issue's
  target asks to be 0.9-1.1);
- the calibration slope, the slope of ``b`` on ``e``, pooled over the cases: 1 for an estimator
  that returns the conditional mean of the layer (what a squared-error loss converges to); above
  1 for one that shrinks, as an L1 loss's conditional median can on a non-negative target;
- BSR with the layer multiplied by the calibration slope and by a few fixed gains.

For a calibrated estimator the amplitude gain equals the share of the layer's energy it
explains, so it rises only with what the estimator knows of the layer (BSR), not with a gain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ribnode.models.segmentation.runtime import RibSegmenter
from ribnode.models.suppression.runtime import DEFAULT_CONFIG, RibSuppressor
from ribnode_lab.data import load_cases
from ribnode_lab.metrics import suppression_metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--suppression-weights", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--cases", choices=("held-out", "train"), default="held-out")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    train, held = load_cases(args.data)
    cases = [c for c in (held if args.cases == "held-out" else train) if c.paired]
    segmenter = RibSegmenter(threads=args.threads)
    suppressor = RibSuppressor(args.suppression_weights, threads=args.threads)
    layers = []
    for case in cases:
        lungs = segmenter.segment_image(case.image).working_probabilities["lungs"]
        estimate, region = suppressor.bone_layer(case.image, lungs, seed=0, refine=False)
        x, y = case.image.astype(np.float64), case.soft.astype(np.float64)  # type: ignore[union-attr]
        layers.append((x, y, estimate.astype(np.float64), region))
    e_b = sum(float((e[r] * (x - y)[r]).sum()) for x, y, e, r in layers)
    b_b = sum(float(((x - y)[r] ** 2).sum()) for x, y, e, r in layers)
    e_e = sum(float((e[r] ** 2).sum()) for x, y, e, r in layers)
    calibration = e_b / e_e
    print(f"{len(layers)} {args.cases} pairs: amplitude gain (e on b, pooled) {e_b / b_b:.4f}")
    print(f"calibration slope (b on e, pooled) {calibration:.4f}")
    for gain in (1.0, calibration, 1.1, 1.2, 1.4):
        bsr = [suppression_metrics(x, y, x - gain * e, r)["bsr"] for x, y, e, r in layers]
        print(f"layer x {gain:.3f}: BSR {np.mean(bsr):.4f} (worst {np.min(bsr):.4f})")


if __name__ == "__main__":
    main()
