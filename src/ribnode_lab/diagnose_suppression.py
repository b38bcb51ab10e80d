"""Where the suppression's spurious change comes from: figures of ``docs/lab/2026-12-07-models.md``.

``python -m ribnode_lab.diagnose_suppression [--suppression-weights JSON] [--runs 12]`` adds three
nodules to held-out pairs (the lesion test's placements: on a rib, behind a clavicle, in open
lung) and splits the change of the weighted layer ``w * B`` outside the nodules' footprints
(each disc dilated by its radius, as ``eval-lesions`` measures it) into

- the layer's change, ``(B2 - B1) * w2``, itself split into the estimator's and the refiner's;
- the region weight's change, ``B1 * (w2 - w1)``.

It also prints how much of each nodule the estimator takes into its layer (1 - retention) and
the largest change of the estimator's layer in rings 1-2, 2-3, 3-5 and > 5 radii from the
nearest nodule's centre.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ribnode.models.segmentation.runtime import RibSegmenter
from ribnode.models.suppression.runtime import DEFAULT_CONFIG, RibSuppressor
from ribnode_lab.data import load_cases, nodule
from ribnode_lab.evaluate import beyond, draw_placements, location_masks, nodule_discs

CELLS = ((5, 0.01), (8, 0.02), (12, 0.04), (12, 0.01))
RINGS = ((1.0, 2.0), (2.0, 3.0), (3.0, 5.0), (5.0, np.inf))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--suppression-weights", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    segmenter = RibSegmenter(threads=args.threads)
    suppressor = RibSuppressor(args.suppression_weights, threads=args.threads)
    cases = [c for c in load_cases(args.data)[1] if c.paired]
    rng = np.random.default_rng(0)
    rows, cols = np.ogrid[:512, :512]
    totals: dict[str, list[float]] = {"layer": [], "estimator": [], "refiner": [], "weight": [], "taken": []}
    for run in range(args.runs):
        case = cases[rng.integers(len(cases))]
        placements = draw_placements(location_masks(case, case.ribs), rng)
        if placements is None:
            continue
        radius, contrast = CELLS[run % len(CELLS)]
        nodules = [nodule(case.image.shape, p.centre, radius, contrast) for p in placements]
        image2 = np.clip(case.image + np.sum(nodules, axis=0), 0, 1).astype(np.float32)
        w1 = suppressor.weight(segmenter.segment_image(case.image).working_probabilities["lungs"])
        w2 = suppressor.weight(segmenter.segment_image(image2).working_probabilities["lungs"])
        b1, e1 = suppressor.estimate(case.image, 0)
        b2, e2 = suppressor.estimate(image2, 0)
        assert b1.shape == (512, 512), "run it on a model whose working size is the data's (512)"
        outside = beyond(nodule_discs(case.image.shape, placements, radius), radius)
        parts = {
            "layer": (b2 - b1) * w2,
            "estimator": (e2 - e1) * w2,
            "refiner": ((b2 - e2) - (b1 - e1)) * w2,
            "weight": b1 * (w2 - w1),
        }
        for name, part in parts.items():
            totals[name].append(float(np.abs(part)[outside].max()))
        change = np.abs(e2 - e1)
        taken = [float(((e2 - e1) * n).sum() / (n * n).sum()) for n in nodules]
        totals["taken"].extend(taken)
        distance = np.min([np.hypot(rows - p.centre[0], cols - p.centre[1]) for p in placements], axis=0) / radius
        rings = "  ".join(f"{a:g}-{b:g}r {change[(distance >= a) & (distance < b)].max():.4f}" for a, b in RINGS)
        print(
            f"{case.case_id} r{radius} c{contrast}: outside the footprints, layer {totals['layer'][-1]:.4f} "
            f"(estimator {totals['estimator'][-1]:.4f}, refiner {totals['refiner'][-1]:.4f}), "
            f"weight {totals['weight'][-1]:.4f}; estimator takes {', '.join(f'{t:.2f}' for t in taken)} "
            f"of the nodules; estimator's change by ring: {rings}",
            flush=True,
        )
    print(
        "max over runs: "
        + ", ".join(f"{name} {max(values):.4f}" for name, values in totals.items() if name != "taken")
        + f"; nodule share taken into the estimator's layer: mean {np.mean(totals['taken']):.3f},"
        f" max {max(totals['taken']):.3f}"
    )


if __name__ == "__main__":
    main()
