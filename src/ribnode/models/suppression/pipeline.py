"""The sampling pipeline: wires a denoiser and a scheduler, one ``__call__``, typed output.

It estimates the bone layer at the working size from the working-size radiograph and the
dilated rib region. The denoiser is any callable ``(model_input (B,3,H,W) float32, timesteps
(B,) int64) -> (B,1,H,W) float32``: the torch ``UNet2DModel`` (``TorchDenoiser``) or the
ONNX Runtime session (``ribnode.models.suppression.runtime.OrtDenoiser``). The scheduler is
diffusers' ``DDIMScheduler`` (torch path) or its numpy twin (``scheduler.NumpyDDIM``). The
network sees the radiograph normalised linearly per image; its output is mapped back by the
inverse linear scale, so the returned bone layer is in the radiograph's own units.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ribnode.models.suppression.data import normalise
from ribnode.models.suppression.network import SuppressionConfig, check_tiling
from ribnode.models.suppression.scheduler import Sampler

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

Denoiser = Callable[[np.ndarray, np.ndarray], np.ndarray]


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The starting noise of one sample: numpy PCG64 seeded by ``seed`` (both backends share it)."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


@dataclass(frozen=True)
class BoneEstimate:
    """Bone layers at the working size, bone-bright units of the input (clamped >= 0)."""

    bone: np.ndarray  # (B, H, W) float32
    raw: np.ndarray  # (B, H, W) float32, the network's last output in its scaled units
    scale: np.ndarray  # (B,) float64: bone = max(raw, 0) * scale
    steps: int
    seeds: tuple[int, ...]
    timesteps: tuple[int, ...]


def window_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of windows of ``tile`` px every ``stride`` px along ``length`` px, the last
    one flush with the far edge, so every pixel is covered."""
    if tile >= length:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


