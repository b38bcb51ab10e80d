"""The median along the ribs (``shape.rib_median``) and the edge taper (``shape.edge_taper``):
bone removed and nodules kept, by line length and taper.

Two parts, both on the held-out JSRT / BSE-JSRT pairs listed in the weights' json, region from
the pairs' own rib masks (local definition) dilated 5 px, seed 0, ONNX Runtime, the model's
default steps:

* ``bsr``: BSR and PSNR gain for each line length (0: off) and each source of the ribs'
  direction (``--direction``: the region dilated from the rib mask, as the runtime does, or the
  rib mask itself, tried in the tenth session), for the network's layer and for the true
  layer ``x - y`` of the pair put through the same filter (what the filter alone costs a
  perfect estimate); each of these with each ``--tapers`` reach (0: no taper; 5: the layer
  weighted 1 on the rib mask down to 0 at 5 px from it, the region's border);
* ``lesions``: the lesion-retention test of ``eval-lesions`` for each line length, from the
  *same* network runs: each radiograph with and without each nodule is run once, and every
  length and direction filters that one estimate. The placements are drawn exactly as
  ``eval-lesions`` draws them (same seed, same order, same ``--skip/--limit/--placements``), so
  length 0 is the plain ``eval-lesions`` run with the median off. One ``eval-lesions``-style
  JSON per variant is written (``PREFIX-L0.json``, ``PREFIX-L<length>-<direction>.json``, with
  ``-T<reach>`` for a taper), for
  ``lesions_table.py`` and ``lesions_paired.py``. ``--mask segmenter`` runs the product path
  (the shipped segmenter's mask), as ``eval-lesions --mask segmenter`` does.

    .venv/bin/python benchmarks/suppression_rib_median.py bsr --lengths 0 21 31 41 --tile 0 128
    .venv/bin/python benchmarks/suppression_rib_median.py bsr --lengths 0 31 --tapers 0 5
    .venv/bin/python benchmarks/suppression_rib_median.py lesions --lengths 31 --direction region ribs \\
        --skip 0 --limit 5 --placements 5 --prefix var/bench-suppression/median-0
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.metrics import suppression_metrics  # noqa: E402
from ribnode.models.segmentation import RibSegmenter  # noqa: E402
from ribnode.models.segmentation.data import read_png_unit  # noqa: E402
from ribnode.models.suppression import RibSuppressor  # noqa: E402
from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs  # noqa: E402
from ribnode.models.suppression.evaluate import lesion_trials  # noqa: E402
from ribnode.models.suppression.lesions import summarise  # noqa: E402
from ribnode.models.suppression.shape import edge_taper, rib_median  # noqa: E402

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


# (line length px at 512, 0: off; direction from "region" or "ribs"; taper reach px at 512, 0: off)
Variant = tuple[int, str, float]
OFF: Variant = (0, "", 0.0)


def variants(lengths: list[int], directions: list[str], tapers: list[float] | None = None) -> list[Variant]:
    lines = [(0, "")] + [(length, d) for length in lengths if length for d in directions]
    return [(length, d, float(t)) for t in sorted(set([0.0] + list(tapers or []))) for length, d in lines]


def variant_name(variant: Variant) -> str:
    name = "L0" if variant[0] == 0 else f"L{variant[0]}-{variant[1]}"
    return name + (f"-T{variant[2]:g}" if variant[2] else "")


def filtered(bone: np.ndarray, mask: np.ndarray, region: np.ndarray, variant: Variant,
             cache: dict[tuple[int, str], np.ndarray] | None = None) -> np.ndarray:
    """What ``RibSuppressor(rib_median_px_512=length, edge_taper_px_512=taper)`` subtracts, given
    its layer with both off, on a 512 image (working size = source size; checked by
    ``check_shortcut``); direction "region" is the runtime's filter, "ribs" reads the direction
    from the rib mask instead. ``cache`` keeps each median for the variants that share it."""
    length, direction, taper = variant
    out = bone
    if length:
        key = (length, direction)
        median = cache.get(key) if cache is not None else None
        if median is None:
            median = rib_median(bone, region, mask if direction == "ribs" else region, length) * region
            if cache is not None:
                cache[key] = median
        out = median
    if taper:
        out = out * edge_taper(mask, taper)
    return out


class SharedRuns:
    """Stands in for ``RibSuppressor`` in ``lesion_trials``: runs the network once per input
    image and hands out that layer filtered with the current ``variant``."""

    def __init__(self, suppressor: RibSuppressor) -> None:
        self.suppressor, self.variant = suppressor, OFF
        self.cache: dict[tuple[str, int], np.ndarray] = {}
        self.medians: dict[tuple[str, int], dict[tuple[int, str], np.ndarray]] = {}

    def region(self, mask: np.ndarray) -> np.ndarray:
        return self.suppressor.region(mask)

    def bone_layers(self, images: list[np.ndarray], mask: np.ndarray, seed: int) -> list[np.ndarray]:
        out = []
        region = self.region(mask)
        for image in images:
            key = (hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest(), seed)
            if key not in self.cache:
                self.cache[key] = self.suppressor.bone_layers([image], mask, seed)[0]
                self.medians[key] = {}
            out.append(filtered(self.cache[key], mask, region, self.variant, self.medians[key]))
        return out


def plain(weights: Path | None, threads: int, tile: int) -> RibSuppressor:
    """The suppressor with both post-steps off: the layer every variant filters."""
    return RibSuppressor(weights, device="cpu", threads=threads, tile_px=tile, rib_median_px_512=0,
                         edge_taper_px_512=0)


def check_shortcut(weights: Path | None, threads: int, tile: int, pair: Any, length: int, taper: float) -> None:
    """The shortcut above must equal the runtime's own filtered layer (median, then taper)."""
    off = plain(weights, threads, tile)
    on = RibSuppressor(weights, device="cpu", threads=threads, tile_px=tile, rib_median_px_512=length,
                       edge_taper_px_512=taper)
    region = off.region(pair.rib_mask)
    a = filtered(off.bone_layer(pair.radiograph, pair.rib_mask, 0), pair.rib_mask, region,
                 (length, "region", taper))
    b = on.bone_layer(pair.radiograph, pair.rib_mask, 0)
    if not np.array_equal(a, b):
        raise SystemExit(f"shortcut differs from the runtime by {np.abs(a - b).max():.3g}")


