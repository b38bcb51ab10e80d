"""Make ``docs/synthetic-contact-sheet.png``: eight synthetic chests and one's ground truth.

Rows 1-2: ``generate_chest(seed)`` for seeds 0..7 at 512x512, shown at 256x256 (bone-bright,
as a MONOCHROME2 viewer shows them). Row 3, for seed 0: radiograph, exact bone-free image,
bone layer (``radiograph - soft_tissue``, x4), rib mask (red) and nodules (green) over the
radiograph. Run:

    .venv/bin/python benchmarks/contact_sheet.py --out docs/synthetic-contact-sheet.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.phantom import SyntheticChest, generate_chest  # noqa: E402

TILE = 256


def gray(image: np.ndarray) -> Image.Image:
    """A [0, 1] image as an RGB tile of TILE x TILE."""
    tile = Image.fromarray(np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8))
    return tile.resize((TILE, TILE), Image.Resampling.BILINEAR).convert("RGB")


def overlay(chest: SyntheticChest) -> Image.Image:
    """Rib mask in red and nodule circles in green over the radiograph."""
    base = np.repeat(chest.radiograph[..., None], 3, axis=2)
    red = np.array([1.0, 0.15, 0.15], np.float32)
    base[chest.rib_mask] = 0.55 * base[chest.rib_mask] + 0.45 * red
    tile = Image.fromarray(np.rint(base * 255).astype(np.uint8)).resize((TILE, TILE), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(tile)
    scale = TILE / chest.radiograph.shape[0]
    for row, col, radius in chest.nodules:
        r, c, rad = (row + 0.5) * scale, (col + 0.5) * scale, radius * scale + 2
        draw.ellipse((c - rad, r - rad, c + rad, r + rad), outline=(40, 230, 40), width=2)
    return tile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/synthetic-contact-sheet.png"))
    parser.add_argument("--size", type=int, default=512, help="generation size (shown at 256)")
    args = parser.parse_args()
    chests = [generate_chest(seed, args.size) for seed in range(8)]
    sheet = Image.new("RGB", (4 * TILE, 3 * TILE))
    for index, chest in enumerate(chests):
        sheet.paste(gray(chest.radiograph), ((index % 4) * TILE, (index // 4) * TILE))
    first = chests[0]
    truth = [gray(first.radiograph), gray(first.soft_tissue), gray(4.0 * first.bone), overlay(first)]
    for index, tile in enumerate(truth):
        sheet.paste(tile, (index * TILE, 2 * TILE))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
