"""Rib mask on the real RG1 CR chest (pydicom-data): overlay PNG for ``docs/`` and a few numbers.

RG1 is a Philips CR PA chest, MONOCHROME1, 15 bits stored, 1955x1841: not JSRT, not a PNG.
The script decodes it with ``read_radiograph``, segments it with the shipped ONNX weights
and writes a downsized side-by-side PNG (left: the radiograph, right: the mask outline in
red and a translucent fill). It prints the rib fraction, the bounding box of the mask and
the share of mask pixels in the outer 10 % frame of the image (ribs never lie there on a
well-collimated PA chest; a large share means the mask leaks out of the thorax). Run:

    .venv/bin/python benchmarks/seg_rg1_overlay.py --output docs/rg1-rib-overlay.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.preprocess import read_radiograph  # noqa: E402
from ribnode.models.segmentation import RibSegmenter  # noqa: E402


def overlay(image: np.ndarray, mask: np.ndarray, height: int) -> Image.Image:
    """Side-by-side RGB picture: the image, and the image with the mask outlined and tinted."""
    width = round(image.shape[1] * height / image.shape[0])
    gray = np.asarray(Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
                      .resize((width, height), Image.LANCZOS), dtype=np.float32)
    small = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255)
                       .resize((width, height), Image.NEAREST)) > 127
    outline = small & ~ndimage.binary_erosion(small, iterations=1)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    tinted = rgb.copy()
    tinted[small] = 0.7 * tinted[small] + 0.3 * np.array([255, 60, 60])
    tinted[outline] = [255, 0, 0]
    return Image.fromarray(np.concatenate([rgb, tinted], axis=1).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("docs/rg1-rib-overlay.png"))
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--file", default="RG1_UNCR.dcm", help="pydicom-data file name")
    args = parser.parse_args()

    import data_store

    radiograph = read_radiograph(Path(data_store.__file__).parent / "data" / args.file)
    result = RibSegmenter(weights=args.weights, device="cpu", threads=2)(radiograph)
    mask = result.mask
    rows, cols = np.nonzero(mask)
    frame = np.ones_like(mask)
    r10, c10 = mask.shape[0] // 10, mask.shape[1] // 10
    frame[r10:-r10, c10:-c10] = False
    print(f"{args.file}: {mask.shape[0]}x{mask.shape[1]} {radiograph.photometric}, "
          f"rib fraction {mask.mean():.3f}")
    if rows.size:
        print(f"mask bounding box rows {rows.min()}-{rows.max()} ({rows.min() / mask.shape[0]:.2f}-"
              f"{rows.max() / mask.shape[0]:.2f}), cols {cols.min()}-{cols.max()} "
              f"({cols.min() / mask.shape[1]:.2f}-{cols.max() / mask.shape[1]:.2f})")
        print(f"share of mask pixels in the outer 10 % frame: {(mask & frame).sum() / mask.sum():.3f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    overlay(radiograph.image, mask, args.height).save(args.output, optimize=True)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
