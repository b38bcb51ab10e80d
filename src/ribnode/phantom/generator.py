"""A physically based synthetic PA chest radiograph with exact ground truth (numpy only).

The thorax is analytic: every structure is a solid (elliptic cylinder, ellipsoid, tube) whose
path length along the beam (the z axis, posterior -> anterior) is known in closed form at each
detector pixel. The log attenuation is ``A = sum_i mu_i L_i`` (Beer-Lambert, ``I = I0 exp(-A)``),
with each structure adding its attenuation *relative to what it displaces* (lung displaces soft
tissue, the heart displaces lung, ribs displace soft tissue...).

Two layers are rendered through the same detector chain:

* ``soft``: everything except ribs and clavicles (body, lungs, heart, mediastinum, trachea,
  diaphragm, gastric bubble, spine, humeral heads, vessels, nodules);
* ``full``: ``soft`` plus the ribs and clavicles (the bones that rib suppression removes; the
  spine and shoulders stay, as in bone-suppression targets).

The detector chain: shared scatter (computed from the soft layer), Gaussian PSF in the intensity
domain, log, one shared quantum-noise realisation (Poisson variance, from the full image), a
film-like characteristic curve and a shared local-contrast term. Every step is either identical
for both layers or pointwise, so ``radiograph - soft_tissue`` is *exactly* zero outside the rib
mask (``bone path length > 0``) and is the rendered bone layer inside it.

Units: millimetres; the field of view is 430 mm high (a 17-inch detector), pixels are square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIELD_OF_VIEW_MM = 430.0

# Linear attenuation coefficients (1/mm) near the effective energy of a chest exposure (~60 keV).
MU_SOFT = 0.0205
MU_LUNG = 0.0055  # inflated lung, density ~0.26
MU_BLOOD = 0.0215
MU_CORTICAL = 0.050
MU_TRABECULAR = 0.027


@dataclass(frozen=True)
class SyntheticChest:
    """One synthetic radiograph with its exact ground truth (all on the same matrix)."""

    radiograph: np.ndarray  # float32 bone-bright [0, 1]
    soft_tissue: np.ndarray  # exact bone-free image (ribs and clavicles removed), same scale
    rib_mask: np.ndarray  # bool, ribs + clavicles (bone path length > 0)
    nodules: list[tuple[float, float, float]]  # (row, col, radius_px)
    lung_mask: np.ndarray | None = None  # bool, lung path length > 0 (above the diaphragm)
    pixel_spacing_mm: float = 0.0  # square pixels at the detector
    parameters: dict[str, Any] = field(default_factory=dict)  # the sampled anatomy/exposure

    @property
    def bone(self) -> np.ndarray:
        """The rendered rib+clavicle layer: ``radiograph - soft_tissue`` (0 outside the mask)."""
        return self.radiograph - self.soft_tissue


@dataclass(frozen=True)
class _Grid:
    """Pixel centres in patient millimetres: X from the midline (image right = patient left),
    Y down from the top of the field. The patient may be scaled and off-centre on the detector:
    ``detector = patient * scale + offset``."""

    x: np.ndarray  # (1, cols) patient X of each column
    y: np.ndarray  # (rows, 1) patient Y of each row
    pixel_mm: float  # detector pixel spacing
    shape: tuple[int, int]
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)  # (x, y) mm on the detector

    @property
    def mm_per_px(self) -> float:
        """Patient millimetres per pixel."""
        return self.pixel_mm / self.scale

    def to_pixel(self, x_mm: float, y_mm: float) -> tuple[float, float]:
        """(row, col) of a patient point: pixel (i, j) has its centre at ((i + .5) p, ...)."""
        dx = x_mm * self.scale + self.offset[0]
        dy = y_mm * self.scale + self.offset[1]
        col = (dx + self.shape[1] * self.pixel_mm / 2.0) / self.pixel_mm - 0.5
        return (dy / self.pixel_mm - 0.5, col)

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Row and column slices covering the mm rectangle (clipped to the matrix)."""
        r0, c0 = self.to_pixel(x0, y0)
        r1, c1 = self.to_pixel(x1, y1)
        rows = slice(max(0, int(math.floor(r0))), min(self.shape[0], int(math.ceil(r1)) + 1))
        cols = slice(max(0, int(math.floor(c0))), min(self.shape[1], int(math.ceil(c1)) + 1))
        return rows, cols


