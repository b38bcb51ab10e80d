"""``RibSuppressor``: bone suppression of one radiograph (ONNX Runtime and numpy, no torch).

The output is the radiograph minus an estimated bone layer, at the full source matrix:
``p = x - w * B``. ``B`` is never negative (the networks can only remove density). ``w`` is the
*region weight*, a continuous function of the segmentation's lung-field probability (the
retrocardiac lung included): the probability at 512, smoothed (Gaussian, ``region_sigma_px_512``),
mapped linearly from ``region_floor`` (weight 0) to ``region_floor + region_ramp`` (weight 1),
and 0 farther than ``region_reach_px_512`` from the lung fields themselves (probability > 0.5).
The *region* is where ``w > 0``; outside it the stored pixels are returned unchanged, bit for bit
(``Radiograph.subtract_layer``). Because ``w`` follows the probability continuously and no
threshold gates the subtraction, a small change of the image (a nodule) changes the output far
from it only as much as it changes the probability there.

``B`` comes from two networks at the working size (512):

1. the **estimator**, a U-Net that maps the radiograph (normalised linearly per image between
   its 1st and 99th percentiles) to the bone layer;
2. the **refiner**, a diffusers ``UNet2DModel``: a rectified-flow bridge that starts at the
   estimate plus a little seeded noise and takes ``steps`` Euler steps (``scheduler``) towards
   the layer, seeing the radiograph and the estimate at every step.

The weighted layer returns to the source matrix by linear interpolation. Every inference
parameter lives in the model's json: changing one is a new
model version. The product's knobs are ``steps``, ``seed`` and ``device``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult, sha256_file
from ribnode.models.preprocess import Radiograph, to_source, to_working
from ribnode.models.suppression import scheduler

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_CONFIG = WEIGHTS_DIR / "rib-suppression.json"
INSTALL_HINT = "onnxruntime is needed for inference: pip install ribnode (or onnxruntime-gpu)"


def seed_from_uid(sop_instance_uid: str) -> int:
    """A 63-bit sampling seed from a SOP Instance UID (sha256, first 8 bytes, top bit dropped)."""
    if not sop_instance_uid:
        raise ValueError("sop_instance_uid is empty: cannot derive a sampling seed")
    digest = hashlib.sha256(sop_instance_uid.strip().encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_for(radiograph: Radiograph) -> int:
    """The seed of a radiograph: from its SOP Instance UID, else from its stored pixels (PNG)."""
    if radiograph.sop_instance_uid:
        return seed_from_uid(radiograph.sop_instance_uid)
    digest = hashlib.sha256(np.ascontiguousarray(radiograph.stored).tobytes()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class SuppressionConfig:
    """The model's json: the two networks and every inference parameter."""

    name: str
    version: str
    estimator: str  # file name of the estimator ONNX, beside the json
    refiner: str  # file name of the refiner ONNX
    working_size: int
    percentiles: tuple[float, float]
    bone_scale: float  # network units = bone-bright units * bone_scale / (hi - lo)
    eta: float  # std of the refiner's starting noise, network units
    default_steps: int
    region_sigma_px_512: float  # smoothing of the lung-field probability
    region_floor: float  # smoothed probability at which the weight starts (0)
    region_ramp: float  # rise of the smoothed probability over which the weight reaches 1
    region_reach_px_512: float  # the weight is 0 farther than this from the lung fields (p > 0.5)
    derivation: str  # what the output is, for the Derivation Description
    record: dict[str, Any]  # the rest of the json (training, metrics, sha256 of each file)
    # the estimate is the mean of the estimator on the image and on its mirror image, mirrored
    # back (trained with flips, the network errs differently on the two; 3.4.0 on)
    estimator_flip_average: bool = False

    @classmethod
    def load(cls, path: Path) -> SuppressionConfig:
        data = json.loads(Path(path).read_text())
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "record"}
        optional = {"record"} | {f.name for f in fields(cls) if f.default is not MISSING}
        missing = set(cls.__dataclass_fields__) - set(known) - optional
        if missing:
            raise ValueError(f"{path}: missing {', '.join(sorted(missing))}")
        known["percentiles"] = tuple(known["percentiles"])
        return cls(**known, record={k: v for k, v in data.items() if k not in known})


