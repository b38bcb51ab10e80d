"""Rib segmentation served by ONNX Runtime: ``RibSegmenter``.

No torch here: the worker loads the exported graph with onnxruntime (CUDAExecutionProvider
when available, else CPU). The image goes to the working size, is normalised by the same
function used in training, and the probability map returns to the *source* matrix through
``to_source`` (exact geometry, same Rows x Columns) before thresholding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from ribnode.models.info import ModelInfo, SegmentationResult, sha256_file
from ribnode.models.segmentation.normalisation import normalise, to_source, to_working

if TYPE_CHECKING:
    from ribnode.models.preprocess import Radiograph

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "rib-segmentation.onnx"
INSTALL_HINT = "onnxruntime is needed for inference: pip install ribnode (or onnxruntime-gpu)"


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:  # optional backend: fail with an install hint
        raise ImportError(INSTALL_HINT) from error
    return onnxruntime


def select_providers(device: str, available: list[str]) -> list[str]:
    """ORT execution providers for ``device`` ("auto", "cpu", "cuda") given what is installed."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    cuda = "CUDAExecutionProvider" in available
    if device == "cuda" and not cuda:
        raise ValueError(
            f"device 'cuda' requested but onnxruntime offers only {available}; "
            "install onnxruntime-gpu or use device 'auto'/'cpu'"
        )
    if device in ("auto", "cuda") and cuda:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def load_config(weights: Path) -> dict[str, Any]:
    """The JSON config beside ``weights``; checks that its sha256 names these weights."""
    config_path = weights.with_suffix(".json")
    if not config_path.is_file():
        raise FileNotFoundError(f"{weights}: no config {config_path.name} beside the weights")
    config = json.loads(config_path.read_text())
    digest = sha256_file(weights)
    if config.get("sha256") not in (None, digest):
        raise ValueError(f"{config_path} names weights sha256 {config['sha256']}, but {weights} has {digest}")
    config["sha256"] = digest
    return config


#: The input gate's limits (a model's json may set its own under "chest_gate"): the lung
#: fields' share of the image, the share of each image half they fill, where their centre lies
#: (fractions of the width and height), their mean probability, and the largest share of the
#: image where the network is unsure (probability 0.2-0.8). Measured with segmentation 4.0.0:
#: JSRT 0.27-0.52 / >= 0.974 / <= 0.031, RG1 0.45 / 0.967 / 0.049, phantoms 0.35-0.45 / >= 0.971 /
#: <= 0.038; uniform noise 0.07-0.13 / 0.73-0.82 / 0.10-0.12 (docs/models/rib-segmentation.md).
CHEST_GATE = {
    "area": [0.18, 0.62],
    "half_area": 0.04,
    "centre_x": [0.35, 0.65],
    "centre_y": [0.25, 0.75],
    "confidence": 0.9,
    "unsure": 0.07,
}


def chest_gate(lung_probability: np.ndarray, limits: dict[str, Any] | None = None) -> list[str]:
    """Why a lung-field probability map (working size) is not that of a frontal chest
    radiograph: an empty list when it is plausible (area, both lungs, position, confidence)."""
    limits = {**CHEST_GATE, **(limits or {})}
    mask = np.asarray(lung_probability) > 0.5
    reasons = []
    area = float(mask.mean())
    if not limits["area"][0] <= area <= limits["area"][1]:
        reasons.append(
            f"lung fields cover {area:.0%} of the image (expected {limits['area'][0]:.0%}-{limits['area'][1]:.0%})"
        )
    if not mask.any():
        return reasons
    half = mask.shape[1] // 2
    for side, part in (("left", mask[:, :half]), ("right", mask[:, half:])):
        if part.mean() < limits["half_area"]:
            reasons.append(f"no lung field in the image's {side} half ({part.mean():.0%})")
    rows, cols = np.nonzero(mask)
    cx, cy = cols.mean() / mask.shape[1], rows.mean() / mask.shape[0]
    if not (
        limits["centre_x"][0] <= cx <= limits["centre_x"][1] and limits["centre_y"][0] <= cy <= limits["centre_y"][1]
    ):
        reasons.append(f"lung fields centred at ({cx:.2f}, {cy:.2f}) of the image, not near its middle")
    confidence = float(np.asarray(lung_probability)[mask].mean())
    if confidence < limits["confidence"]:
        reasons.append(f"mean lung-field probability {confidence:.2f} (expected >= {limits['confidence']})")
    unsure = float(np.mean(np.abs(np.asarray(lung_probability) - 0.5) < 0.3))
    if unsure > limits["unsure"]:
        reasons.append(
            f"the lung fields are unsure over {unsure:.0%} of the image (expected <= {limits['unsure']:.0%})"
        )
    return reasons


