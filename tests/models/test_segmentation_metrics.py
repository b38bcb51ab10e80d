"""Dice, IoU and HD95 (ribnode_lab.metrics) on masks whose figures are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ribnode_lab.metrics import dice, hd95, iou, segmentation_metrics, surface


def _square(shape: tuple[int, int], top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_dice_and_iou_of_overlapping_squares() -> None:
    a = _square((64, 64), 10, 10, 20)  # 400 px
    b = _square((64, 64), 10, 20, 20)  # 400 px, overlap 20 x 10 = 200 px
    assert dice(a, b) == pytest.approx(2 * 200 / 800)
    assert iou(a, b) == pytest.approx(200 / 600)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_empty_masks() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert math.isinf(hd95(empty, _square((8, 8), 2, 2, 3)))


def test_hd95_of_a_shifted_square_is_the_shift() -> None:
    a = _square((100, 100), 20, 20, 40)
    b = _square((100, 100), 20, 26, 40)  # shifted 6 px right
    # Most boundary pixels of the left/right edges are exactly 6 px away, top/bottom ones 0..6.
    assert hd95(a, b) == pytest.approx(6.0)
    assert hd95(a, a) == 0.0


def test_hd95_uses_spacing_per_axis() -> None:
    a = _square((100, 100), 20, 20, 40)
    b = _square((100, 100), 20, 26, 40)
    figures = segmentation_metrics(a, b, spacing=(0.5, 0.25))  # column spacing 0.25 mm
    assert figures["hd95_px"] == pytest.approx(6.0)
    assert figures["hd95_mm"] == pytest.approx(1.5)


def test_surface_is_the_one_pixel_boundary() -> None:
    square = _square((20, 20), 5, 5, 6)
    assert surface(square).sum() == 4 * 6 - 4


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
