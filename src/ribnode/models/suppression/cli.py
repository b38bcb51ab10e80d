"""Subcommands of the rib suppression: ``train-suppression``, ``eval-suppression``, ``eval-lesions``.

Heavy libraries (torch, diffusers, onnxruntime) are imported inside the handlers only.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ribnode.models.segmentation.data import LABEL_DEFINITIONS as LABELS
from ribnode.models.suppression.data import REGION_LABELS

logger = logging.getLogger(__name__)

_DATA_HELP = "folder with source/ and target/ PNG pairs (default: ../shared/data/jsrt-bse-512)"


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register this package's subcommands on the ``ribnode`` parser."""
    _add_train(sub)
    _add_eval(sub)
    _add_lesions(sub)


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None, help="rib-suppression .onnx (or .pt with --backend torch)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0: runtime default)")
    parser.add_argument("--steps", type=int, default=None,
                        help="DDIM sampling steps (default: the model's own, in its json)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed used for every image")
    parser.add_argument("--upsampling", choices=("linear", "guided"), default="linear")
    parser.add_argument("--rib-shape", type=int, default=None, metavar="PX512",
                        help="keep only the rib-shaped bone layer: line length in px at 512 (0 off; default: the json's)")
    parser.add_argument("--rib-median", type=int, default=None, metavar="PX512",
                        help="replace the bone layer by its median along the ribs: line length in px at 512 "
                             "(0 off; default: the json's)")
    parser.add_argument("--edge-taper", type=float, default=None, metavar="PX512",
                        help="fade the bone layer from the rib mask to 0 at this distance, px at 512 "
                             "(0 off; default: the json's)")
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="run the denoiser on windows of PX at the working size (0: whole image; default: the json's)")
    parser.add_argument("--tile-stride", type=int, default=None, metavar="PX",
                        help="step between windows (0: half a window; default: the json's)")
    parser.add_argument("--seg-weights", type=Path, default=None, help="rib-segmentation .onnx (segmenter masks)")


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=None, help=_DATA_HELP)
    parser.add_argument("--no-inverted", dest="inverted", action="store_false",
                        help="PNGs are already bone-bright (default: stored inverted, use 1 - x)")
    parser.add_argument("--cases", choices=("all", "held-out"), default="all",
                        help="held-out: only the cases the weights' json lists as held out")
    parser.add_argument("--limit", type=int, default=0, help="at most this many cases (0: all)")
    parser.add_argument("--skip", type=int, default=0,
                        help="leave out the first N cases (with --limit: split one run over processes)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train-suppression", help="train the diffusion rib-suppression denoiser")
    p.add_argument("--data", type=Path, default=None, help=_DATA_HELP)
    p.add_argument("--no-inverted", dest="inverted", action="store_false")
    p.add_argument("--output", type=Path, default=None, help="run folder (default runs/suppression/<mode>)")
    p.add_argument("--mode", choices=("diffusion", "regression"), default="diffusion")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128, help="training crop side at the working size")
    p.add_argument("--working-size", type=int, default=512,
                   help="side of the square working grid the bone layer is estimated on")
    p.add_argument("--labels", choices=LABELS, default=REGION_LABELS,
                   help="rib-mask definition of the training region (segmentation.data)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=45.0, help="time limit; the LR anneals within it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if available")
    p.add_argument("--focus-steps", type=int, default=0,
                   help="diffusion: draw a share (--focus-prob) of training timesteps from this many-step schedule")
    p.add_argument("--focus-prob", type=float, default=0.0)
    p.add_argument("--nodule-weight", type=float, default=10.0,
                   help="extra loss weight near the synthetic training nodules (0: none)")
    p.add_argument("--nodule-reach", type=float, default=2.5, help="... within this many nodule radii")
    p.add_argument("--pair-weight", type=float, default=0.0,
                   help="weight of the paired loss: the change the training nodules make to the bone "
                        "estimate, against the same crop without them (0: off; costs a second forward pass)")
    p.add_argument("--init", type=Path, default=None, metavar="PT",
                   help="start from this state dict (e.g. the shipped rib-suppression.pt) instead of random weights")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--install", type=Path, default=None, metavar="ONNX",
                   help="after training, export ONNX + .pt + .json here (e.g. the shipped weights path)")
    p.add_argument("--export-only", action="store_true", help="skip training; export the run folder's model")
    p.add_argument("--default-steps", type=int, default=None,
                   help="with --install: the sampling steps the exported model uses by default")
    p.add_argument("--default-tile", type=int, default=None, metavar="PX",
                   help="with --install: the denoiser window in px at the working size (0: whole image; "
                        "default: the training crop)")
    p.set_defaults(handler=_train)


def _add_eval(sub: Any) -> None:
    p = sub.add_parser("eval-suppression", help="BSR, PSNR gain, PSNR, SSIM, published BSR, outside-mask change")
    _data_args(p)
    _model_args(p)
    p.add_argument("--mask", choices=("reference", "segmenter", "both"), default="both",
                   help="region: reference rib masks, the segmenter's, or both (segmenter needs its weights)")
    p.set_defaults(handler=_eval)


def _add_lesions(sub: Any) -> None:
    p = sub.add_parser("eval-lesions", help="lesion retention and spurious change (synthetic nodules)")
    _data_args(p)
    _model_args(p)
    p.add_argument("--placements", type=int, default=50,
                   help="nodule centres per image, location and radius (each tried at every contrast)")
    p.add_argument("--mask", choices=("reference", "segmenter"), default="segmenter",
                   help="rib mask for placement and region (reference needs target/ pairs)")
    p.set_defaults(handler=_lesions)


