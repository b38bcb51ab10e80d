"""``ribnode infer``: run the models on DICOM files or bone-bright grayscale PNGs.

For each input it writes ``<stem>-ribs.png``, ``<stem>-clavicles.png`` and ``<stem>-lungs.png``
(0/255, the input's exact Rows x Columns), ``<stem>-region.png`` (0/255: where the suppressed
image may differ from the input) and ``<stem>-soft.png`` (the bone-suppressed image, the input's
size, bit depth and convention). Inputs that cannot be chest radiographs (colour, multi-frame,
too small, undecodable) are reported by name and skipped; the others are still processed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ribnode.models.preprocess import InputError, Radiograph, read_png, read_radiograph

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

PNG_SUFFIXES = {".png"}


@dataclass
class InferReport:
    """What ``run_infer`` wrote, and which inputs it could not use (path -> reason)."""

    written: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Path]:
        return iter(self.written)


def read_input(path: Path) -> Radiograph:
    """A PNG (bone-bright, 8/16-bit) or a DICOM file as a ``Radiograph``."""
    if path.suffix.lower() in PNG_SUFFIXES:
        return read_png(path)
    return read_radiograph(path)


def write_mask_png(mask: np.ndarray, path: Path) -> Path:
    """A boolean mask as an 8-bit PNG with values 0 and 255."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)).save(path)
    return path


def write_soft_png(radiograph: Radiograph, soft_stored: np.ndarray, path: Path) -> Path:
    """The bone-suppressed stored pixels as a PNG of the input's size, bit depth and convention.

    PNG input: the same 8/16-bit dtype. DICOM input: a 16-bit PNG of the stored values (same
    photometric interpretation as the source, MONOCHROME1 stays inverted).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    soft = np.asarray(soft_stored)
    if soft.dtype != np.uint8:
        if soft.min() < 0:
            raise ValueError(f"{path.name}: signed stored pixels (min {soft.min()}) cannot go to a PNG")
        soft = soft.astype(np.uint16)
    Image.fromarray(soft).save(path)
    return path


def run_infer(
    inputs: Sequence[Path],
    output: Path,
    weights: Path | None = None,
    device: str = "auto",
    threads: int = 0,
    steps: int | None = None,
    seed: int | None = None,
    suppression_weights: Path | None = None,
    suppress: bool = True,
) -> InferReport:
    """Segment every input and write one mask PNG per structure; with ``suppress``, also the
    region and the bone-suppressed image (``steps`` refiner steps and ``seed``; None: the
    model's own steps and the seed derived from the SOP Instance UID or the pixels)."""
    from ribnode.models.segmentation import RibSegmenter

    segmenter = RibSegmenter(weights=weights, device=device, threads=threads)
    suppressor = None
    if suppress:
        from ribnode.models.suppression import RibSuppressor

        suppressor = RibSuppressor(suppression_weights, steps=steps, device=device, threads=threads)
    report = InferReport()
    for path in inputs:
        path = Path(path)
        try:
            radiograph = read_input(path)
        except (InputError, FileNotFoundError, IsADirectoryError) as error:
            logger.error("%s: skipped: %s", path, error)
            report.failed[path] = str(error)
            continue
        segmentation = segmenter(radiograph)
        for name, mask in segmentation.structures.items():
            report.written.append(write_mask_png(mask, output / f"{path.stem}-{name}.png"))
        if suppressor is not None:
            result = suppressor(radiograph, segmentation, seed)
            report.written.append(write_mask_png(result.mask, output / f"{path.stem}-region.png"))
            report.written.append(write_soft_png(radiograph, result.soft_stored, output / f"{path.stem}-soft.png"))
        logger.info("%s: %dx%d, rib fraction %.3f", path, *segmentation.mask.shape, float(segmentation.mask.mean()))
    return report
