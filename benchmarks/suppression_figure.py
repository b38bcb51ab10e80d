"""Before/after picture of the rib suppression on the real RG1 CR chest (pydicom-data).

Panels: the radiograph, the bone-suppressed output, the subtracted bone layer, and the
difference inside the region only (everything outside is unchanged by construction); plus
a zoom on the right mid lung at full resolution. Display: the source's own linear window
(``Radiograph.lo``/``hi``), bone bright. Writes ``docs/rg1-before-after.png``.

    .venv/bin/python benchmarks/suppression_figure.py --steps 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.preprocess import Radiograph, read_radiograph  # noqa: E402
from ribnode.models.segmentation import RibSegmenter  # noqa: E402
from ribnode.models.suppression import RibSuppressor  # noqa: E402

from suppression_speed import rg1  # noqa: E402


def as_image(stored_soft: np.ndarray, radiograph: Radiograph) -> np.ndarray:
    """Soft-tissue stored pixels on the source's bone-bright [0, 1] display (its lo/hi window)."""
    value = stored_soft.astype(np.float64) * radiograph.rescale_slope + radiograph.rescale_intercept
    image = (value - radiograph.lo) / (radiograph.hi - radiograph.lo)
    if radiograph.photometric == "MONOCHROME1":
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0)


def to_u8(image: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def label(panel: np.ndarray, text: str) -> Image.Image:
    img = Image.fromarray(panel).convert("L")
    ImageDraw.Draw(img).text((8, 6), text, fill=255)
    return img


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/rg1-before-after.png"))
    parser.add_argument("--panel", type=int, default=640, help="panel height in pixels")
    args = parser.parse_args()
    radiograph = read_radiograph(rg1())
    segmentation = RibSegmenter(device="cpu")(radiograph)
    result = RibSuppressor(steps=args.steps, device="cpu")(radiograph, segmentation)
    soft = as_image(result.soft_stored, radiograph)
    rows, cols = radiograph.shape
    h = args.panel
    w = int(round(h * cols / rows))
    small = lambda a: np.asarray(Image.fromarray(a).resize((w, h), Image.LANCZOS))  # noqa: E731
    bone_max = max(float(np.percentile(result.bone[result.mask], 99.5)), 1e-3)
    panels = [label(small(to_u8(radiograph.image)), "RG1 radiograph"),
              label(small(to_u8(soft)), f"bone-suppressed ({result.steps} DDIM steps, seed {result.seed % 10**6}...)"),
              label(small(to_u8(result.bone, 0, bone_max)), f"bone layer removed (0..{bone_max:.3f})")]
    r0, c0, size = int(rows * 0.35), int(cols * 0.12), int(rows * 0.3)
    crop = (slice(r0, r0 + size), slice(c0, c0 + size))
    zoom = lambda a: np.asarray(Image.fromarray(a[crop]).resize((h, h), Image.LANCZOS))  # noqa: E731
    panels += [label(zoom(to_u8(radiograph.image)), "zoom: radiograph (full res)"),
               label(zoom(to_u8(soft)), "zoom: bone-suppressed")]
    canvas = Image.new("L", (sum(p.width for p in panels) + 4 * (len(panels) - 1), h), 0)
    x = 0
    for panel in panels:
        canvas.paste(panel, (x, 0))
        x += panel.width + 4
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"wrote {args.out} ({canvas.width}x{canvas.height}); seconds {result.seconds:.2f}")


if __name__ == "__main__":
    main()
