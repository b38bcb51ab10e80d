"""Post-steps on the bone layer that keep what is rib-shaped and drop what is nodule-shaped.

Ribs and clavicles are long bands; a nodule is a compact blob. Two post-steps use that:

* ``rib_shaped``: the grey-scale opening of the bone layer ``B`` with a line segment of length
  ``L`` keeps every part of ``B`` that contains such a segment at that height; the maximum over
  several orientations (a union of directional openings) keeps the rib bands, whatever their
  direction, and drops compact bumps shorter than ``L`` in every direction. An opening never
  exceeds its input (``open(B) <= B``), so this step can only subtract *less*. Measured on
  version 2.0.0, it spread a nodule's trace along the lines (spurious change 0.0133).
* ``rib_median``: the median of ``B`` along the rib through each pixel, the rib's direction
  taken from a mask (the runtime passes the region). It drops a bump narrower than half the
  line without spreading it.

And one weight on where the layer may act:

* ``edge_taper``: 1 on the rib mask, falling linearly to 0 at a set distance from it (the
  region's dilation). The region is dilated so that a rib edge the mask misses by a few pixels
  is still suppressed; the taper lets the layer fade out over that margin instead of stopping
  at the region's border, and it damps what the network puts into the gaps between ribs, which
  is lung.

None of them adds or paints anything into the image: the layer stays >= 0, and a taper can only
make it smaller.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def line_footprint(length: int, angle_deg: float) -> np.ndarray:
    """A one-pixel-wide digital line of ``length`` px through the centre at ``angle_deg``."""
    if length < 1:
        raise ValueError(f"line length {length}: expected >= 1 px")
    half = (length - 1) / 2.0
    size = 2 * int(np.ceil(half)) + 1
    footprint = np.zeros((size, size), dtype=bool)
    theta = np.deg2rad(angle_deg)
    for s in np.linspace(-half, half, 4 * length):
        row = int(round(size // 2 - s * np.sin(theta)))
        col = int(round(size // 2 + s * np.cos(theta)))
        footprint[row, col] = True
    return footprint


def rib_shaped(bone: np.ndarray, length: int, orientations: int = 12) -> np.ndarray:
    """Union of openings of ``bone`` by lines of ``length`` px in ``orientations`` directions."""
    if orientations < 1:
        raise ValueError(f"orientations {orientations}: expected >= 1")
    bone = np.asarray(bone, dtype=np.float32)
    out = np.full_like(bone, -np.inf)
    for k in range(orientations):
        opened = ndimage.grey_opening(bone, footprint=line_footprint(length, 180.0 * k / orientations),
                                      mode="nearest")
        np.maximum(out, opened, out=out)
    return np.minimum(out, bone)


def rib_axis_orientation(ribs: np.ndarray, orientations: int = 12, sigma_px: float = 6.0) -> np.ndarray:
    """Per pixel, the index ``k`` of the line direction ``180 * k / orientations`` degrees
    (``line_footprint``'s convention) closest to the rib running through it.

    The direction comes from the structure tensor of the (smoothed) mask alone: its edges run
    along the ribs, so the dominant gradient is across them. The mask is the same with or
    without a nodule in the image, so a nodule cannot turn the filter. ``ribs`` may be the rib
    mask or the region dilated from it. Where ribs lie close, the region is one blob with no
    direction there, and the rib mask keeps each rib's edges; but the segmenter's rib mask is
    ragged, and measured on the product path the region's direction is the safer one
    (``docs/benchmarks/suppression.md``, "Tried in the tenth session").
    """
    m = ndimage.gaussian_filter(np.asarray(ribs, dtype=np.float64), 2.0)
    grad_row, grad_col = ndimage.sobel(m, axis=0), ndimage.sobel(m, axis=1)
    j_cc = ndimage.gaussian_filter(grad_col * grad_col, sigma_px)
    j_rr = ndimage.gaussian_filter(grad_row * grad_row, sigma_px)
    j_rc = ndimage.gaussian_filter(grad_col * grad_row, sigma_px)
    across = 0.5 * np.arctan2(2.0 * j_rc, j_cc - j_rr)  # gradient angle, rows pointing down
    # the rib runs at right angles to it; line_footprint counts angles with rows pointing up
    along_deg = np.mod(-np.degrees(across + np.pi / 2.0), 180.0)
    return np.round(along_deg / (180.0 / orientations)).astype(np.int64) % orientations


def rib_median(bone: np.ndarray, region: np.ndarray, ribs: np.ndarray, length: int,
               orientations: int = 12) -> np.ndarray:
    """The bone layer replaced, inside ``region``, by its median along the rib through each pixel.

    The rib's direction at each pixel comes from the mask ``ribs`` (``rib_axis_orientation``):
    the runtime passes ``region`` itself.
    A rib's bone layer changes slowly along the rib. A nodule that the network partly read as
    bone is a bump shorter than half the line (``length`` px: diameters up to about
    ``length / 2``), and the median along the line drops it. Unlike a mean, the median does
    not spread the bump along the rib. Outside ``region`` the layer is returned unchanged;
    the result is clamped at >= 0, so it never paints anything into the image.
    """
    if length < 1:
        raise ValueError(f"line length {length}: expected >= 1 px")
    bone = np.asarray(bone, dtype=np.float32)
    region = np.asarray(region, dtype=bool)
    if region.shape != bone.shape:
        raise ValueError(f"region {region.shape} does not match the bone layer {bone.shape}")
    if np.shape(ribs) != bone.shape:
        raise ValueError(f"rib mask {np.shape(ribs)} does not match the bone layer {bone.shape}")
    direction = rib_axis_orientation(np.asarray(ribs, dtype=bool), orientations)
    return np.maximum(along_rib_lines(bone, region, direction, length, "median", orientations), 0.0)


def along_rib_lines(values: np.ndarray, where: np.ndarray, direction: np.ndarray, length: int,
                    statistic: str = "median", orientations: int = 12) -> np.ndarray:
    """``values`` replaced, where ``where`` holds, by their median (or mean) over a line of
    ``length`` px in each pixel's rib direction (``rib_axis_orientation``'s index); unchanged
    elsewhere."""
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic {statistic!r}: expected 'median' or 'mean'")
    out = values.copy()
    for k in range(orientations):
        here = where & (direction == k)
        if here.any():
            footprint = line_footprint(length, 180.0 * k / orientations)
            if statistic == "median":
                filtered = ndimage.median_filter(values, footprint=footprint, mode="nearest")
            else:
                filtered = ndimage.convolve(values, footprint / footprint.sum(), mode="nearest")
            out[here] = filtered[here]
    return out


def edge_taper(ribs: np.ndarray, reach_px: float) -> np.ndarray:
    """Weights for the bone layer from the rib mask ``ribs``: 1 on the mask, ``1 - d / reach_px``
    at a distance of ``d`` px from it, and 0 from ``reach_px`` on (float32, same shape)."""
    if reach_px <= 0:
        raise ValueError(f"taper reach {reach_px} px: expected > 0")
    ribs = np.asarray(ribs, dtype=bool)
    if not ribs.any():
        return np.zeros(ribs.shape, np.float32)
    distance = ndimage.distance_transform_edt(~ribs)
    return np.clip(1.0 - distance / float(reach_px), 0.0, 1.0).astype(np.float32)