def header(args: argparse.Namespace, what: str) -> None:
    print(f"# {what}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {cpu_model()}; threads {args.threads}; command: {' '.join(sys.argv)}\n")


def run_bsr(args: argparse.Namespace) -> None:
    header(args, "BSR against the rib-median line length")
    print("| denoiser window | line px at 512 | direction from | taper px at 512 | BSR mean | BSR worst | "
          "PSNR gain dB mean | pairs lower than off | pairs lower than untapered | "
          "true layer through the filter: BSR mean (worst) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    chosen = variants(args.lengths, args.direction, args.tapers)
    pairs = None
    for tile in args.tile:
        sup = plain(args.weights, args.threads, tile)
        if pairs is None:
            held = sup.config.training["held_out_cases"]
            pairs = load_pairs(args.data, held[: args.limit] if args.limit else held)
            check_shortcut(args.weights, args.threads, tile, pairs[0], max(args.lengths), max(args.tapers))
        figures: dict[Variant, list[dict[str, float]]] = {v: [] for v in chosen}
        truth: dict[Variant, list[float]] = {v: [] for v in chosen}
        for pair in pairs:
            mask = pair.rib_mask
            region = sup.region(mask)
            bone = sup.bone_layer(pair.radiograph, mask, 0)
            x, y = pair.radiograph.astype(np.float64), pair.soft_tissue.astype(np.float64)
            true_bone = (np.clip(x - y, 0.0, None) * region).astype(np.float32)
            medians: dict[tuple[int, str], np.ndarray] = {}
            true_medians: dict[tuple[int, str], np.ndarray] = {}
            for v in chosen:
                figures[v].append(suppression_metrics(x, y, x - filtered(bone, mask, region, v, medians),
                                                      pair.region))
                truth[v].append(suppression_metrics(x, y, x - filtered(true_bone, mask, region, v, true_medians),
                                                    pair.region)["bsr"])
        off = np.array([f["bsr"] for f in figures[OFF]])
        for v in chosen:
            bsr = np.array([f["bsr"] for f in figures[v]])
            gain = np.mean([f["psnr_gain_db"] for f in figures[v]])
            lower = "-" if v == OFF else f"{int((bsr < off).sum())}/{len(bsr)}"
            untapered = np.array([f["bsr"] for f in figures[(v[0], v[1], 0.0)]])
            lower_taper = f"{int((bsr < untapered).sum())}/{len(bsr)}" if v[2] else "-"
            print(f"| {'whole image' if tile == 0 else f'{tile} px'} | {v[0] or 'off'} | {v[1] or '-'} | "
                  f"{f'{v[2]:g}' if v[2] else 'off'} | "
                  f"{bsr.mean():.4f} | {bsr.min():.4f} | {gain:+.2f} | {lower} | {lower_taper} | {np.mean(truth[v]):.4f} "
                  f"({np.min(truth[v]):.4f}) |", flush=True)


def run_lesions(args: argparse.Namespace) -> None:
    header(args, "Lesion retention against the rib-median line length")
    tile = args.tile[0]
    sup = plain(args.weights, args.threads, tile)
    held = sup.config.training["held_out_cases"]
    cases = sorted(held)[args.skip:]
    cases = cases[: args.limit] if args.limit else cases
    shared = SharedRuns(sup)
    # --mask segmenter: the product path, as ``eval-lesions --mask segmenter`` runs it (the
    # shipped segmenter's mask places the nodules and bounds the region)
    segmenter = RibSegmenter(device="cpu", threads=args.threads) if args.mask == "segmenter" else None
    rng = np.random.default_rng(args.seed)
    chosen = variants(args.lengths, args.direction, args.tapers)
    trials: dict[Variant, list[Any]] = {v: [] for v in chosen}
    for i, case in enumerate(cases):
        pair = load_pairs(args.data, [case])[0]
        if i == 0:
            check_shortcut(args.weights, args.threads, tile, pair, max(args.lengths), max(args.tapers))
        image, rib_mask = pair.radiograph, pair.rib_mask
        if segmenter is not None:
            image = read_png_unit(args.data / "source" / f"{case}.png", True).astype(np.float32)
            rib_mask = segmenter.segment_image(image).mask
        start = rng
        for v in chosen:
            rng = copy.deepcopy(start)  # every variant places the same nodules
            shared.variant = v
            trials[v] += lesion_trials(shared, case, image, rib_mask, args.placements, rng, seed=args.seed)
        shared.cache.clear()
        shared.medians.clear()
        print(f"{case}: {len(trials[OFF])} trials per variant", flush=True)
    info = dict(vars(sup.info))
    for v in chosen:
        table = summarise(trials[v])
        info["parameters"] = {**sup.info.parameters, "rib_median_line_px_512": v[0],
                              "rib_median_direction": v[1] or None, "edge_taper_px_512": v[2]}
        path = Path(f"{args.prefix}-{variant_name(v)}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "data": str(args.data), "model": info, "placements": args.placements, "cases": cases,
            "mask": args.mask,
            "cells": [{"location": k[0], "radius_512": k[1], "contrast": k[2], **c} for k, c in table.items()],
            "trials": [vars(t) for t in trials[v]]}, indent=2, default=str) + "\n")
        rib = [s["retention_mean"] for k, s in table.items() if k[0] == "rib"]
        lung = [s["retention_mean"] for k, s in table.items() if k[0] == "lung"]
        print(f"{variant_name(v)}: rib cells {min(rib):.4f}-{max(rib):.4f}, lung cells {min(lung):.4f}-"
              f"{max(lung):.4f}, spurious max {max(s['spurious_max'] for s in table.values()):.5f}; wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("bsr", "lesions"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[0, 21, 31, 41], help="px at 512; 0: off")
    parser.add_argument("--direction", nargs="+", choices=("region", "ribs"), default=["region"],
                        help="the ribs' direction from the region (the runtime's) or the rib mask")
    parser.add_argument("--tapers", type=float, nargs="+", default=[0.0],
                        help="edge taper reaches, px at 512 (0: off); every line variant with each")
    parser.add_argument("--tile", type=int, nargs="+", default=[0], help="denoiser windows (lesions: the first)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=0, help="at most N held-out cases (0: all)")
    parser.add_argument("--skip", type=int, default=0, help="lesions: leave out the first N held-out cases")
    parser.add_argument("--placements", type=int, default=5, help="lesions: centres per location and radius")
    parser.add_argument("--mask", choices=("reference", "segmenter"), default="reference",
                        help="lesions: the pair's rib mask, or the shipped segmenter's (the product path)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="var/bench-suppression/rib-median", help="lesions: JSON path prefix")
    args = parser.parse_args()
    (run_bsr if args.part == "bsr" else run_lesions)(args)


if __name__ == "__main__":
    main()
