"""The median along the ribs (``shape.rib_median``): the rib's direction is read from a mask, a
nodule-sized bump on a rib is dropped, the rib band is kept, nothing is added; where ribs lie
close, the rib mask gives the direction that the merged region lacks."""

from __future__ import annotations

import numpy as np
import pytest

from ribnode.models.suppression.lesions import nodule
from ribnode.models.suppression.shape import rib_axis_orientation, rib_median

SIZE = 128


def _band(angle_deg: float, half_width: float = 8.0) -> np.ndarray:
    """A straight band through the image centre running at ``angle_deg`` (rows pointing up,
    as ``line_footprint`` counts), float 0/1."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    theta = np.deg2rad(angle_deg)
    # distance to the line through the centre with direction (d_col, d_row) = (cos, -sin)
    distance = np.abs((cols - SIZE / 2) * np.sin(theta) + (rows - SIZE / 2) * np.cos(theta))
    return (distance <= half_width).astype(np.float64)


@pytest.mark.parametrize(("angle", "index"), [(0.0, 0), (90.0, 6), (45.0, 3), (135.0, 9), (30.0, 2)])
def test_orientation_is_read_along_the_band(angle: float, index: int) -> None:
    band = _band(angle) > 0
    direction = rib_axis_orientation(band, orientations=12)
    core = _band(angle, half_width=4.0) > 0
    core[:24], core[-24:], core[:, :24], core[:, -24:] = False, False, False, False
    values, counts = np.unique(direction[core], return_counts=True)
    assert values[np.argmax(counts)] == index
    assert counts.max() >= 0.9 * core.sum()


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 120.0])
def test_small_bump_on_a_rib_is_dropped_and_the_rib_kept(angle: float) -> None:
    band = _band(angle)
    region = _band(angle, half_width=11.0) > 0
    bump = nodule((SIZE, SIZE), (SIZE / 2, SIZE / 2), 5.0, 0.5)
    bone = (0.2 * band + bump).astype(np.float32)
    out = rib_median(bone, region, band > 0, length=31)
    assert (out >= 0).all()
    np.testing.assert_array_equal(out[~region], bone[~region])  # untouched outside the region
    core = _band(angle, half_width=5.0) > 0
    core[:20], core[-20:], core[:, :20], core[:, -20:] = False, False, False, False
    np.testing.assert_allclose(out[core], 0.2, atol=1e-6)  # the rib's layer, bump gone
    # the bump is gone; only where the band leaves the image may its ends differ
    centre = np.hypot(*(np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2)) < 48
    residual = (out - 0.2 * band)[centre]
    assert (residual ** 2).sum() < 1e-6 * (bump ** 2).sum()


def test_a_bump_wider_than_half_the_line_is_kept() -> None:
    """What the line length means: a nodule wider than half of it is not taken out."""
    band = _band(0.0, half_width=14.0)
    region = _band(0.0, half_width=17.0) > 0
    bump = nodule((SIZE, SIZE), (SIZE / 2, SIZE / 2), 12.0, 0.5)
    out = rib_median((0.2 * band + bump).astype(np.float32), region, band > 0, length=21)
    assert out[SIZE // 2, SIZE // 2] > 0.2 + 0.4


def test_rib_median_validates() -> None:
    bone = np.zeros((16, 16), np.float32)
    with pytest.raises(ValueError, match="line length"):
        rib_median(bone, bone > 0, bone > 0, 0)
    with pytest.raises(ValueError, match="does not match"):
        rib_median(bone, np.zeros((8, 8), bool), bone > 0, 5)
    with pytest.raises(ValueError, match="rib mask"):
        rib_median(bone, bone > 0, np.zeros((8, 8), bool), 5)


def _close_ribs(angle_deg: float = 30.0, width: float = 10.0, gap: float = 12.0) -> np.ndarray:
    """Parallel bands ``width`` px wide, ``gap`` px apart, at ``angle_deg``: ribs lying close."""
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    theta = np.deg2rad(angle_deg)
    across = (cols - SIZE / 2) * np.sin(theta) + (rows - SIZE / 2) * np.cos(theta)
    return np.mod(across + width / 2, width + gap) < width


def test_a_bump_between_close_ribs_leaves_the_ribs_alone_with_the_rib_masks_direction() -> None:
    """Where ribs lie close, their dilated region is one blob with no direction of its own. Read
    from the region, the lines cross rib edges, and a nodule in the lung between two ribs shifts
    the median on the ribs beside it (spurious change). Read from a clean rib mask, the lines run
    along the ribs and the gap, and nothing outside the nodule moves. (The runtime still reads
    the region: the segmenter's ragged masks undo this gain on the product path; see
    docs/benchmarks/suppression.md, "Tried in the tenth session".)"""
    ribs = _close_ribs()
    region = np.hypot(*(np.mgrid[0:SIZE, 0:SIZE] - SIZE / 2)) < 60  # one blob around all of them
    rows, cols = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    # a layer that varies along the ribs, as real ones do, so a rank shift has something to move
    layer = (ribs * (0.15 + 0.001 * (cols - SIZE / 2))).astype(np.float32)
    # the nodule's centre: in the middle of the gap next to the central rib
    theta = np.deg2rad(30.0)
    centre = (SIZE / 2 + 11.0 * np.cos(theta), SIZE / 2 + 11.0 * np.sin(theta))
    assert not ribs[int(round(centre[0])), int(round(centre[1]))]
    bump = nodule((SIZE, SIZE), centre, 3.0, 0.05).astype(np.float32)
    far = np.hypot(rows - centre[0], cols - centre[1]) >= 6.0  # outside the disc dilated by r

    def spurious(direction_from: np.ndarray) -> float:
        change = rib_median(layer + bump, region, direction_from, 31) - rib_median(layer, region, direction_from, 31)
        return float(np.abs(change[far & region]).max())

    assert spurious(ribs) < 1e-6
    assert spurious(region) > 1e-3  # the test can tell the two apart
