"""The pictures of the model cards, from the shipped weights (RG1 of pydicom-data and the phantom
only: never JSRT, whose images may not be committed).

- ``docs/rg1-anatomy-overlay.png`` and ``docs/phantom-anatomy-overlay.png``: the radiograph with
  ribs (red), clavicles (green) and lung fields (blue outline);
- ``docs/rg1-suppression-crops.png``: three crops of RG1 (upper ribs, apex with clavicle, lower
  lung) at the original's own window: original | AI bone-suppressed | removed layer (stretched).

usage: .venv/bin/python benchmarks/model_pictures.py [--threads 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]


def display(radiograph, stored: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Stored pixels at the source's own window (first Window Center/Width, else its percentile
    window), bone bright, as 8-bit."""
    values = stored.astype(np.float64) * radiograph.rescale_slope + radiograph.rescale_intercept
    if radiograph.window is not None:
        centre, width = radiograph.window
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = np.percentile(values, (0.5, 99.5))
    unit = np.clip((values - low) / max(high - low, 1e-6), 0, 1)
    if radiograph.photometric == "MONOCHROME1":
        unit = 1 - unit
    return (unit * 255).astype(np.uint8)


def overlay(gray: np.ndarray, structures: dict[str, np.ndarray], width: int = 900) -> Image.Image:
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float64)
    for name, colour in (("ribs", (255, 40, 40)), ("clavicles", (40, 230, 40))):
        mask = structures[name]
        rgb[mask] = 0.55 * rgb[mask] + 0.45 * np.array(colour)
    lungs = structures["lungs"]
    edge = lungs & ~ndimage.binary_erosion(lungs, iterations=max(2, lungs.shape[0] // 300))
    rgb[edge] = (60, 120, 255)
    image = Image.fromarray(rgb.astype(np.uint8))
    return image.resize((width, round(width * gray.shape[0] / gray.shape[1])), Image.LANCZOS)


def crops(original: np.ndarray, soft: np.ndarray, layer: np.ndarray, boxes: dict[str, tuple]) -> Image.Image:
    side = 360
    stretch = np.clip(
        layer / max(float(np.percentile(layer[layer > 0], 99.5)) if (layer > 0).any() else 1.0, 1e-6), 0, 1
    )
    stretch = (stretch * 255).astype(np.uint8)
    canvas = Image.new("L", (3 * side + 40, len(boxes) * (side + 28) + 10), 255)
    draw = ImageDraw.Draw(canvas)
    for row, (name, (r0, c0, size)) in enumerate(boxes.items()):
        y = 10 + row * (side + 28)
        for col, (title, array) in enumerate(
            (("original", original), ("AI bone-suppressed", soft), ("removed layer (stretched)", stretch))
        ):
            tile = Image.fromarray(array[r0 : r0 + size, c0 : c0 + size]).resize((side, side), Image.LANCZOS)
            canvas.paste(tile, (10 + col * (side + 10), y + 18))
            draw.text((10 + col * (side + 10), y + 2), f"{name}: {title}", fill=0)
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import data_store
    import pydicom

    from ribnode.models.preprocess import read_radiograph
    from ribnode.models.segmentation import RibSegmenter
    from ribnode.models.suppression import RibSuppressor
    from ribnode.phantom import generate_chest

    segmenter = RibSegmenter(threads=args.threads)
    suppressor = RibSuppressor(threads=args.threads)
    radiograph = read_radiograph(pydicom.dcmread(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"))
    segmentation = segmenter(radiograph)
    result = suppressor(radiograph, segmentation)
    gray = display(radiograph, radiograph.stored)
    overlay(gray, segmentation.structures).save(ROOT / "docs" / "rg1-anatomy-overlay.png")
    rows, cols = radiograph.shape
    size = rows // 4
    boxes = {
        "upper ribs": (int(rows * 0.22), int(cols * 0.12), size),
        "apex and clavicle": (int(rows * 0.08), int(cols * 0.58), size),
        "lower lung": (int(rows * 0.52), int(cols * 0.14), size),
    }
    crops(gray, display(radiograph, result.soft_stored), result.bone, boxes).save(
        ROOT / "docs" / "rg1-suppression-crops.png"
    )
    chest = generate_chest(42, 1024)
    phantom = segmenter.segment_image(chest.radiograph)
    overlay((np.clip(chest.radiograph, 0, 1) * 255).astype(np.uint8), phantom.structures, 700).save(
        ROOT / "docs" / "phantom-anatomy-overlay.png"
    )
    print("wrote docs/rg1-anatomy-overlay.png docs/rg1-suppression-crops.png docs/phantom-anatomy-overlay.png")


if __name__ == "__main__":
    main()
