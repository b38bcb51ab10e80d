"""The pipeline: decode a radiograph, segment the chest anatomy, suppress the bone layer.

A pipeline only wires the parts (diffusers' pipeline philosophy): preprocessing lives in
``ribnode.models.preprocess``, the networks in ``segmentation`` and ``suppression``. The two
models are loaded once, when the pipeline is built; a worker keeps one pipeline per process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom

from ribnode.config.settings import ModelSettings
from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult
from ribnode.models.preprocess import Radiograph, read_radiograph

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class PipelineOutput:
    """Everything the workers need to build and send the DICOM outputs of one radiograph."""

    radiograph: Radiograph
    segmentation: SegmentationResult
    suppression: SuppressionResult
    seconds: float  # decode + segmentation + suppression, wall clock
    segmentation_seconds: float
    suppression_seconds: float


class RibPipeline:
    """Segmentation then suppression of one chest radiograph, at the source resolution.

    ``RibPipeline(settings.models)(dataset)``: the models are built from the settings (shipped
    weights when ``segmentation_weights``/``suppression_weights`` are unset). Raises
    ``FileNotFoundError`` when weights are missing and ``preprocess.InputError`` for an input
    that cannot be a chest radiograph (``NotAChestError`` when its lung fields are not plausible).
    """

    def __init__(self, settings: ModelSettings) -> None:
        # Imported here: the runtimes pull in onnxruntime.
        from ribnode.models.segmentation.runtime import RibSegmenter
        from ribnode.models.suppression.runtime import RibSuppressor

        self.settings = settings
        self.segmenter = RibSegmenter(
            weights=settings.segmentation_weights,
            device=settings.device,
            threads=settings.intra_op_threads,
        )
        self.suppressor = RibSuppressor(
            weights=settings.suppression_weights,
            steps=settings.suppression_steps,
            device=settings.device,
            threads=settings.intra_op_threads,
        )

    @property
    def models(self) -> tuple[ModelInfo, ModelInfo]:
        """Provenance of the two models (segmentation, suppression)."""
        return self.segmenter.info, self.suppressor.info

    def __call__(self, source: pydicom.Dataset | Path | str | Radiograph, seed: int | None = None) -> PipelineOutput:
        """Run both models on ``source``; ``seed`` None derives it from the SOP Instance UID."""
        start = time.perf_counter()
        radiograph = (
            source if isinstance(source, Radiograph) else read_radiograph(source, max_pixels=self.settings.max_pixels)
        )
        decoded = time.perf_counter()
        segmentation = self.segmenter(radiograph)
        self.segmenter.check_chest(segmentation)  # NotAChestError: nothing is made
        segmented = time.perf_counter()
        suppression = self.suppressor(radiograph, segmentation, seed=seed)
        end = time.perf_counter()
        logger.info(
            "pipeline on %s: %dx%d, %d rib pixels, decode %.2f s, segmentation %.2f s, suppression %.2f s (%d steps)",
            radiograph.sop_instance_uid,
            radiograph.stored.shape[0],
            radiograph.stored.shape[1],
            int(segmentation.mask.sum()),
            decoded - start,
            segmented - decoded,
            end - segmented,
            suppression.steps,
        )
        return PipelineOutput(radiograph, segmentation, suppression, end - start, segmented - decoded, end - segmented)
