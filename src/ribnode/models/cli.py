"""Subcommands of ribnode.models: ``infer`` (training lives in ``ribnode-lab``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the models' subcommands on the ``ribnode`` parser."""
    parser = sub.add_parser("infer", help="run the two models on DICOM files or bone-bright grayscale PNGs")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    parser.add_argument(
        "--output", type=Path, required=True, help="folder for <stem>-ribs/-clavicles/-lungs/-region/-soft.png"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="refiner steps of the bone suppression (default: the model's own, in its json)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="suppression seed (default: from the SOP Instance UID, or the PNG pixels)",
    )
    parser.add_argument("--weights", type=Path, default=None, help="segmentation ONNX (default: the shipped one)")
    parser.add_argument(
        "--suppression-weights", type=Path, default=None, help="the suppression model's json (default: the shipped one)"
    )
    parser.add_argument(
        "--no-soft", dest="suppress", action="store_false", help="segment only (no <stem>-soft.png or -region.png)"
    )
    parser.set_defaults(handler=_infer)


def _infer(args: argparse.Namespace) -> int:
    from ribnode.models.infer import run_infer

    report = run_infer(
        args.inputs,
        args.output,
        weights=args.weights,
        device=args.device,
        threads=args.threads,
        steps=args.steps,
        seed=args.seed,
        suppression_weights=args.suppression_weights,
        suppress=args.suppress,
    )
    for written in report.written:
        print(written)
    for path, reason in report.failed.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0
