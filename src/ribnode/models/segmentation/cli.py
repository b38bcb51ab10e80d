"""Subcommands of this model package (registered by ribnode.models.cli).

``train-seg``, ``eval-seg`` and ``infer``. Heavy libraries (torch, onnxruntime) are imported
inside the handlers only, so ``ribnode --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ribnode.models.segmentation.data import DEFAULT_LABELS, LABEL_DEFINITIONS as LABELS

logger = logging.getLogger(__name__)

DEFAULT_DATA = Path("../shared/data/jsrt-bse-512")


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Register this package's subcommands on the ``ribnode`` parser."""
    _add_train(sub)
    _add_eval(sub)
    _add_infer(sub)


def _add_train(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser("train-seg", help="train the rib-segmentation U-Net and export it to ONNX")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with source/ and target/ PNG pairs (default %(default)s)")
    parser.add_argument("--output", type=Path, default=Path("runs/rib-segmentation"),
                        help="run folder: checkpoint.pt, split, history, exported ONNX + JSON")
    parser.add_argument("--epochs", type=int, default=45)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--working-size", type=int, default=256)
    parser.add_argument("--held-out", type=int, default=24, help="cases held out (stratified)")
    parser.add_argument("--seed", type=int, default=20260121, help="seed of weights, batches and augmentation")
    parser.add_argument("--split-seed", type=int, default=20260121, help="seed of the held-out split")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="synthetic radiographs added to training")
    parser.add_argument("--synthetic-labels", choices=("in-lung", "whole", "exact"), default="in-lung",
                        help="labels of the synthetic chests: --labels' rule on the exact pair, inside "
                             "the lungs (default, as the JSRT labels) or over the whole chest; or the "
                             "generator's exact rib mask")
    parser.add_argument("--intensity-aug", type=float, default=1.0,
                        help="scale of the gamma/contrast/brightness augmentation (0: none)")
    parser.add_argument("--labels", choices=LABELS, default=DEFAULT_LABELS,
                        help="rib-mask definition (default %(default)s; 'reference': the shared tool's)")
    parser.add_argument("--bone-weight", type=float, default=0.0,
                        help="> 0: train an auxiliary head on the bone layer (radiograph - bone-suppressed), "
                             "its L1 loss weighted so; the head is dropped at export")
    parser.add_argument("--base", type=int, default=16, help="U-Net channels at full resolution")
    parser.add_argument("--depth", type=int, default=5, help="U-Net resolution levels")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-inverted", dest="inverted", action="store_false",
                        help="PNGs are already bone-bright (the shared data is inverted)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start afresh even if OUTPUT/checkpoint.pt exists")
    parser.add_argument("--export-only", action="store_true",
                        help="skip training: export OUTPUT/checkpoint.pt to ONNX + JSON")
    parser.add_argument("--install", action="store_true",
                        help="also copy the exported ONNX + JSON over the shipped weights")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ribnode.models.segmentation.export import export_run, install_weights
    from ribnode.models.segmentation.train import TrainConfig, train
    from ribnode.models.segmentation.unet import UNetConfig

    config = TrainConfig(
        data=str(args.data), output=str(args.output), working_size=args.working_size,
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        held_out=args.held_out, seed=args.seed, split_seed=args.split_seed, threads=args.threads, inverted=args.inverted,
        synthetic=args.synthetic, synthetic_labels=args.synthetic_labels, device=args.device, intensity_augmentation=args.intensity_aug,
        labels=args.labels, bone_weight=args.bone_weight,
        unet=UNetConfig(base=args.base, depth=args.depth, bone_head=args.bone_weight > 0).as_dict(),
    )
    if args.export_only:
        checkpoint = args.output / "checkpoint.pt"
        if not checkpoint.is_file():
            raise SystemExit(f"--export-only: no checkpoint at {checkpoint}")
    else:
        checkpoint = train(config, resume=args.resume)
    onnx_path = export_run(checkpoint)
    print(f"checkpoint {checkpoint}\nweights {onnx_path}")
    if args.install:
        print(f"installed {install_weights(onnx_path)}")
    return 0


def _add_eval(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser("eval-seg", help="Dice, IoU and HD95 of the rib segmentation on PNG pairs")
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with source/ and target/ PNG pairs (and optional masks/)")
    parser.add_argument("--weights", type=Path, default=None, help="ONNX weights (default: shipped)")
    parser.add_argument("--cases", default=None,
                        help="'held-out' (the split in the weights' JSON), 'train', or a comma list")
    parser.add_argument("--no-inverted", dest="inverted", action="store_false",
                        help="PNGs are already bone-bright (the shared data is inverted)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument("--labels", choices=LABELS, default=DEFAULT_LABELS,
                        help="rib-mask definition (default %(default)s; 'reference': the shared tool's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    parser.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> int:
    from ribnode.models.segmentation.evaluate import evaluate_folder, format_report

    report = evaluate_folder(args.data, weights=args.weights, cases=args.cases,
                             inverted=args.inverted, threads=args.threads, labels=args.labels)
    print(format_report(report))
    if args.json is not None:
        import json

        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _add_infer(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = sub.add_parser(
        "infer", help="run the models on DICOM files or bone-bright grayscale PNGs")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT")
    parser.add_argument("--output", type=Path, required=True, help="folder for <stem>-ribs.png")
    parser.add_argument("--weights", type=Path, default=None, help="segmentation ONNX weights")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument("--steps", type=int, default=None,
                        help="rib-suppression DDIM steps (default: the model's own, in its json)")
    parser.add_argument("--seed", type=int, default=None,
                        help="suppression seed (default: from the SOP Instance UID, or the PNG pixels)")
    parser.add_argument("--suppression-weights", type=Path, default=None, help="rib-suppression ONNX weights")
    parser.add_argument("--tile", type=int, default=None, metavar="PX",
                        help="rib-suppression denoiser window, px at its working size (0: whole image; "
                             "default: the model's own, in its json)")
    parser.add_argument("--rib-median", type=int, default=None, metavar="PX512",
                        help="median of the rib-suppression's bone layer along the ribs, line length in px "
                             "at 512 (0: off; default: the model's own, in its json)")
    parser.add_argument("--edge-taper", type=float, default=None, metavar="PX512",
                        help="fade the rib-suppression's bone layer from the rib mask to 0 at this distance, "
                             "px at 512 (0: off; default: the model's own, in its json)")
    parser.add_argument("--no-soft", dest="suppress", action="store_false",
                        help="segment only (no <stem>-soft.png)")
    parser.set_defaults(handler=_infer)


def _infer(args: argparse.Namespace) -> int:
    from ribnode.models.infer import run_infer

    report = run_infer(args.inputs, args.output, weights=args.weights,
                       device=args.device, threads=args.threads, steps=args.steps, seed=args.seed,
                       suppression_weights=args.suppression_weights, suppress=args.suppress, tile=args.tile,
                       rib_median=args.rib_median, edge_taper=args.edge_taper)
    for written in report.written:
        print(written)
    for path, reason in report.failed.items():
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0