def _make_grid(shape: tuple[int, int], scale: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> _Grid:
    rows, cols = shape
    pixel = FIELD_OF_VIEW_MM / rows
    y = (((np.arange(rows, dtype=np.float32) + 0.5) * pixel - offset[1]) / scale)[:, None]
    x = (((np.arange(cols, dtype=np.float32) + 0.5) * pixel - cols * pixel / 2.0 - offset[0]) / scale)[None, :]
    return _Grid(x=x, y=y, pixel_mm=pixel, shape=shape, scale=scale, offset=offset)


def _chord(u2: np.ndarray) -> np.ndarray:
    """sqrt(1 - u^2) where positive: the chord of a unit circle at normalised offset u."""
    return np.sqrt(np.clip(1.0 - u2, 0.0, None))


def _ellipsoid(grid: _Grid, cx: float, cy: float, ax: float, ay: float, depth: float, angle: float = 0.0) -> np.ndarray:
    """Path length (mm) through an ellipsoid with in-plane semi-axes ax, ay rotated by angle."""
    dx, dy = grid.x - cx, grid.y - cy
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return (2.0 * depth) * _chord((dx / ax) ** 2 + (dy / ay) ** 2)


def _smoothstep(v: np.ndarray, a: float, b: float) -> np.ndarray:
    t = np.clip((v - a) / (b - a), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# -- anatomy ------------------------------------------------------------------------------------


def _sample_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    """Random anatomy and exposure (a dict, saved with the sample for provenance)."""
    u = rng.uniform
    lung_width = u(118.0, 142.0)
    return {
        "patient_scale": u(0.9, 1.06),  # body size and magnification
        "patient_dx": u(-12.0, 12.0),  # positioning on the detector (mm)
        "patient_dy": u(-12.0, 18.0),
        "body_half_width": lung_width + u(22.0, 36.0),
        "body_half_depth": u(95.0, 118.0),
        "shoulder_y": u(38.0, 55.0),
        "lung_width": lung_width,
        "lung_apex_y": u(42.0, 58.0),
        "lung_depth": u(135.0, 165.0),
        "medial_x": u(24.0, 32.0),
        "dome_right_y": u(270.0, 300.0),
        "dome_left_offset": u(8.0, 22.0),
        "costophrenic_drop": u(35.0, 55.0),
        "heart_x": u(22.0, 34.0),
        "heart_y": u(268.0, 285.0),
        "heart_ax": u(76.0, 90.0),
        "heart_ay": u(56.0, 66.0),
        "heart_angle": u(-0.45, -0.2),
        "t1_y": u(52.0, 66.0),
        "vertebra_pitch": u(21.5, 25.0),
        "rib_half_height": u(4.8, 6.2),
        "rib_thickness": u(6.5, 8.5),
        "rib_drop": u(0.85, 1.15),
        "bone_contrast": u(2.3, 3.1),
        "scatter": u(0.15, 0.35),
        "photons": u(6e3, 2.5e4),
        "psf_mm": u(0.25, 0.45),
        "tone_mid": u(0.48, 0.58),
        "tone_width": u(0.21, 0.27),
        "vessel_contrast": u(1.8, 2.6),
        "lung_texture": u(0.08, 0.16),
        "local_contrast": u(0.5, 0.8),
    }


def _body(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    """Soft-tissue path through the trunk: an elliptic cylinder widening from neck to chest."""
    shoulders = _smoothstep(grid.y, p["shoulder_y"] - 25.0, p["shoulder_y"] + 25.0)
    neck = 58.0
    half_width = neck + (p["body_half_width"] + 30.0 - neck) * shoulders
    half_width = half_width - 30.0 * _smoothstep(grid.y, 90.0, 170.0)  # below the axillae
    half_depth = 55.0 + (p["body_half_depth"] - 55.0) * shoulders
    return (2.0 * half_depth) * _chord((grid.x / half_width) ** 4) ** 0.4


def _dome_y(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    """The diaphragm: each hemidiaphragm a parabola, the right (image left) one higher."""
    dome = np.where(grid.x < 0, p["dome_right_y"], p["dome_right_y"] + p["dome_left_offset"])
    peak_x = 0.5 * p["lung_width"]
    curvature = p["costophrenic_drop"] / (p["lung_width"] - peak_x) ** 2
    return dome + curvature * (np.abs(grid.x) - peak_x) ** 2


def _lungs(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    """Lung path length: a rounded apex, a convex lateral wall, a flat medial border, cut by the
    diaphragm (with a thin posterior recess below the dome)."""
    ax = np.abs(grid.x)
    apex, wide = p["lung_apex_y"], p["lung_apex_y"] + 155.0
    q = np.clip((grid.y - apex) / (wide - apex), 0.0, 1.0)
    lateral = p["medial_x"] + 48.0 + (p["lung_width"] - p["medial_x"] - 48.0) * np.sin(q * np.pi / 2) ** 0.7
    lateral = lateral + 0.06 * np.clip(grid.y - wide, 0.0, None)
    medial = p["medial_x"] + 12.0 * (1.0 - q)
    centre, half = (lateral + medial) / 2.0, np.maximum((lateral - medial) / 2.0, 1e-3)
    s = (ax - centre) / half
    profile = _chord(np.where(s > 0, s**2, np.abs(s) ** 4))  # rounded laterally, flat medially
    top = np.sqrt(np.clip((grid.y - apex - 18.0 * (s + 0.2) ** 2) / 30.0, 0.0, 1.0))  # a rounded apex
    depth = p["lung_depth"] * top * profile
    below = np.clip(grid.y - _dome_y(grid, p), 0.0, None)
    recess = np.where(below > 0, 0.2 * np.exp(-below / 12.0), 1.0)
    return (depth * recess).astype(np.float32)


def _heart(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    heart = _ellipsoid(grid, p["heart_x"], p["heart_y"], p["heart_ax"], p["heart_ay"], 58.0, p["heart_angle"])
    knob = _ellipsoid(grid, p["heart_x"] + 12.0, p["heart_y"] - p["heart_ay"] - 35.0, 20.0, 17.0, 18.0)
    return heart + knob


def _airways(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    """Trachea (a tube of air down the midline) and the two main bronchi."""
    carina_y = p["t1_y"] + 4.3 * p["vertebra_pitch"]
    trachea = 20.0 * _chord((grid.x / 9.0) ** 2) * (grid.y < carina_y)
    trachea = trachea * _smoothstep(grid.y, 5.0, 25.0)
    left = _tube_segment(grid, (0.0, carina_y), (-38.0, carina_y + 30.0), 5.5)
    right = _tube_segment(grid, (0.0, carina_y), (42.0, carina_y + 40.0), 5.0)
    return (trachea + left + right).astype(np.float32)


def _tube_segment(grid: _Grid, a: tuple[float, float], b: tuple[float, float], radius: float) -> np.ndarray:
    """Path length through a tube (axis in the image plane) from a to b, full matrix."""
    out = np.zeros(grid.shape, np.float32)
    _add_capsule(out, grid, a, b, radius, radius)
    return out


def _add_capsule(
    out: np.ndarray,
    grid: _Grid,
    a: tuple[float, float],
    b: tuple[float, float],
    ra: float,
    rb: float,
    union: bool = False,
) -> None:
    """Add the chord through a tapered tube a->b (radius ra->rb) in its bounding box.

    ``union``: take the maximum instead (joined branches of one tree do not double up).
    """
    r = max(ra, rb)
    rows, cols = grid.box(min(a[0], b[0]) - r, max(a[0], b[0]) + r, min(a[1], b[1]) - r, max(a[1], b[1]) + r)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    x, y = grid.x[:, cols], grid.y[rows, :]
    vx, vy = b[0] - a[0], b[1] - a[1]
    length2 = max(vx * vx + vy * vy, 1e-9)
    t = np.clip(((x - a[0]) * vx + (y - a[1]) * vy) / length2, 0.0, 1.0)
    d2 = (x - a[0] - t * vx) ** 2 + (y - a[1] - t * vy) ** 2
    radius = ra + (rb - ra) * t
    chord = 2.0 * radius * _chord(d2 / radius**2)
    if union:
        np.maximum(out[rows, cols], chord, out=out[rows, cols])
    else:
        out[rows, cols] += chord


def _spine(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    """Extra attenuation (bone minus soft tissue) of the vertebral column, C7 to L2."""
    extra = np.zeros(grid.shape, np.float32)
    pitch = p["vertebra_pitch"]
    for k in range(-2, 17):
        cy = p["t1_y"] + k * pitch
        half_w = 17.0 + 0.7 * max(k, 0)
        half_h = 0.44 * pitch + 0.2 * max(k, 0)
        rows, cols = grid.box(-half_w - 10.0, half_w + 10.0, cy - half_h - 6.0, cy + half_h + 6.0)
        if rows.start >= rows.stop:
            continue
        sub = _Grid(grid.x[:, cols], grid.y[rows, :], grid.pixel_mm, grid.shape, grid.scale, grid.offset)
        body = _ellipsoid(sub, 0.0, cy, half_w, half_h, 16.0) ** 1.0
        rim = body - _ellipsoid(sub, 0.0, cy, half_w - 2.0, half_h - 1.5, 14.0)
        extra[rows, cols] += 0.4 * ((MU_TRABECULAR - MU_SOFT) * body + (MU_CORTICAL - MU_TRABECULAR) * rim)
        for side in (-1.0, 1.0):  # pedicles: cortical rings seen end-on
            ped = _ellipsoid(sub, side * 0.72 * half_w, cy - 0.25 * half_h, 4.5, 6.5, 12.0)
            core = _ellipsoid(sub, side * 0.72 * half_w, cy - 0.25 * half_h, 3.0, 4.8, 10.0)
            extra[rows, cols] += 0.35 * (MU_CORTICAL - MU_SOFT) * (ped - core)
    return extra


def _humeral_heads(grid: _Grid, p: dict[str, Any]) -> np.ndarray:
    x = p["body_half_width"] + 4.0
    out = np.zeros(grid.shape, np.float32)
    for side in (-1.0, 1.0):
        out += _ellipsoid(grid, side * x, p["shoulder_y"] + 35.0, 26.0, 28.0, 25.0)
    return (MU_TRABECULAR - MU_SOFT) * 1.6 * out


# -- ribs and clavicles: tubes with a cortical shell along 3-D centrelines ----------------------


@dataclass(frozen=True)
class _Bone:
    """A tube along a sampled centreline: projected (x, y), depth slope, half height, thickness."""

    x: np.ndarray
    y: np.ndarray
    obliquity: np.ndarray  # path-length factor 1 / cos(angle of the axis to the image plane)
    half_height: np.ndarray
    thickness: np.ndarray


def _rib(p: dict[str, Any], k: int, side: float, rng: np.random.Generator) -> _Bone:
    """Rib k (1..12) on one side: posterior arch from the spine to the lateral turn, then the
    anterior part sloping down and medially to the costal cartilage (not radio-opaque)."""
    pitch = p["vertebra_pitch"]
    y0 = p["t1_y"] + (k - 1) * pitch + rng.normal(0.0, 1.0)
    reach = [0.45, 0.7, 0.84, 0.93, 0.98, 1.0, 1.0, 1.0, 0.99, 0.96, 0.86, 0.7][k - 1]
    lateral_x = (p["lung_width"] + 9.0) * reach
    drop = p["rib_drop"] * (14.0 + 1.6 * k)
    anterior_drop = p["rib_drop"] * (38.0 + 2.5 * k)
    end_x = [26.0, 34.0, 40.0, 46.0, 52.0, 58.0, 66.0, 78.0, 92.0, 110.0, 0.0, 0.0][k - 1]
    t = np.linspace(0.0, 1.0, 48)
    u = np.clip(t / 0.5, 0.0, 1.0)  # posterior part
    v = np.clip((t - 0.5) / 0.5, 0.0, 1.0)  # anterior part
    x0 = 14.0
    post_x = x0 + (lateral_x - x0) * np.sin(u * np.pi / 2)
    post_y = y0 - 0.35 * pitch * np.sin(u * np.pi) ** 1.5 + drop * u**2
    ant_x = end_x + (lateral_x - end_x) * np.cos(v * np.pi / 2)
    ant_y = anterior_drop * np.sin(v * np.pi / 2)
    x = np.where(t <= 0.5, post_x, ant_x)
    y = np.where(t <= 0.5, post_y, y0 + drop + ant_y)
    z = np.where(t <= 0.5, -np.cos(u * np.pi / 2), np.sin(v * np.pi / 2)) * 0.65 * lateral_x
    keep = t <= {11: 0.62, 12: 0.45}.get(k, 1.0)  # floating ribs end laterally
    x, y, z, t = x[keep], y[keep], z[keep], t[keep]
    ds_xy = np.hypot(np.gradient(x), np.gradient(y))
    obliquity = np.clip(np.hypot(ds_xy, np.gradient(z)) / np.maximum(ds_xy, 1e-6), 1.0, 3.0)
    size = 0.75 + 0.25 * min(k, 4) / 4.0
    half_height = p["rib_half_height"] * size * np.where(t <= 0.5, 1.0, 1.0 + 0.3 * v[keep])
    thickness = p["rib_thickness"] * size * np.where(t <= 0.5, 1.0, 1.0 - 0.35 * v[keep])
    return _Bone(side * x, y, obliquity, half_height, thickness)


def _clavicle(p: dict[str, Any], side: float) -> _Bone:
    """An S-shaped tube from the sternal notch up and out to the acromion."""
    t = np.linspace(0.0, 1.0, 40)
    medial_y = p["t1_y"] + 1.1 * p["vertebra_pitch"]
    lateral_x = p["body_half_width"] + 5.0
    x = 22.0 + (lateral_x - 22.0) * t
    y = medial_y - 28.0 * t + 7.0 * np.sin(2.0 * np.pi * t)
    half = 6.5 - 1.5 * t
    return _Bone(side * x, y, np.ones_like(t), half, 1.8 * half)


def _render_bone(extra: np.ndarray, path: np.ndarray, grid: _Grid, bone: _Bone) -> None:
    """Add a bone's extra attenuation and its path length, pixel by pixel along its segments.

    Each pixel takes the nearest point of the centreline (min over segments); the cross-section
    is an ellipse (projected half height h, thickness tau) with a 1.1 mm cortical shell.
    """
    h_max = float(bone.half_height.max())
    rows, cols = grid.box(
        float(bone.x.min()) - h_max,
        float(bone.x.max()) + h_max,
        float(bone.y.min()) - h_max,
        float(bone.y.max()) + h_max,
    )
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    best = np.full(shape, np.inf, np.float32)
    index = np.zeros(shape, np.float32)  # fractional centreline index of the nearest point
    for i in range(len(bone.x) - 1):
        ax, ay, bx, by = bone.x[i], bone.y[i], bone.x[i + 1], bone.y[i + 1]
        # only pixels within h_max of this segment can take it as their nearest inside the bone
        r, c = grid.box(min(ax, bx) - h_max, max(ax, bx) + h_max, min(ay, by) - h_max, max(ay, by) + h_max)
        r = slice(max(r.start, rows.start) - rows.start, min(r.stop, rows.stop) - rows.start)
        c = slice(max(c.start, cols.start) - cols.start, min(c.stop, cols.stop) - cols.start)
        if r.start >= r.stop or c.start >= c.stop:
            continue
        x = grid.x[:, cols][:, c]
        y = grid.y[rows, :][r, :]
        vx, vy = bx - ax, by - ay
        t = np.clip(((x - ax) * vx + (y - ay) * vy) / max(vx * vx + vy * vy, 1e-9), 0.0, 1.0)
        d2 = (x - ax - t * vx) ** 2 + (y - ay - t * vy) ** 2
        closer = d2 < best[r, c]
        best[r, c] = np.where(closer, d2, best[r, c])
        index[r, c] = np.where(closer, i + t, index[r, c])
    at = np.arange(len(bone.x))
    half = np.interp(index, at, bone.half_height)
    tau = np.interp(index, at, bone.thickness) * np.interp(index, at, bone.obliquity)
    cortex = 1.1
    outer = tau * _chord(best / half**2)
    inner = np.maximum(tau - 2 * cortex, 0.0) * _chord(best / np.maximum(half - cortex, 0.1) ** 2)
    extra[rows, cols] += (MU_CORTICAL - MU_SOFT) * (outer - inner) + (MU_TRABECULAR - MU_SOFT) * inner
    path[rows, cols] += outer


# -- vessels and nodules ------------------------------------------------------------------------


def _vessels(grid: _Grid, p: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: hilar arteries and a random branching tree tapering to the periphery."""
    out = np.zeros(grid.shape, np.float32)
    hilum_y = p["t1_y"] + 5.8 * p["vertebra_pitch"]
    for side in (-1.0, 1.0):
        hilum = (side * (p["medial_x"] + 28.0), hilum_y + (6.0 if side < 0 else -6.0))
        out += _ellipsoid(grid, hilum[0] + side * 6.0, hilum[1], 13.0, 24.0, 12.0)
        for angle in np.linspace(-2.2, 2.0, 6) + rng.normal(0.0, 0.15, 6):
            # 0 points laterally; negative up, positive down (image coordinates)
            direction = (side * math.cos(angle), math.sin(angle) * 1.2)
            _branch(out, grid, hilum, direction, rng.uniform(3.2, 4.2), 0, rng)
    return out


def _branch(
    out: np.ndarray,
    grid: _Grid,
    start: tuple[float, float],
    direction: tuple[float, float],
    radius: float,
    depth: int,
    rng: np.random.Generator,
) -> None:
    """One vessel segment, then two or three thinner children (random lengths and angles)."""
    if radius < 0.55 or depth > 5:
        return
    length = rng.uniform(10.0, 22.0) * (radius / 2.0) ** 0.5 + 8.0
    norm = math.hypot(*direction)
    end = (start[0] + direction[0] / norm * length, start[1] + direction[1] / norm * length)
    _add_capsule(out, grid, start, end, radius, radius * 0.92, union=True)
    base = math.atan2(direction[1], direction[0])
    children = 3 if rng.random() < 0.2 else 2
    for child in range(children):
        turn = base + rng.uniform(-0.55, 0.55) + (child - (children - 1) / 2.0) * 0.35
        _branch(out, grid, end, (math.cos(turn), math.sin(turn)), radius * rng.uniform(0.66, 0.8), depth + 1, rng)


def _place_nodules(
    grid: _Grid, lung: np.ndarray, heart: np.ndarray, count: int, rng: np.random.Generator
) -> list[tuple[float, float, float]]:
    """Nodule centres (x, y, radius mm) where the lung is thick and the heart absent."""
    nodules: list[tuple[float, float, float]] = []
    candidates = np.argwhere((lung > 70.0) & (heart <= 0.0))
    for _ in range(count * 20):
        if len(nodules) == count or len(candidates) == 0:
            break
        r, c = candidates[rng.integers(len(candidates))]
        radius = float(rng.uniform(5.0, 14.0))
        x, y = float(grid.x[0, c]), float(grid.y[r, 0])
        if lung[r, c] < 2.0 * radius + 20.0:
            continue
        if all(math.hypot(x - nx, y - ny) > nr + radius + 10.0 for nx, ny, nr in nodules):
            nodules.append((x, y, radius))
    return nodules


# -- the detector -------------------------------------------------------------------------------


def _blur_axis(image: np.ndarray, sigma_px: float, axis: int) -> np.ndarray:
    """1-D Gaussian along ``axis`` with reflected edges: direct taps when small, else by FFT."""
    radius = max(1, int(math.ceil(4.0 * sigma_px)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float64) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    n = image.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (min(radius, n - 1), min(radius, n - 1))
    padded = np.pad(image, pad, mode="symmetric")
    if radius < n - 1 and radius <= 6:
        out = np.zeros_like(image)
        for k, w in enumerate(taps):
            out += w * np.take(padded, np.arange(k, k + n), axis=axis)
        return out
    length = padded.shape[axis] + len(taps) - 1
    spectrum = np.fft.rfft(padded, n=length, axis=axis)
    kernel = np.fft.rfft(taps, n=length)
    kernel = kernel[:, None] if axis == 0 else kernel[None, :]
    full = np.fft.irfft(spectrum * kernel, n=length, axis=axis)
    start = pad[axis][0] + radius  # 'same' output of sample i sits at full[i + pad + radius]
    return np.take(full, np.arange(start, start + n), axis=axis).astype(np.float32)


def _blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian blur (sigma in pixels), reflected edges."""
    image = image.astype(np.float32, copy=False)
    if sigma_px < 0.05:
        return image.copy()
    return _blur_axis(_blur_axis(image, sigma_px, 0), sigma_px, 1)


def _detect(
    soft_a: np.ndarray, bone_a: np.ndarray, mask: np.ndarray, grid: _Grid, p: dict[str, Any], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Attenuation images -> (radiograph, soft) bone-bright [0, 1] through one detector chain."""
    scatter_sigma = 35.0 / grid.pixel_mm
    primary_soft = np.exp(-soft_a)
    scatter = p["scatter"] * _blur(primary_soft, scatter_sigma)
    psf = p["psf_mm"] / grid.pixel_mm
    log_soft = -np.log(_blur(primary_soft + scatter, psf))
    log_full = -np.log(_blur(np.exp(-(soft_a + bone_a)) + scatter, psf))
    log_full = np.where(mask, log_full, log_soft)  # the PSF tail of bone outside the mask is cut
    # Quantum noise: Poisson counts N = photons * I, log-domain sd 1 / sqrt(N), spatially
    # correlated by the PSF; one realisation shared by both layers.
    counts = p["photons"] * (grid.pixel_mm / 0.15) ** 2 * np.exp(-log_full)
    white = rng.standard_normal(grid.shape).astype(np.float32)
    noise = _blur(white, max(psf, 0.5)) / np.sqrt(np.maximum(counts, 1.0))
    images = []
    for log_a in (log_full + noise, log_soft + noise):
        # film-like characteristic curve over the attenuation range of the chest
        images.append(1.0 / (1.0 + np.exp(-(log_a / 4.6 - p["tone_mid"]) / p["tone_width"])))
    full, soft = images
    background = _blur(soft, 25.0 / grid.pixel_mm)  # local contrast, shared (from the soft layer)
    # less enhancement over dense regions (mediastinum, abdomen), as in processed radiographs
    k = p["local_contrast"] * (1.0 - 0.7 * _smoothstep(background, 0.55, 0.8))
    full = np.clip(full + k * (full - background), 0.0, 1.0)
    soft = np.clip(soft + k * (soft - background), 0.0, 1.0)
    return full.astype(np.float32), soft.astype(np.float32)


def generate_chest(seed: int, size: int | tuple[int, int] = 512, nodules: int = 2) -> SyntheticChest:
    """A synthetic PA chest radiograph with its exact bone-free image, rib mask and nodules.

    Deterministic by ``seed`` (numpy PCG64). ``size`` is ``n`` (square) or ``(rows, cols)``;
    the field of view is 430 mm high, so the pixel spacing is ``430 / rows`` mm.
    """
    shape = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(shape) < 64 or nodules < 0:
        raise ValueError(f"size {size}, nodules {nodules}: expected >= 64 px a side, nodules >= 0")
    rng = np.random.default_rng(seed)
    p = _sample_anatomy(rng)
    grid = _make_grid(shape, p["patient_scale"], (p["patient_dx"], p["patient_dy"]))
    body = _body(grid, p)
    lung = _lungs(grid, p)
    heart = _heart(grid, p)
    lung = np.maximum(lung - heart, 0.25 * lung * (heart > 0)) * (body > 0)
    lung_mask = lung > 0
    vessels = p["vessel_contrast"] * _vessels(grid, p, rng) * np.clip(lung / 40.0, 0.0, 1.0)
    texture = _blur(rng.standard_normal(shape).astype(np.float32), 2.5 / grid.mm_per_px)
    texture *= p["lung_texture"] / max(float(texture.std()), 1e-6)
    placed = _place_nodules(grid, lung, heart, nodules, rng)
    nodule_path = np.zeros(shape, np.float32)
    for x, y, r in placed:
        nodule_path += _ellipsoid(grid, x, y, r, r, r)
    gastric = _ellipsoid(grid, 70.0, p["dome_right_y"] + p["dome_left_offset"] + 30.0, 32.0, 18.0, 14.0)
    air = _airways(grid, p) + gastric
    soft_a = (
        MU_SOFT * body
        - (MU_SOFT - MU_LUNG) * lung
        - MU_SOFT * air
        + MU_LUNG * texture * lung
        + (MU_BLOOD - MU_LUNG) * (vessels + nodule_path)
        + _spine(grid, p)
        + _humeral_heads(grid, p)
    )
    bone_a = np.zeros(shape, np.float32)
    bone_path = np.zeros(shape, np.float32)
    for side in (-1.0, 1.0):
        for k in range(1, 13):
            _render_bone(bone_a, bone_path, grid, _rib(p, k, side, rng))
        _render_bone(bone_a, bone_path, grid, _clavicle(p, side))
    bone_a *= p["bone_contrast"]
    rib_mask = bone_path > 0
    radiograph, soft = _detect(soft_a.astype(np.float32), bone_a, rib_mask, grid, p, rng)
    return SyntheticChest(
        radiograph=radiograph,
        soft_tissue=soft,
        rib_mask=rib_mask,
        nodules=[(*grid.to_pixel(x, y), r / grid.mm_per_px) for x, y, r in placed],
        lung_mask=lung_mask,
        pixel_spacing_mm=grid.pixel_mm,
        parameters={"seed": seed, **p},
    )
