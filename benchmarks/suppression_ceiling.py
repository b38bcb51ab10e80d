"""The BSR ceiling of the design: the *true* bone layer, subtracted only inside the region.

On the held-out pairs at 512: ``p = x - B_true * R`` with R the rib mask dilated 5 px (the
most any model can reach with this region; a model on a 512 working grid has exactly this
ceiling on these 512 pairs), then the same with ``B_true`` passed through a smaller working
size and back (``to_working`` -> upsampling: linear, or guided), clamped >= 0 as the model's
estimate is. For each rib-mask definition (``--labels``: local, reference). Shows how much of
the gap to BSR 1 is the design (region, resolution) and how much the network.

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
    parser.add_argument("--working", type=int, default=256, help="the smaller working size compared")
    parser.add_argument("--labels", nargs="+", default=["local", "reference"])
    args = parser.parse_args()
    _, held = split_held_out(case_ids(args.data))
    variants = {"region only (512)": None, f"{args.working} + linear": ("linear", {}),
                f"{args.working} + guided r1 eps1e-4": ("guided", {"radius": 1, "eps": 1e-4})}
    print(f"# BSR ceiling, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{len(held)} held-out pairs; command: {' '.join(sys.argv)}\n")
    from ribnode.models.metrics import ssim

    print("| rib masks | true bone layer ... | BSR mean | BSR worst | PSNR gain dB mean |")
    print("|---|---|---|---|---|")
    for labels, name, how in [(lab, n, h) for lab in args.labels for n, h in variants.items()]:
        pairs = load_pairs(args.data, held, labels=labels)
        bsr, gain, identity = [], [], []
        for pair in pairs:
            x, y = pair.radiograph.astype(np.float64), pair.soft_tissue.astype(np.float64)
            bone = x - y
            if how is not None:
                working = np.maximum(to_working(bone.astype(np.float32), args.working), 0.0)
                bone = upsample_bone(working, x.shape, how[0], guide=pair.radiograph, **how[1])
            p = x - bone * pair.region
            bsr.append(bone_suppression_ratio(x, y, p))
            gain.append(psnr(y, p) - psnr(y, x))
            identity.append((psnr(y, x), ssim(y, x)))
        print(f"| {labels} | {name} | {np.mean(bsr):.4f} | {np.min(bsr):.4f} | {np.mean(gain):.2f} |")
    print(f"\nidentity (p = x) on these {len(held)} pairs: PSNR {np.mean([i[0] for i in identity]):.2f} dB, "
          f"SSIM {np.mean([i[1] for i in identity]):.4f} (means)")


if __name__ == "__main__":
    main()