def _default_data(path: Path | None) -> Path:
    from ribnode.models.suppression.data import DEFAULT_DATA

    return path if path is not None else DEFAULT_DATA


def _train(args: argparse.Namespace) -> int:
    from ribnode.models.suppression.train import TrainOptions, install, train

    output = args.output or Path("runs/suppression") / args.mode
    if not args.export_only:
        train(TrainOptions(data=_default_data(args.data), out=output, mode=args.mode, steps=args.steps,
                           batch=args.batch, crop=args.crop, lr=args.lr, time_limit_min=args.minutes,
                           threads=args.threads, seed=args.seed, inverted=args.inverted, resume=args.resume,
                           device=args.device, focus_steps=args.focus_steps, focus_prob=args.focus_prob,
                           working_size=args.working_size, labels=args.labels,
                           nodule_weight=args.nodule_weight, nodule_reach=args.nodule_reach, init=args.init,
                           pair_weight=args.pair_weight))
    if args.install is not None:
        path = install(output, args.install, args.default_steps, args.default_tile)
        print(f"installed {path} and {path.with_suffix('.pt')}, {path.with_suffix('.json')}")
    return 0


def _suppressor(args: argparse.Namespace) -> Any:
    from ribnode.models.suppression.runtime import RibSuppressor

    return RibSuppressor(args.weights, steps=args.steps, device=args.device, backend=args.backend,
                         threads=args.threads, upsampling=args.upsampling, rib_shape_px_512=args.rib_shape,
                         tile_px=args.tile, tile_stride_px=args.tile_stride, rib_median_px_512=args.rib_median,
                         edge_taper_px_512=args.edge_taper)


def _segmenter(args: argparse.Namespace) -> Any:
    from ribnode.models.segmentation import RibSegmenter

    return RibSegmenter(args.seg_weights, device=args.device, threads=args.threads)


def _cases(args: argparse.Namespace, suppressor: Any, data: Path) -> list[str]:
    from ribnode.models.segmentation.data import case_ids

    ids = case_ids(data)
    if args.cases == "held-out":
        held = set(suppressor.config.training.get("held_out_cases", []))
        if not held:
            raise ValueError("the weights' json lists no held-out cases")
        ids = [c for c in ids if c in held]
    ids = ids[args.skip:]
    return ids[: args.limit] if args.limit else ids


def _eval(args: argparse.Namespace) -> int:
    from ribnode.models.suppression.data import load_pairs
    from ribnode.models.suppression.evaluate import evaluate_pairs, format_table, summary

    data = _default_data(args.data)
    suppressor = _suppressor(args)
    pairs = load_pairs(data, _cases(args, suppressor, data), args.inverted)
    sources = ["reference", "segmenter"] if args.mask == "both" else [args.mask]
    segmenter = _segmenter(args) if "segmenter" in sources else None
    report: dict[str, Any] = {"data": str(data), "cases": [p.case_id for p in pairs], "model": vars(suppressor.info)}
    for source in sources:
        rows = evaluate_pairs(suppressor, pairs, source, segmenter, seed=args.seed)
        print(f"\n== region from {source} masks ({len(rows)} images, {suppressor.steps} steps, {suppressor.backend}) ==")
        print(format_table(rows))
        report[source] = {"summary": summary(rows), "images": [vars(r) for r in rows]}
    _write_json(args.json, report)
    return 0


def _lesions(args: argparse.Namespace) -> int:
    import numpy as np

    from ribnode.models.segmentation.data import read_png_unit
    from ribnode.models.suppression.data import load_pairs
    from ribnode.models.suppression.evaluate import lesion_trials
    from ribnode.models.suppression.lesions import summarise

    data = _default_data(args.data)
    suppressor = _suppressor(args)
    segmenter = _segmenter(args) if args.mask == "segmenter" else None
    rng = np.random.default_rng(args.seed)
    trials = []
    for case in _cases(args, suppressor, data):
        if args.mask == "reference":
            pair = load_pairs(data, [case], args.inverted)[0]
            image, rib_mask = pair.radiograph, pair.rib_mask
        else:
            assert segmenter is not None  # made above for --mask segmenter
            image = read_png_unit(data / "source" / f"{case}.png", args.inverted).astype(np.float32)
            rib_mask = segmenter.segment_image(image).mask
        trials += lesion_trials(suppressor, case, image, rib_mask, args.placements, rng, seed=args.seed)
        logger.info("%s: %d trials so far", case, len(trials))
    table = summarise(trials)
    print(f"{'location':<8} {'r@512':>6} {'contrast':>8} {'n':>5} {'ret mean':>9} {'ret min':>8} {'ret p05':>8} {'spur max':>9}")
    for (location, radius, contrast), s in table.items():
        print(f"{location:<8} {radius:6.1f} {contrast:8.3f} {int(s['n']):5d} {s['retention_mean']:9.4f} "
              f"{s['retention_min']:8.4f} {s['retention_p05']:8.4f} {s['spurious_max']:9.5f}")
    worst = min(s["retention_mean"] for s in table.values())
    print(f"lowest mean retention {worst:.4f} (target >= 0.95); "
          f"largest spurious change {max(s['spurious_max'] for s in table.values()):.5f} (target <= 0.005)")
    _write_json(args.json, {"data": str(data), "model": vars(suppressor.info), "placements": args.placements,
                            "cells": [{"location": k[0], "radius_512": k[1], "contrast": k[2], **v}
                                      for k, v in table.items()],
                            "trials": [vars(t) for t in trials]})
    return 0


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")