def _session(path: Path, device: str, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # optional backend: say how to get it
        raise ImportError(INSTALL_HINT) from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    elif device == "cuda":
        raise RuntimeError(f"device 'cuda' asked for but onnxruntime offers only {available}")
    return ort.InferenceSession(str(path), options, providers=providers)


class RibSuppressor:
    """Bone suppression inside the lung fields (see the module docstring)."""

    def __init__(
        self, weights: Path | None = None, steps: int | None = None, device: str = "auto", threads: int = 0
    ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {device!r}: expected auto, cpu or cuda")
        path = Path(weights) if weights is not None else DEFAULT_CONFIG
        if path.suffix != ".json":
            raise ValueError(f"suppression weights {path}: expected the model's json (rib-suppression.json)")
        if not path.is_file():
            raise FileNotFoundError(f"suppression model {path} not found")
        self.config = SuppressionConfig.load(path)
        self.steps = int(steps) if steps is not None else int(self.config.default_steps)
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps {self.steps}: expected 1..1000")
        files = {role: path.parent / getattr(self.config, role) for role in ("estimator", "refiner")}
        digests = {role: sha256_file(f) for role, f in files.items()}
        for role, digest in digests.items():
            expected = self.config.record.get(f"{role}_sha256")
            if expected not in (None, digest):
                raise ValueError(f"{files[role]} has sha256 {digest}, the json names {expected}")
        self.estimator = _session(files["estimator"], device, threads)
        self.refiner = _session(files["refiner"], device, threads)
        self.device = "cuda" if "CUDAExecutionProvider" in self.estimator.get_providers() else "cpu"
        self.working_size = int(self.config.working_size)
        # one hash names the model: sha256 over the two networks' hashes, in this order
        combined = hashlib.sha256(f"{digests['estimator']}:{digests['refiner']}".encode()).hexdigest()
        self.info = ModelInfo(
            self.config.name,
            self.config.version,
            combined,
            {
                "steps": self.steps,
                "device": self.device,
                "estimator_flip_average": self.config.estimator_flip_average,
                "working_size": self.working_size,
                "estimator_sha256": digests["estimator"],
                "refiner_sha256": digests["refiner"],
                "scheduler": "FlowMatchEuler (rectified-flow bridge from the estimate)",
                "derivation": self.config.derivation,
            },
        )

    def weight(self, lung_probability: np.ndarray) -> np.ndarray:
        """The region weight at the working size from a lung-field probability map (any square
        working grid covering the image: resampled to the suppression's)."""
        probability = np.asarray(lung_probability, np.float32)
        size = self.working_size
        if probability.shape != (size, size):
            probability = to_source(probability, (size, size), "linear")
        sigma = self.config.region_sigma_px_512 * size / 512.0
        smooth = ndimage.gaussian_filter(probability.astype(np.float64), sigma)
        ramp = np.clip((smooth - self.config.region_floor) / self.config.region_ramp, 0.0, 1.0)
        # only near the lung fields: a patch of low probability elsewhere (below the diaphragm,
        # over the shoulder) is not lung. At this distance the ramp has already reached 0 around
        # the fields themselves (3 sigma), so the cut leaves no step.
        fields = probability > 0.5
        reach = self.config.region_reach_px_512 * size / 512.0
        near = ndimage.distance_transform_edt(~fields) <= reach if fields.any() else np.zeros_like(fields)
        return np.where(near, ramp, 0.0).astype(np.float32)

    def estimate(
        self, image: np.ndarray, seed: int, steps: int | None = None, refine: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(bone layer at the working size in the image's units, the estimator's alone), no region.

        ``refine`` False returns the estimator's layer twice (the comparison the model card makes).
        """
        working = to_working(np.asarray(image, np.float32), self.working_size)
        lo, hi = np.percentile(working, self.config.percentiles)
        span = float(max(hi - lo, 1e-6))
        norm = ((working - lo) / span).astype(np.float32)[None, None]
        first = self.estimator.run(None, {"image": norm})[0].astype(np.float32)
        if self.config.estimator_flip_average:
            mirrored = self.estimator.run(None, {"image": np.ascontiguousarray(norm[..., ::-1])})[0]
            first = (0.5 * (first + mirrored[..., ::-1])).astype(np.float32)
        unit = span / self.config.bone_scale
        if not refine:
            layer = np.maximum(first[0, 0], 0.0) * unit
            return layer, layer
        rng = np.random.default_rng(seed)
        state = first + np.float32(self.config.eta) * rng.standard_normal(first.shape, dtype=np.float32)
        levels = scheduler.sigmas(steps or self.steps)
        for sigma, sigma_next in zip(levels[:-1], levels[1:]):
            model_input = np.concatenate([state, norm, first], axis=1)
            velocity = self.refiner.run(
                None, {"sample": model_input, "timestep": np.array([scheduler.timestep(sigma)], np.float32)}
            )[0]
            state = scheduler.euler_step(state, velocity, sigma, sigma_next)
        return np.maximum(state[0, 0], 0.0) * unit, np.maximum(first[0, 0], 0.0) * unit

    def region(self, lung_probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Where the output may differ from the input, on a source matrix of ``shape``."""
        return np.asarray(to_source(self.weight(lung_probability), shape, "linear") > 0.0)

    def bone_layer(
        self, image: np.ndarray, lung_probability: np.ndarray, seed: int, steps: int | None = None, refine: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(weighted bone layer on the source matrix of ``image``, region): zero outside the region."""
        shape = np.asarray(image).shape
        weight = self.weight(lung_probability)
        layer, _ = self.estimate(image, seed, steps, refine)
        region = np.asarray(to_source(weight, shape, "linear") > 0.0)
        bone = np.maximum(to_source(layer * weight, shape, "linear"), 0.0).astype(np.float32)
        bone[~region] = 0.0
        return bone, region

    def __call__(
        self, radiograph: Radiograph, segmentation: SegmentationResult, seed: int | None = None
    ) -> SuppressionResult:
        """Suppress the bone of ``radiograph`` inside the lung fields of ``segmentation``."""
        start = time.perf_counter()
        lungs = segmentation.working_probabilities.get("lungs")
        if lungs is None:
            raise ValueError("the segmentation has no lung-field probability: the suppression needs its region")
        if seed is None:
            seed = seed_for(radiograph)
        bone, region = self.bone_layer(radiograph.image, lungs, seed)
        soft = radiograph.subtract_layer(bone, region)
        seconds = time.perf_counter() - start
        logger.info(
            "suppressed %s in %.2f s (seed %d, %d steps)", radiograph.sop_instance_uid, seconds, seed, self.steps
        )
        return SuppressionResult(soft, bone, region, int(seed), self.steps, self.working_size, self.info, seconds)
