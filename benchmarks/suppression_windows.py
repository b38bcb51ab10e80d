"""BSR of the rib suppression against the window the denoiser runs on.

The denoiser is trained on 128x128 crops of the 512 working grid. This runs it on the whole
working image (0) and on overlapping windows of several sides (``TiledDenoiser``), on the
held-out JSRT / BSE-JSRT pairs listed in the weights' json: region from the pairs' own rib masks
(local definition) dilated 5 px, seed 0, ONNX Runtime, the model's default steps. Each setting
is written as ``SIDE/STRIDE`` in px at the working size; the table also counts the pairs whose
BSR is higher than with the whole image.

    .venv/bin/python benchmarks/suppression_windows.py --windows 0 128/64 128/32 96/48 192/96 256/128
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.suppression import RibSuppressor  # noqa: E402
from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs  # noqa: E402
from ribnode.models.suppression.evaluate import evaluate_pairs, summary  # noqa: E402

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def parse_window(text: str) -> tuple[int, int]:
    """``"0"`` (whole image), ``"128"`` (stride: half) or ``"128/64"`` -> (side, stride)."""
    side, _, stride = text.partition("/")
    return int(side), int(stride or 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", nargs="+", default=["0", "128/64"], help="SIDE/STRIDE px; 0: whole image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0, help="first N held-out cases only (0: all)")
    parser.add_argument("--json", type=Path, default=None, help="also write per-case BSR here")
    args = parser.parse_args()
    print(f"# BSR vs denoiser window, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}; threads {args.threads}; command: {' '.join(sys.argv)}\n")
    print("| window px (side/stride) | BSR mean | BSR worst | PSNR gain dB mean | pairs higher than whole | "
          "s per 512 image (median) |")
    print("|---|---|---|---|---|---|")
    pairs, baseline, report = None, None, {}
    for text in args.windows:
        side, stride = parse_window(text)
        sup = RibSuppressor(args.weights, device="cpu", threads=args.threads, tile_px=side, tile_stride_px=stride)
        if pairs is None:
            held = sup.config.training["held_out_cases"]
            pairs = load_pairs(args.data, held[: args.limit] if args.limit else held)
        rows = evaluate_pairs(sup, pairs, "reference", seed=0)
        s = summary(rows)
        bsr = np.array([r.figures["bsr"] for r in rows])
        if side == 0:
            baseline = bsr
        higher = f"{int((bsr > baseline).sum())} of {len(bsr)}" if baseline is not None and side else "-"
        name = "whole image" if side == 0 else f"{side}/{sup.pipeline.stride}"
        print(f"| {name} | {s['bsr']['mean']:.4f} | {s['bsr']['worst']:.4f} | {s['psnr_gain_db']['mean']:.2f} | "
              f"{higher} | {statistics.median(r.seconds for r in rows):.3f} |", flush=True)
        report[name] = {"bsr": bsr.tolist(), "cases": [r.case_id for r in rows]}
    print(f"\n{len(pairs or [])} held-out pairs; seed 0; {sup.steps} step(s); region: the pairs' rib masks "
          "(local definition) dilated 5 px.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
