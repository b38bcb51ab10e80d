"""``RibSuppressor``: the shipped rib-suppression model on a decoded radiograph.

ONNX Runtime path (default): the exported denoiser plus the numpy DDIM twin, no torch needed.
Torch path: the diffusers ``UNet2DModel`` and diffusers' ``DDIMScheduler``. Both start from
the same seeded numpy noise; the seed comes from the SOP Instance UID (``seed_from_uid``) and
is recorded in the result, so the same input gives the same output bit for bit per backend.

The output is ``p = x - B * R``: ``B`` the estimated bone layer (>= 0) upsampled to the source
matrix, ``R`` the segmentation mask dilated by 5 px at 512 (scaled to the source). Outside
``R`` the stored pixels are returned unchanged (``Radiograph.subtract_layer``). Post-steps on
``B`` at the working size, each set in the model's json: the median along the ribs
(``shape.rib_median``), then the edge taper (``shape.edge_taper``: 1 on the rib mask, 0 at the
region's border).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult, sha256_file
from ribnode.models.preprocess import Radiograph, dilate_mask, to_working
from ribnode.models.suppression.data import region_radius
from ribnode.models.suppression.network import SuppressionConfig
from ribnode.models.suppression.pipeline import SuppressionPipeline, TorchDenoiser
from ribnode.models.suppression.scheduler import DiffusersDDIM, NumpyDDIM
from ribnode.models.suppression.shape import edge_taper, rib_median, rib_shaped
from ribnode.models.suppression.upsample import upsample_bone

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

MODEL_NAME = "ribnode rib-suppression"
MODEL_VERSION = "2.4.0"
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_ONNX = WEIGHTS_DIR / "rib-suppression.onnx"
DEFAULT_TORCH = WEIGHTS_DIR / "rib-suppression.pt"
BACKENDS = ("onnx", "torch")


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


def config_path(weights: Path) -> Path:
    """The config json of a weights file: ``<stem>.json`` beside it, else ``config.json``."""
    beside = weights.with_suffix(".json")
    if beside.is_file():
        return beside
    run = weights.parent / "config.json"
    if run.is_file():
        return run
    raise FileNotFoundError(f"no config for {weights}: expected {beside} or {run}")


class OrtDenoiser:
    """The exported denoiser on ONNX Runtime (CUDA when asked for and available, else CPU)."""

    def __init__(self, path: Path, device: str = "auto", threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # optional backend: say how to get it
            raise ImportError("the onnx backend needs onnxruntime: pip install 'ribnode[ml]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        # No CPU memory arena: at a 512 working grid the mid-block self-attention needs about
        # 1 GB per image, and the arena keeps (and fragments) every peak, so a long-running
        # worker grew to many GB. Without it one image peaks near 2.9 GB and memory is returned;
        # measured about 25 % slower (docs/models/rib-suppression.md).
        options.enable_cpu_mem_arena = False
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise RuntimeError(f"device 'cuda' asked for but onnxruntime offers only {available}")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()

    def __call__(self, model_input: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        return self.session.run(["bone"], {"sample": np.ascontiguousarray(model_input, np.float32),
                                           "timestep": timesteps.astype(np.int64)})[0]


def _torch_denoiser(weights: Path, config: SuppressionConfig, device: str, threads: int) -> tuple[Any, str]:
    try:
        import torch
    except ImportError as exc:
        raise ImportError("the torch backend needs torch and diffusers: pip install 'ribnode[ml]'") from exc
    from ribnode.models.suppression.network import build_unet

    if threads:
        torch.set_num_threads(int(threads))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = build_unet(config.network)
    unet.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return TorchDenoiser(unet, device), device


def _odd_working_length(px_512: int, working_size: int) -> int:
    """A line length given in px at 512, at the working size and odd (0: off)."""
    return 0 if px_512 <= 0 else max(1, int(round(px_512 * working_size / 512))) | 1


class RibSuppressor:
    """Rib and clavicle suppression of one radiograph (see the module docstring)."""

    def __init__(self, weights: Path | None = None, steps: int | None = None, device: str = "auto",
                 backend: str = "onnx", threads: int = 0, upsampling: str = "linear",
                 rib_shape_px_512: int | None = None, tile_px: int | None = None,
                 tile_stride_px: int | None = None, rib_median_px_512: int | None = None,
                 edge_taper_px_512: float | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device {device!r}: expected auto, cpu or cuda")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps {steps}: expected >= 1")
        path = Path(weights) if weights is not None else (DEFAULT_ONNX if backend == "onnx" else DEFAULT_TORCH)
        if not path.is_file():
            raise FileNotFoundError(f"suppression weights {path} not found")
        self.config = SuppressionConfig.load(config_path(path))
        # None: the model's own default number of steps (``default_steps`` in its json)
        self.steps = int(steps) if steps is not None else int(self.config.default_steps)
        self.backend, self.upsampling = backend, upsampling
        line = self.config.rib_shape_line_px_512 if rib_shape_px_512 is None else int(rib_shape_px_512)
        # the line length at the working size, odd, 0 = off
        self.rib_shape_px = _odd_working_length(line, self.config.working_size)
        median = self.config.rib_median_line_px_512 if rib_median_px_512 is None else int(rib_median_px_512)
        if median < 0:
            raise ValueError(f"rib median line {median} px: expected >= 0 (0: off)")
        self.rib_median_px = _odd_working_length(median, self.config.working_size)
        taper = float(self.config.edge_taper_px_512 if edge_taper_px_512 is None else edge_taper_px_512)
        if taper < 0:
            raise ValueError(f"edge taper {taper} px: expected >= 0 (0: off)")
        # the reach at the working size, 0 = off
        self.edge_taper_px = taper * self.config.working_size / 512.0
        if backend == "onnx":
            denoiser: Any = OrtDenoiser(path, device, threads)
            self.device = "cuda" if "CUDAExecutionProvider" in denoiser.providers else "cpu"
            sampler: Any = NumpyDDIM(self.config.scheduler)
        else:
            denoiser, self.device = _torch_denoiser(path, self.config, device, threads)
            sampler = DiffusersDDIM(self.config.scheduler)
        # tile_px/tile_stride_px None: the json's (0 = the whole working image at once)
        self.pipeline = SuppressionPipeline(denoiser, sampler, self.config, tile_px, tile_stride_px)
        self.working_size = self.config.working_size
        self.info = ModelInfo(MODEL_NAME, MODEL_VERSION, sha256_file(path), {
            "backend": backend, "device": self.device, "mode": self.config.mode,
            "steps": self.steps if self.config.mode == "diffusion" else 1,
            "working_size": self.working_size, "scheduler": "DDIM", "upsampling": upsampling,
            "region_dilation_px_512": self.config.mask_dilation_px_512,
            "rib_shape_line_px_512": line,
            "rib_median_line_px_512": median,
            "edge_taper_px_512": taper,
            "tile_px": self.pipeline.tile, "tile_stride_px": self.pipeline.stride,
        })

    def region(self, mask: np.ndarray) -> np.ndarray:
        """Where the output may differ from the input: ``mask`` dilated by 5 px at 512 (scaled)."""
        return dilate_mask(mask, region_radius(mask.shape, self.config.mask_dilation_px_512))

    def bone_layer(self, image: np.ndarray, mask: np.ndarray, seed: int, steps: int | None = None) -> np.ndarray:
        """The bone layer to subtract on the source matrix of ``image``, given its rib ``mask``
        (zero outside ``region(mask)``)."""
        return self.bone_layers([image], mask, seed, steps)[0]

    def bone_layers(self, images: list[np.ndarray], mask: np.ndarray, seed: int,
                    steps: int | None = None) -> list[np.ndarray]:
        """``bone_layer`` of several same-shape images sharing one rib mask and seed, in one batch."""
        return self._bone_layers(images, mask, self.region(mask), seed, steps)

    def _bone_layers(self, images: list[np.ndarray], mask: np.ndarray, region: np.ndarray, seed: int,
                     steps: int | None) -> list[np.ndarray]:
        size = self.working_size
        working = np.stack([to_working(image, size) for image in images])
        region_w = to_working(region.astype(np.float32), size)
        regions = np.repeat(region_w[None], len(images), axis=0)
        estimate = self.pipeline(working, regions, steps or self.steps, [seed] * len(images))
        taper = None
        if self.edge_taper_px:
            taper = edge_taper(to_working(np.asarray(mask, np.float32), size) >= 0.5, self.edge_taper_px)
        out = []
        for bone_w, image in zip(estimate.bone, images):
            shaped = self._shaped(bone_w, region_w)
            if taper is not None:
                shaped = shaped * taper
            bone = upsample_bone(shaped, image.shape, self.upsampling, guide=image)
            bone[~region] = 0.0
            out.append(bone)
        return out

    def _shaped(self, bone_working: np.ndarray, region_working: np.ndarray) -> np.ndarray:
        """The working-size bone layer after the optional post-steps (rib-shaped part, median
        along the ribs); unchanged when both are off."""
        if self.rib_shape_px:
            bone_working = rib_shaped(bone_working, self.rib_shape_px)
        if self.rib_median_px:
            # the lines see the layer as it is subtracted (zero outside the region), so a rib's
            # median never takes in what the network put outside the region. The ribs' direction
            # is read from the region, not from the rib mask: with the segmenter's masks (the
            # product path) the region's direction keeps more of a rib nodule and changes less
            # around it (docs/benchmarks/suppression.md, "Tried in the tenth session")
            inside = region_working >= 0.5
            bone_working = rib_median(np.where(inside, bone_working, 0.0), inside, inside, self.rib_median_px)
        return bone_working

    def __call__(self, radiograph: Radiograph, segmentation: SegmentationResult,
                 seed: int | None = None) -> SuppressionResult:
        """Suppress the ribs of ``radiograph`` inside the dilated ``segmentation`` mask."""
        start = time.perf_counter()
        if segmentation.mask.shape != radiograph.shape:
            raise ValueError(f"segmentation mask {segmentation.mask.shape} does not match the "
                             f"radiograph {radiograph.shape}")
        if seed is None:
            seed = seed_for(radiograph)
        region = self.region(segmentation.mask)
        bone = self._bone_layers([radiograph.image], segmentation.mask, region, seed, None)[0]
        soft = radiograph.subtract_layer(bone, region)
        seconds = time.perf_counter() - start
        steps = self.steps if self.config.mode == "diffusion" else 1
        logger.info("suppressed %s in %.2f s (seed %d, %d steps)", radiograph.sop_instance_uid, seconds, seed, steps)
        return SuppressionResult(soft, bone, region, int(seed), steps, self.working_size, self.info, seconds)
