"""The refiner's sampler in numpy: the Euler steps of a rectified-flow bridge.

The refiner is trained on ``z_t = t * (e + eta) + (1 - t) * b``: ``t = 1`` is the estimator's
layer ``e`` plus a little noise, ``t = 0`` the true layer ``b``; it predicts the velocity
``dz/dt = (e + eta) - b``. Sampling integrates from ``t = 1`` to ``0`` in ``steps`` equal Euler
steps, ``z <- z + (t_next - t) * v``. This is diffusers' ``FlowMatchEulerDiscreteScheduler``
(``shift`` 1, sigmas ``1, 1 - 1/steps, ..., 1/steps``, timestep ``1000 * sigma``) written out
in a few lines so that the runtime needs neither torch nor diffusers; a test checks the two
against each other.
"""

from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000


def sigmas(steps: int) -> np.ndarray:
    """The ``steps + 1`` noise levels from 1 down to 0 (the last is the clean end)."""
    if int(steps) < 1:
        raise ValueError(f"steps {steps}: expected >= 1")
    return np.linspace(1.0, 0.0, int(steps) + 1)


def timestep(sigma: float) -> float:
    """The network's timestep input for a noise level (diffusers: ``sigma * num_train_timesteps``)."""
    return float(sigma) * NUM_TRAIN_TIMESTEPS


def euler_step(sample: np.ndarray, velocity: np.ndarray, sigma: float, sigma_next: float) -> np.ndarray:
    """One Euler step of the bridge, ``sample + (sigma_next - sigma) * velocity`` (float32)."""
    return (sample + np.float32(sigma_next - sigma) * velocity).astype(np.float32)
