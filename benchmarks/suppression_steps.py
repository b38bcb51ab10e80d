"""BSR (and PSNR gain) of the rib suppression against the number of DDIM sampling steps.

On the held-out JSRT / BSE-JSRT pairs at 512x512 listed in the weights' json, region from the
pairs' own rib masks (derived from each pair, local definition) dilated 5 px, seed 0, ONNX Runtime backend. Also the median seconds of one
512x512 bone-layer estimate (working-size sampling + upsampling) per step count.

    .venv/bin/python benchmarks/suppression_steps.py --steps 1 2 4 8 16 32 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.suppression import RibSuppressor  # noqa: E402
from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs  # noqa: E402
from ribnode.models.suppression.evaluate import evaluate_pairs, summary  # noqa: E402

from suppression_speed import cpu_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0, help="first N cases only (0: all)")
    parser.add_argument("--split", choices=("held-out", "train"), default="held-out",
                        help="train: the training cases (to choose the default steps without the held-out set)")
    parser.add_argument("--tile", type=int, default=None,
                        help="denoiser windows in px at the working size (0: whole image; default: the json's)")
    args = parser.parse_args()
    print(f"# BSR vs sampling steps, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}; threads {args.threads}; command: {' '.join(sys.argv)}\n")
    pairs = None
    print("| steps | BSR mean | BSR worst | PSNR gain dB mean | SSIM mean | s per 512 image (median) |")
    print("|---|---|---|---|---|---|")
    for steps in args.steps:
        sup = RibSuppressor(args.weights, steps=steps, device="cpu", threads=args.threads, tile_px=args.tile)
        if pairs is None:
            held = sup.config.training["held_out_cases" if args.split == "held-out" else "train_cases"]
            pairs = load_pairs(args.data, held[: args.limit] if args.limit else held)
        rows = evaluate_pairs(sup, pairs, "reference", seed=0)
        s = summary(rows)
        seconds = statistics.median(r.seconds for r in rows)
        print(f"| {steps} | {s['bsr']['mean']:.4f} | {s['bsr']['worst']:.4f} | {s['psnr_gain_db']['mean']:.2f} | "
              f"{s['ssim']['mean']:.4f} | {seconds:.3f} |", flush=True)
    windows = sup.info.parameters["tile_px"] or "the whole image"
    print(f"\n{len(pairs or [])} {args.split} pairs; seed 0; region: the pairs' rib masks (local definition) dilated 5 px; "
          f"denoiser windows: {windows}.")


if __name__ == "__main__":
    main()
