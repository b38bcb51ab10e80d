"""Typed results and provenance shared by the models, the workers and dicom_sr.

This module is torch-free and onnxruntime-free: dicom_sr and node may import it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (weights are identified by it in every provenance record)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """What made an output: the provenance of one model."""

    name: str  # e.g. "ribnode rib-segmentation"
    version: str  # e.g. "1.0.0"
    weights_sha256: str
    parameters: dict[str, Any] = field(default_factory=dict)


#: The anatomy the segmentation model outputs, in its channel order (one sigmoid each).
STRUCTURES = ("ribs", "clavicles", "lungs")


@dataclass(frozen=True)
class SegmentationResult:
    """Anatomy masks on the *source* matrix (Rows x Columns), with the model's probabilities.

    ``mask``/``probability`` are the ribs; ``structures`` maps each name of ``STRUCTURES``
    that the model outputs to its bool mask on the source matrix (``lungs``: the lung fields
    including the retrocardiac shadow, the region in which bone is suppressed).
    """

    mask: np.ndarray  # bool, source Rows x Columns (ribs)
    probability: np.ndarray  # float32 in [0, 1], source Rows x Columns (ribs)
    model: ModelInfo
    structures: dict[str, np.ndarray] = field(default_factory=dict)
    #: each structure's probability at the model's square working size (same field of view)
    working_probabilities: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class SuppressionResult:
    """Bone-suppressed image on the source matrix.

    ``soft_stored`` has the source's stored pixel dtype and photometric interpretation;
    outside ``mask`` it equals the source's stored pixels exactly.
    """

    soft_stored: np.ndarray  # source dtype, Rows x Columns, same photometric as source
    bone: np.ndarray  # float32 bone layer removed, bone-bright [0, 1] units, source matrix
    mask: np.ndarray  # bool, the (dilated) region where anything may change
    seed: int
    steps: int
    working_size: int
    model: ModelInfo
    seconds: float = 0.0