class RibSegmenter:
    """Chest anatomy (ribs, clavicles, lung fields) of a radiograph, as masks on the source matrix."""

    def __init__(
        self, weights: Path | None = None, device: str = "auto", threads: int = 0, threshold: float = 0.5
    ) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if threads < 0:
            raise ValueError(f"threads must be >= 0 (0: runtime default), got {threads}")
        self.weights = Path(weights) if weights is not None else DEFAULT_WEIGHTS
        if not self.weights.is_file():
            raise FileNotFoundError(
                f"segmentation weights {self.weights} not found; train them with "
                "'ribnode-lab train-seg' (docs/models/rib-segmentation.md) or pass weights="
            )
        self.config = load_config(self.weights)
        self.working_size = int(self.config["working_size"])
        self.threshold = threshold
        self.session = self._session(device, threads)
        self.providers = list(self.session.get_providers())
        self.info = ModelInfo(
            name=self.config.get("name", "ribnode rib-segmentation"),
            version=str(self.config.get("version", "0")),
            weights_sha256=self.config["sha256"],
            parameters={
                "working_size": self.working_size,
                "threshold": threshold,
                "normalisation": self.config.get("normalisation"),
                "providers": self.providers,
                "outputs": list(self.config.get("outputs", ["ribs"])),
                "parameters": self.config.get("architecture", {}).get("parameters"),
            },
        )
        logger.info("anatomy segmenter %s (%s) on %s", self.weights.name, self.info.weights_sha256[:12], self.providers)

    def _session(self, device: str, threads: int) -> Any:
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        providers = select_providers(device, list(ort.get_available_providers()))
        return ort.InferenceSession(str(self.weights), sess_options=options, providers=providers)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The structures of the network's channels, in order (``info.STRUCTURES`` or a prefix)."""
        return tuple(self.config.get("outputs", ["ribs"]))

    def predict_working(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (float32, [0, 1], one channel per ``outputs``) at working size for a
        bone-bright 2-D image; an image not already ``working_size`` square is resampled to it."""
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
        if image.shape != (self.working_size, self.working_size):
            image = to_working(image, self.working_size)
        batch = normalise(image)[None, None]
        name = self.session.get_inputs()[0].name
        logits = self.session.run(None, {name: batch})[0][0]
        return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)

    def __call__(self, radiograph: Radiograph) -> SegmentationResult:
        """Segment one radiograph; masks and probability on its source Rows x Columns."""
        return self.segment_image(radiograph.image)

    def check_chest(self, result: SegmentationResult) -> None:
        """Raise ``NotAChestError`` unless the lung fields are those of a frontal chest radiograph."""
        from ribnode.models.preprocess import NotAChestError

        lungs = result.working_probabilities.get("lungs")
        if lungs is None:
            raise NotAChestError("the segmentation model has no lung-field output: cannot check the input")
        reasons = chest_gate(lungs, self.config.get("chest_gate"))
        if reasons:
            raise NotAChestError("not a frontal chest radiograph: " + "; ".join(reasons))

    def segment_image(self, image: np.ndarray) -> SegmentationResult:
        """Segment a bone-bright [0, 1] 2-D image; masks and rib probability on the same matrix.

        Each structure's probability returns to the source matrix by linear interpolation and
        is thresholded there; the lung fields' holes are filled (a field is one region).
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"image must be 2-D, got shape {image.shape}")
        working = self.predict_working(to_working(image, self.working_size))
        structures: dict[str, np.ndarray] = {}
        probability = np.zeros(image.shape, np.float32)
        for index, name in enumerate(self.outputs):
            prob = np.clip(to_source(working[index], image.shape, "linear"), 0.0, 1.0)
            mask = prob > self.threshold
            if name == "lungs":
                mask = np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)
            if name == "ribs":
                probability = prob.astype(np.float32)
            structures[name] = mask
        return SegmentationResult(
            mask=structures["ribs"],
            probability=probability,
            model=self.info,
            structures=structures,
            working_probabilities=dict(zip(self.outputs, working)),
        )
