"""Tiled denoising: windows cover the image, blending is a partition of unity, a change in the
input reaches only the windows that contain it, and the config validates its tiling. Torch-free:
the denoisers here are numpy functions with known behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from ribnode.models.suppression.network import NetworkConfig, SuppressionConfig
from ribnode.models.suppression.pipeline import SuppressionPipeline, TiledDenoiser, window_starts
from ribnode.models.suppression.scheduler import NumpyDDIM


def _pointwise(model_input: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    """A denoiser that looks at each pixel alone: 2 x the radiograph channel + noisy channel."""
    return (2.0 * model_input[:, 1:2] + model_input[:, 0:1]).astype(np.float32)


class _WindowMean:
    """A denoiser whose output everywhere depends on its whole input (like global attention):
    each pixel gets its value plus the mean of the window. Records the window sides it saw."""

    def __init__(self) -> None:
        self.sides: set[tuple[int, int]] = set()

    def __call__(self, model_input: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
        self.sides.add(model_input.shape[2:])
        x = model_input[:, 1:2].astype(np.float64)
        return (x + x.mean(axis=(2, 3), keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(("length", "tile", "stride", "expected"), [
    (512, 128, 64, list(range(0, 385, 64))),
    (100, 32, 30, [0, 30, 60, 68]),  # the last window is flush with the edge
    (24, 32, 16, [0]),  # shorter than a window: one window
])
def test_window_starts_cover_every_pixel(length: int, tile: int, stride: int, expected: list[int]) -> None:
    starts = window_starts(length, tile, stride)
    assert starts == expected
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()


def test_tiled_pointwise_denoiser_equals_the_whole_image() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 96, 80)).astype(np.float32)
    t = np.array([999, 500])
    whole = _pointwise(x, t)
    for tile, stride in ((32, 16), (32, 32), (48, 8), (64, 40)):
        tiled = TiledDenoiser(_pointwise, tile, stride, batch=5)(x, t)
        np.testing.assert_allclose(tiled, whole, rtol=1e-6, atol=1e-6)


def test_tiles_are_the_size_asked_and_a_change_stays_in_its_windows() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    inner = _WindowMean()
    tiled = TiledDenoiser(inner, 32, 16)
    before = tiled(x, np.array([999]))
    assert inner.sides == {(32, 32)}
    bumped = x.copy()
    bumped[0, 1, 60, 70] += 5.0
    diff = np.abs(tiled(bumped, np.array([999])) - before)[0, 0]
    rows, cols = np.nonzero(diff > 1e-6)
    # only windows holding pixel (60, 70) change: rows 48..79 and cols 64..95 at stride 16
    assert rows.min() >= 60 - 31 and rows.max() <= 60 + 31
    assert cols.min() >= 70 - 31 and cols.max() <= 70 + 31
    # the same denoiser on the whole image spreads the change to every pixel
    whole = np.abs(inner(bumped, np.array([999])) - inner(x, np.array([999])))[0, 0]
    assert (whole > 1e-6).all()


def test_tiled_output_is_deterministic_and_not_the_whole_image_output() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    tiled = TiledDenoiser(_WindowMean(), 32)
    a, b = tiled(x, np.array([999])), tiled(x, np.array([999]))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, _WindowMean()(x, np.array([999])))


def test_pipeline_tiles_from_config_or_argument() -> None:
    config = SuppressionConfig(network=NetworkConfig(sample_size=64, block_out_channels=(8, 16), norm_num_groups=4),
                               tile_px=32, default_steps=1)
    inner = _WindowMean()
    pipeline = SuppressionPipeline(inner, NumpyDDIM(config.scheduler), config)
    assert (pipeline.tile, pipeline.stride) == (32, 16)
    image = np.random.default_rng(3).random((64, 64)).astype(np.float32)
    pipeline(image, np.ones((64, 64), np.float32))
    assert inner.sides == {(32, 32)}
    whole = SuppressionPipeline(_WindowMean(), NumpyDDIM(config.scheduler), config, tile=0)
    assert (whole.tile, whole.stride) == (0, 0) and not isinstance(whole.denoiser, TiledDenoiser)


@pytest.mark.parametrize(("tile", "stride", "match"), [(31, 0, "multiple"), (-8, 0, "multiple"),
                                                       (32, 40, "stride"), (32, -1, "stride")])
def test_config_rejects_bad_tiling(tile: int, stride: int, match: str) -> None:
    network = NetworkConfig(sample_size=64, block_out_channels=(8, 16), norm_num_groups=4)
    with pytest.raises(ValueError, match=match):
        SuppressionConfig(network=network, tile_px=tile, tile_stride_px=stride)
