"""``ribnode-lab``: train, export and evaluate the two models on the shared development data."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ribnode.models.segmentation.runtime import DEFAULT_WEIGHTS as SEG_WEIGHTS
from ribnode.models.suppression.runtime import DEFAULT_CONFIG as SUPP_CONFIG

DATA = Path("../shared/data")


def _models(args: argparse.Namespace) -> tuple:
    from ribnode.models.segmentation.runtime import RibSegmenter
    from ribnode.models.suppression.runtime import RibSuppressor

    segmenter = RibSegmenter(args.seg_weights, threads=args.threads)
    suppressor = RibSuppressor(args.suppression_weights, steps=args.steps, threads=args.threads)
    return segmenter, suppressor


def _cases(args: argparse.Namespace) -> list:
    from ribnode_lab.data import load_cases

    train, held = load_cases(args.data)
    cases = {"held-out": held, "train": train, "all": train + held}[args.cases]
    if args.paired != "any":
        cases = [c for c in cases if c.paired == (args.paired == "yes")]
    return cases[: args.limit] if args.limit else cases


def _emit(figures: dict, path: Path | None) -> None:
    from ribnode_lab.evaluate import write

    write(figures, path)
    brief = {k: v for k, v in figures.items() if k not in ("cases", "cells")}
    print(json.dumps(brief, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ribnode-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "train-seg", help="train the anatomy segmentation (options: ribnode-lab train-seg -- --help)", add_help=False
    )
    sub.add_parser("train-suppression", help="train the bone-layer estimator and the diffusion refiner", add_help=False)
    export = sub.add_parser("export", help="export a run's checkpoint to ONNX + json")
    export.add_argument("model", choices=("segmentation", "suppression"))
    export.add_argument("run", type=Path)
    export.add_argument(
        "--out", type=Path, default=SEG_WEIGHTS.parent, help="weights folder (default: the shipped one)"
    )
    export.add_argument("--checkpoint", default="final.pt")
    export.add_argument("--default-steps", type=int, default=1)
    export.add_argument(
        "--flip-average", action="store_true", help="suppression: average the estimator on the image and its mirror"
    )
    comparison = sub.add_parser("compare", help="paired differences (B - A) of two eval JSONs, case by case")
    comparison.add_argument("before", type=Path)
    comparison.add_argument("after", type=Path)
    for name in ("eval-seg", "eval-suppression", "eval-lesions", "eval-gate"):
        p = sub.add_parser(name, help=f"{name.split('-', 1)[1]} figures on held-out JSRT cases")
        p.add_argument("--data", type=Path, default=DATA)
        p.add_argument("--cases", choices=("held-out", "train", "all"), default="held-out")
        p.add_argument("--paired", choices=("any", "yes", "no"), default="any")
        p.add_argument("--limit", type=int, default=0)
        p.add_argument("--seg-weights", type=Path, default=SEG_WEIGHTS)
        p.add_argument("--suppression-weights", type=Path, default=SUPP_CONFIG)
        p.add_argument("--steps", type=int, default=None)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--json", type=Path, default=None)
        if name == "eval-lesions":
            p.add_argument("--per-cell", type=int, default=50)
            p.add_argument("--seed", type=int, default=0)
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in ("train-seg", "train-suppression"):
        rest = [a for a in argv[1:] if a != "--"]
        if argv[0] == "train-seg":
            from ribnode_lab.train_seg import main as train_main
        else:
            from ribnode_lab.train_suppression import main as train_main
        train_main(rest)
        return 0
    args = parser.parse_args(argv)
    if args.command == "export":
        from ribnode_lab.export import export_segmentation, export_suppression

        if args.model == "segmentation":
            print(export_segmentation(args.run, args.out, checkpoint=args.checkpoint))
        else:
            print(
                export_suppression(
                    args.run,
                    args.out,
                    default_steps=args.default_steps,
                    checkpoint=args.checkpoint,
                    flip_average=args.flip_average,
                )
            )
        return 0
    from ribnode_lab import evaluate

    if args.command == "compare":
        before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
        print(f"{'figure':34} {'B - A':>10} {'se':>8} {'higher':>8}")
        for key, row in evaluate.compare(before, after).items():
            print(f"{key:34} {row['diff']:+10.5f} {row['se']:8.5f} {row['higher']:>4}/{row['n']}")
        return 0
    segmenter, suppressor = _models(args)
    cases = _cases(args)
    if args.command == "eval-gate":
        import data_store

        folder = Path(data_store.__file__).parent / "data"
        rg = {p.stem: p for p in sorted(folder.glob("RG[13]_*.dcm"))}
        _emit(evaluate.evaluate_gate(segmenter, _cases(args), rg), args.json)
    elif args.command == "eval-seg":
        _emit(evaluate.evaluate_segmentation(segmenter, suppressor, cases), args.json)
    elif args.command == "eval-suppression":
        _emit(evaluate.evaluate_suppression(segmenter, suppressor, cases, args.steps), args.json)
    else:
        _emit(evaluate.evaluate_lesions(segmenter, suppressor, cases, args.per_cell, args.seed, args.steps), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
