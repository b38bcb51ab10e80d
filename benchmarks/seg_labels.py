"""Which rib-mask definition is better: the shared tool's reference or ribnode's local one.

There are no expert rib labels for the JSRT pairs, so two measurable properties are compared:

1. **Correctness where the truth is known.** The synthetic generator renders a chest with an
   exact rib mask and an exact bone-free image. Each definition is applied to that pair and
   scored (Dice) against the exact mask inside the lung fields (the JSRT labels, like
   BSE-JSRT, only cover ribs over the lungs).
2. **Stability on the real pairs.** BSE-JSRT's bone layer is an algorithm's estimate whose
   strength varies from film to film. A good definition should not change when that strength
   changes: each definition is applied to ``y + s (x - y)`` for s = 0.8 and 1.25, and the Dice
   to its own mask at s = 1 is reported (mean over every 4th JSRT case), with the mean, lowest
   and highest labelled fraction of the image.

Prints a Markdown section for ``docs/benchmarks/segmentation.md``. Run:

    .venv/bin/python benchmarks/seg_labels.py --data ../shared/data/jsrt-bse-512
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model  # noqa: E402
from ribnode.models.metrics import dice  # noqa: E402
from ribnode.models.segmentation.data import (  # noqa: E402
    LABEL_DEFINITIONS, case_ids, read_png_unit, rib_mask)
from ribnode.models.synthetic import generate_chest  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/jsrt-bse-512"))
    parser.add_argument("--synthetic", type=int, default=12, help="synthetic chests (seeds 0..N-1)")
    args = parser.parse_args()

    synthetic: dict[str, list[float]] = {name: [] for name in LABEL_DEFINITIONS}
    for seed in range(args.synthetic):
        chest = generate_chest(seed, 512, nodules=0)
        lung = chest.lung_mask
        assert lung is not None
        for name in LABEL_DEFINITIONS:
            mask = rib_mask(chest.radiograph, chest.soft_tissue, name)
            synthetic[name].append(dice(mask & lung, chest.rib_mask & lung))
    cases = case_ids(args.data)[::4]
    stability: dict[str, list[float]] = {name: [] for name in LABEL_DEFINITIONS}
    fraction: dict[str, list[float]] = {name: [] for name in LABEL_DEFINITIONS}
    for case in cases:
        x = read_png_unit(args.data / "source" / f"{case}.png", True)
        y = read_png_unit(args.data / "target" / f"{case}.png", True)
        for name in LABEL_DEFINITIONS:
            base = rib_mask(x, y, name)
            stability[name].append(float(np.mean([dice(base, rib_mask(y + s * (x - y), y, name))
                                                   for s in (0.8, 1.25)])))
            fraction[name].append(float(base.mean()))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Rib-mask definitions compared ({now})\n")
    print(f"Machine: 2-core CPU, {cpu_model()}. Command: `.venv/bin/python benchmarks/seg_labels.py "
          f"--data {args.data}`. {args.synthetic} synthetic chests at 512 (seeds 0-{args.synthetic - 1}); "
          f"{len(cases)} JSRT pairs (every 4th case id).\n")
    print("| definition | synthetic: Dice to the exact rib mask in the lungs, mean | worst | "
          "JSRT: Dice to itself with the bone layer x0.8 / x1.25, mean | JSRT labelled fraction mean (min-max) |")
    print("|---|---|---|---|---|")
    for name in LABEL_DEFINITIONS:
        f = fraction[name]
        print(f"| {name} | {np.mean(synthetic[name]):.4f} | {np.min(synthetic[name]):.4f} | "
              f"{np.mean(stability[name]):.4f} | {np.mean(f):.3f} ({np.min(f):.3f}-{np.max(f):.3f}) |")


if __name__ == "__main__":
    main()
