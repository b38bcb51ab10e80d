"""The BSR ceiling of the design: the *true* bone layer, subtracted only inside the region.

On the held-out pairs at 512: ``p = x - B_true * R`` with R the reference rib mask dilated 5 px
(the most any model can reach with this region), then the same with ``B_true`` passed through
the 256 working size and back (``to_working`` -> upsampling: linear, or guided), clamped >= 0
as the model's estimate is. Shows how much of the gap to BSR 1 is the design (region,
resolution) and how much the network.

    .venv/bin/python benchmarks/suppression_ceiling.py
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.metrics import bone_suppression_ratio, psnr  # noqa: E402
from ribnode.models.preprocess import to_working  # noqa: E402
from ribnode.models.segmentation.data import case_ids  # noqa: E402
from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs, split_held_out  # noqa: E402
from ribnode.models.suppression.upsample import upsample_bone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--working", type=int, default=256)
    args = parser.parse_args()
    _, held = split_held_out(case_ids(args.data))
    pairs = load_pairs(args.data, held)
    variants = {"region only (512)": None, f"{args.working} + linear": ("linear", {}),
                f"{args.working} + guided r1 eps1e-4": ("guided", {"radius": 1, "eps": 1e-4})}
    print(f"# BSR ceiling, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{len(pairs)} held-out pairs; command: {' '.join(sys.argv)}\n")
    from ribnode.models.metrics import ssim

    x_y = [(p.radiograph.astype(np.float64), p.soft_tissue.astype(np.float64)) for p in pairs]
    print(f"identity (p = x): PSNR {np.mean([psnr(y, x) for x, y in x_y]):.2f} dB, "
          f"SSIM {np.mean([ssim(y, x) for x, y in x_y]):.4f} (means)\n")
    print("| true bone layer ... | BSR mean | BSR worst | PSNR gain dB mean |")
    print("|---|---|---|---|")
    for name, how in variants.items():
        bsr, gain = [], []
        for pair in pairs:
            x, y = pair.radiograph.astype(np.float64), pair.soft_tissue.astype(np.float64)
            bone = x - y
            if how is not None:
                working = np.maximum(to_working(bone.astype(np.float32), args.working), 0.0)
                bone = upsample_bone(working, x.shape, how[0], guide=pair.radiograph, **how[1])
            p = x - bone * pair.region
            bsr.append(bone_suppression_ratio(x, y, p))
            gain.append(psnr(y, p) - psnr(y, x))
        print(f"| {name} | {np.mean(bsr):.4f} | {np.min(bsr):.4f} | {np.mean(gain):.2f} |")


if __name__ == "__main__":
    main()