class TiledDenoiser:
    """A denoiser run on overlapping square windows of its input, blended with a Hann weight.

    The network is trained on crops (128 px of the 512 working grid). On the whole image its
    GroupNorm layers take their statistics over 16 times the area they were trained on; that,
    not the mid-block attention, is what changes its output (measured:
    ``benchmarks/suppression_window_attention.py``). On windows of the training size it sees what
    it was trained on. The windows overlap, and each output pixel is the weighted mean of the
    windows that cover it (a Hann window, strictly positive, so image edges covered by one window
    keep that window's value). Windows are sent ``batch`` at a time, always in the same order, so
    the result is deterministic per backend.
    """

    def __init__(self, inner: Denoiser, tile: int, stride: int = 0, batch: int = 16) -> None:
        if tile < 1:
            raise ValueError(f"tile {tile} px: expected >= 1")
        stride = stride or max(1, tile // 2)
        if not 1 <= stride <= tile:
            raise ValueError(f"stride {stride} px: expected 1..{tile}")
        self.inner, self.tile, self.stride, self.batch = inner, int(tile), int(stride), max(1, int(batch))

    def _weight(self, height: int, width: int) -> np.ndarray:
        rows = np.hanning(height + 2)[1:-1]
        cols = np.hanning(width + 2)[1:-1]
        return np.outer(rows, cols)

    def __call__(self, model_input: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        images, _, height, width = model_input.shape
        th, tw = min(self.tile, height), min(self.tile, width)
        if (th, tw) == (height, width):
            return self.inner(model_input, timesteps)
        weight = self._weight(th, tw)
        windows = [(r, c) for r in window_starts(height, th, self.stride)
                   for c in window_starts(width, tw, self.stride)]
        total = np.zeros((height, width))
        for r, c in windows:
            total[r:r + th, c:c + tw] += weight
        jobs = [(b, r, c) for b in range(images) for r, c in windows]
        out: np.ndarray | None = None
        for first in range(0, len(jobs), self.batch):
            chunk = jobs[first:first + self.batch]
            crops = np.stack([model_input[b, :, r:r + th, c:c + tw] for b, r, c in chunk])
            result = self.inner(np.ascontiguousarray(crops), np.asarray([timesteps[b] for b, _, _ in chunk]))
            if out is None:
                out = np.zeros((images, result.shape[1], height, width))
            for (b, r, c), window in zip(chunk, result):
                out[b, :, r:r + th, c:c + tw] += window * weight
        assert out is not None
        return (out / total).astype(np.float32)


class SuppressionPipeline:
    """Bone-layer estimation by few-step DDIM sampling (or the one-step regression baseline).

    With ``tile`` > 0 (default: the config's ``tile_px``) the denoiser runs on windows of that
    side (``TiledDenoiser``); 0 runs it on the whole working image.
    """

    def __init__(self, denoiser: Denoiser, sampler: Sampler, config: SuppressionConfig,
                 tile: int | None = None, stride: int | None = None) -> None:
        self.tile = int(config.tile_px if tile is None else tile)
        self.stride = int(config.tile_stride_px if stride is None else stride)
        check_tiling(self.tile, self.stride, config.network.multiple)
        if self.tile:
            self.stride = self.stride or max(1, self.tile // 2)
            denoiser = TiledDenoiser(denoiser, self.tile, self.stride)
        else:
            self.stride = 0
        self.denoiser, self.sampler, self.config = denoiser, sampler, config

    def __call__(self, images: np.ndarray, regions: np.ndarray, steps: int | None = None,
                 seeds: int | Sequence[int] = 0) -> BoneEstimate:
        """Estimate the bone layer of each working-size image ((H,W) or (B,H,W), bone-bright).

        ``regions`` are the dilated rib masks at the working size (fraction in [0, 1]).
        """
        images, regions = _batched(images, "images"), _batched(regions, "regions")
        if images.shape != regions.shape:
            raise ValueError(f"images {images.shape} and regions {regions.shape} differ in shape")
        multiple = self.config.network.multiple
        if images.shape[1] % multiple or images.shape[2] % multiple:
            raise ValueError(f"working image {images.shape[1:]}: sides must be multiples of {multiple}")
        seed_list = (seeds,) * len(images) if isinstance(seeds, int) else tuple(int(s) for s in seeds)
        if len(seed_list) != len(images):
            raise ValueError(f"{len(seed_list)} seeds for {len(images)} images")
        steps = int(steps or self.config.default_steps)
        norm, scale = self._condition(images)
        cond = np.stack([norm, regions.astype(np.float32)], axis=1)
        timesteps: tuple[int, ...]
        if self.config.mode == "regression":
            raw, timesteps = self._regress(cond), (0,)
            steps = 1
        else:
            raw, timesteps = self._sample(cond, steps, seed_list)
        bone = (np.maximum(raw, 0.0) * scale[:, None, None]).astype(np.float32)
        return BoneEstimate(bone, raw, scale, steps, seed_list, timesteps)

    def _condition(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        norms, scales = [], []
        for image in images:
            norm, lo, hi = normalise(image, self.config.percentiles)
            norms.append(norm)
            scales.append((hi - lo) / self.config.bone_scale)
        return np.stack(norms), np.asarray(scales, dtype=np.float64)

    def _regress(self, cond: np.ndarray) -> np.ndarray:
        zeros = np.zeros((len(cond), 1) + cond.shape[2:], np.float32)
        out = self.denoiser(np.concatenate([zeros, cond], axis=1), np.zeros(len(cond), np.int64))
        return out[:, 0]

    def _sample(self, cond: np.ndarray, steps: int, seeds: Sequence[int]) -> tuple[np.ndarray, tuple[int, ...]]:
        sample = np.stack([initial_noise(s, (1,) + cond.shape[2:]) for s in seeds])
        timesteps = tuple(self.sampler.timesteps(steps))
        for t in timesteps:
            model_input = np.concatenate([sample, cond], axis=1)
            output = self.denoiser(model_input, np.full(len(cond), t, np.int64))
            sample = self.sampler.step(output, t, sample, steps)
        return sample[:, 0], timesteps


def _batched(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} of shape {array.shape}: expected (H, W) or (B, H, W)")
    return array


class TorchDenoiser:
    """The diffusers ``UNet2DModel`` as a numpy denoiser (no grad, float32, CPU or CUDA)."""

    def __init__(self, unet: Any, device: str = "cpu") -> None:
        self.unet, self.device = unet.eval().to(device), device

    def __call__(self, model_input: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.unet(torch.from_numpy(model_input).to(self.device),
                            torch.from_numpy(timesteps).to(self.device)).sample
        return out.float().cpu().numpy()
