"""``ribnode synth``: write synthetic chest DX studies (and, on request, their ground truth)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ribnode.phantom.generator import SyntheticChest

logger = logging.getLogger(__name__)


def parse_size(text: str) -> int | tuple[int, int]:
    """``"512"`` -> 512, ``"1955x1841"`` -> (1955, 1841) (rows x columns)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N or ROWSxCOLS") from None
    if len(parts) == 1 and parts[0] >= 64:
        return parts[0]
    if len(parts) == 2 and min(parts) >= 64:
        return (parts[0], parts[1])
    raise argparse.ArgumentTypeError(f"size {text!r}: expected N or ROWSxCOLS, each >= 64")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``synth`` on the ``ribnode`` parser."""
    parser = sub.add_parser(
        "synth",
        help="write synthetic chest radiographs as DICOM DX studies",
        description=(
            "Render physically based synthetic PA chest radiographs (Beer-Lambert projection of "
            "a procedural thorax) and write each as a DX For Presentation study. Deterministic "
            "by seed: sample i uses seed SEED + i."
        ),
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--count", type=int, default=1, help="number of studies (default 1)")
    parser.add_argument("--photometric", choices=("MONOCHROME1", "MONOCHROME2"), default="MONOCHROME2")
    parser.add_argument("--size", type=parse_size, default=512, help="N or ROWSxCOLS (default 512)")
    parser.add_argument("--bits", type=int, choices=(12, 14, 16), default=12, help="bits stored")
    parser.add_argument("--nodules", type=int, default=2, help="nodules per image (default 2)")
    parser.add_argument(
        "--pixel-spacing", action="store_true", help="also write calibrated Pixel Spacing (Imager Pixel Spacing always)"
    )
    parser.add_argument(
        "--truth", action="store_true", help="also write <stem>-soft.png, <stem>-ribs.png and <stem>.json"
    )
    parser.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    """Generate ``--count`` chests and write them (plus ground truth with ``--truth``)."""
    from ribnode.phantom import generate_chest, write_dicom_study

    if args.count < 1:
        raise SystemExit(f"--count {args.count}: expected >= 1")
    for seed in range(args.seed, args.seed + args.count):
        chest = generate_chest(seed, size=args.size, nodules=args.nodules)
        paths = write_dicom_study(
            chest, args.out, seed, photometric=args.photometric, bits_stored=args.bits, pixel_spacing=args.pixel_spacing
        )
        if args.truth:
            _write_truth(chest, paths[0], seed)
        print(paths[0])
    return 0


def _write_truth(chest: SyntheticChest, dicom_path: Path, seed: int) -> None:
    """Ground truth beside the DICOM: 16-bit bone-free PNG, 0/255 rib mask, nodules JSON."""
    import numpy as np
    from PIL import Image

    stem = dicom_path.with_suffix("")
    soft = np.rint(np.clip(chest.soft_tissue, 0, 1) * 65535).astype(np.uint16)
    Image.fromarray(soft).save(f"{stem}-soft.png")
    Image.fromarray(chest.rib_mask.astype(np.uint8) * 255).save(f"{stem}-ribs.png")
    truth = {
        "seed": seed,
        "pixel_spacing_mm": chest.pixel_spacing_mm,
        "nodules_row_col_radius_px": [list(n) for n in chest.nodules],
        "parameters": chest.parameters,
    }
    Path(f"{stem}.json").write_text(json.dumps(truth, indent=2, default=float))
