"""How much of the bone layer survives the trip to the working grid and back, at 2048 px.

The issue asks for edge-aware upsampling "so rib borders stay sharp at 2000 px". This measures
what the upsampling itself costs, with no network in the way: synthetic chests rendered at
2048x2048 (``ribnode.models.synthetic``, exact bone layer ``B``), ``B`` brought to the working
grid (``to_working``, as the model sees the radiograph) and back to 2048 by each method, then
``p = x - B_up`` scored by BSR against the exact bone-free image (1 = nothing lost). Methods:
linear (``to_source``, the default) and the guided filter at several radii/eps. Run:

    .venv/bin/python benchmarks/suppression_upsampling.py
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model  # noqa: E402
from ribnode.models.metrics import bone_suppression_ratio  # noqa: E402
from ribnode.models.preprocess import to_working  # noqa: E402
from ribnode.models.suppression.upsample import upsample_bone  # noqa: E402
from ribnode.models.synthetic import generate_chest  # noqa: E402

METHODS = {
    "linear": ("linear", {}),
    "guided r1 eps1e-5": ("guided", {"radius": 1, "eps": 1e-5}),
    "guided r1 eps1e-4": ("guided", {"radius": 1, "eps": 1e-4}),
    "guided r2 eps1e-4": ("guided", {"radius": 2, "eps": 1e-4}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--working", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--chests", type=int, default=4)
    args = parser.parse_args()
    scores: dict[tuple[int, str], list[float]] = {}
    for seed in range(args.chests):
        chest = generate_chest(100 + seed, args.size, nodules=2)
        x, y = chest.radiograph.astype(np.float64), chest.soft_tissue.astype(np.float64)
        bone = (x - y).astype(np.float32)
        for working in args.working:
            small = np.maximum(to_working(bone, working), 0.0)
            for name, (method, kw) in METHODS.items():
                up = upsample_bone(small, x.shape, method, guide=chest.radiograph, **kw)
                scores.setdefault((working, name), []).append(bone_suppression_ratio(x, y, x - up))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Upsampling of the bone layer to {args.size} px ({now})\n")
    print(f"Machine: 2-core CPU, {cpu_model()}. Command: `.venv/bin/python benchmarks/suppression_upsampling.py`."
          f" {args.chests} synthetic chests at {args.size}x{args.size} (seeds 100-{99 + args.chests}), exact "
          "bone layer through the working grid and back; BSR of `x - B_up` against the exact bone-free image.\n")
    print("| working grid | method | BSR mean | BSR worst |")
    print("|---|---|---|---|")
    for (working, name), values in scores.items():
        print(f"| {working} | {name} | {np.mean(values):.4f} | {np.min(values):.4f} |")


if __name__ == "__main__":
    main()
