"""DDIM sampling arithmetic in numpy, the same as diffusers' ``DDIMScheduler`` (eta = 0).

The ONNX Runtime path of ``RibSuppressor`` runs without torch; this class reproduces
``DDIMScheduler.set_timesteps`` and ``DDIMScheduler.step`` (deterministic, eta 0, no
thresholding) for the schedules of ``SchedulerConfig``. ``tests/models/test_suppression.py``
checks it against diffusers step by step. The torch path uses diffusers' scheduler itself
through ``DiffusersDDIM``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np

from ribnode.models.suppression.network import SchedulerConfig


class Sampler(Protocol):
    """What the pipeline needs from a scheduler: timesteps and one deterministic step."""

    def timesteps(self, steps: int) -> list[int]: ...

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray, steps: int) -> np.ndarray: ...


def _alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _betas(config: SchedulerConfig) -> np.ndarray:
    n = config.num_train_timesteps
    if config.beta_schedule == "squaredcos_cap_v2":
        return np.array([min(1 - _alpha_bar((i + 1) / n) / _alpha_bar(i / n), 0.999) for i in range(n)],
                        dtype=np.float32)
    if config.beta_schedule == "linear":
        return np.linspace(1e-4, 0.02, n, dtype=np.float32)
    raise ValueError(f"beta_schedule {config.beta_schedule!r}: expected squaredcos_cap_v2 or linear")


class NumpyDDIM:
    """Deterministic DDIM (eta 0) over numpy float32 arrays."""

    def __init__(self, config: SchedulerConfig) -> None:
        if config.clip_sample:
            raise ValueError("clip_sample=True is not supported by the numpy DDIM (the bone layer is unclipped)")
        self.config = config
        alphas = (1.0 - _betas(config)).astype(np.float32)
        # torch.cumprod accumulates float32 input in float64 on CPU; so do we (bit-identical table)
        self.alphas_cumprod = np.cumprod(alphas.astype(np.float64)).astype(np.float32)
        self.final_alpha_cumprod = np.float32(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]

    def timesteps(self, steps: int) -> list[int]:
        """The descending timesteps of ``steps``-step sampling (diffusers' spacing rules)."""
        n = self.config.num_train_timesteps
        if not 1 <= steps <= n:
            raise ValueError(f"steps {steps}: expected 1..{n}")
        spacing = self.config.timestep_spacing
        if spacing == "trailing":
            ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
        elif spacing == "leading":
            ts = (np.arange(0, steps) * (n // steps)).round()[::-1].astype(np.int64)
        else:
            ts = np.linspace(0, n - 1, steps).round()[::-1].astype(np.int64)
        return [int(t) for t in ts]

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray, steps: int) -> np.ndarray:
        """One DDIM update ``x_t -> x_{t-1}`` (``DDIMScheduler.step`` with eta 0)."""
        prev = timestep - self.config.num_train_timesteps // steps
        a_t = self.alphas_cumprod[timestep]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = np.float32(1.0) - a_t
        kind = self.config.prediction_type
        if kind == "sample":
            x0 = model_output
            eps = (sample - a_t ** np.float32(0.5) * x0) / b_t ** np.float32(0.5)
        elif kind == "epsilon":
            eps = model_output
            x0 = (sample - b_t ** np.float32(0.5) * eps) / a_t ** np.float32(0.5)
        else:  # v_prediction
            x0 = a_t ** np.float32(0.5) * sample - b_t ** np.float32(0.5) * model_output
            eps = a_t ** np.float32(0.5) * model_output + b_t ** np.float32(0.5) * sample
        direction = (np.float32(1.0) - a_prev) ** np.float32(0.5) * eps
        return (a_prev ** np.float32(0.5) * x0 + direction).astype(np.float32)


class DiffusersDDIM:
    """diffusers' ``DDIMScheduler`` behind the ``Sampler`` protocol (numpy in, numpy out)."""

    def __init__(self, config: SchedulerConfig) -> None:
        from diffusers import DDIMScheduler

        self.scheduler: Any = DDIMScheduler(**asdict(config))
        self._steps: int | None = None

    def timesteps(self, steps: int) -> list[int]:
        self.scheduler.set_timesteps(steps)
        self._steps = steps
        return [int(t) for t in self.scheduler.timesteps]

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray, steps: int) -> np.ndarray:
        import torch

        if self._steps != steps:
            self.timesteps(steps)
        out = self.scheduler.step(torch.from_numpy(model_output), timestep, torch.from_numpy(sample), eta=0.0)
        return out.prev_sample.numpy().astype(np.float32)
