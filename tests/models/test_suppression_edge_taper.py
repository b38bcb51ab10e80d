"""The edge taper (``shape.edge_taper``): 1 on the rib mask, falling linearly with the distance
from it to 0 at the region's border; it can only shrink the bone layer."""

from __future__ import annotations

import numpy as np
import pytest

from ribnode.models.suppression.shape import edge_taper


def test_taper_is_one_on_the_ribs_linear_off_them_and_zero_from_the_reach_on() -> None:
    ribs = np.zeros((40, 60), bool)
    ribs[10:20, :] = True  # a horizontal band: the distance below it is the row offset
    weight = edge_taper(ribs, 5.0)
    assert weight.dtype == np.float32 and weight.shape == ribs.shape
    np.testing.assert_array_equal(weight[ribs], 1.0)
    for offset, expected in [(1, 0.8), (2, 0.6), (3, 0.4), (4, 0.2), (5, 0.0), (12, 0.0)]:
        np.testing.assert_allclose(weight[19 + offset], expected, atol=1e-6)  # below the band
        np.testing.assert_allclose(weight[10 - offset] if offset <= 10 else 0.0, expected, atol=1e-6)
    assert ((weight >= 0) & (weight <= 1)).all()


def test_taper_falls_into_a_gap_between_ribs() -> None:
    """Lung between two ribs 8 px apart: the middle of the gap, 4 px from both, keeps 0.2."""
    ribs = np.zeros((64, 64), bool)
    ribs[20:28], ribs[36:44] = True, True
    weight = edge_taper(ribs, 5.0)
    np.testing.assert_allclose(weight[31], 0.2, atol=1e-6)
    np.testing.assert_allclose(weight[32], 0.2, atol=1e-6)
    np.testing.assert_allclose(weight[28], 0.8, atol=1e-6)


def test_taper_of_an_empty_mask_is_zero_and_reach_must_be_positive() -> None:
    np.testing.assert_array_equal(edge_taper(np.zeros((8, 8), bool), 5.0), 0.0)
    with pytest.raises(ValueError, match="reach"):
        edge_taper(np.ones((8, 8), bool), 0.0)
