"""Bone layer from the working size to the full source matrix.

``linear``: the exact inverse geometry of ``to_working`` (``to_source``); the bone layer then
depends on the radiograph only through the network, so nothing of the full-resolution lung
(a nodule, a vessel) can leak into what is subtracted.

``guided``: the fast guided filter (He & Sun 2015): local linear models ``B ~ a * I + b``
fitted at the working size with the radiograph ``I`` as guide, ``a`` and ``b`` upsampled and
applied to the full-resolution radiograph, so rib borders of the bone layer follow the
radiograph's edges. It transfers full-resolution detail of ``I`` into ``B`` in proportion to
``a``; ``eval-lesions`` measures what that costs in lesion retention (see the model card).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ribnode.models.preprocess import to_source, to_working

METHODS = ("linear", "guided")


def _box(image: np.ndarray, radius: int) -> np.ndarray:
    return ndimage.uniform_filter(image, size=2 * radius + 1, mode="reflect")


def guided_coefficients(guide: np.ndarray, layer: np.ndarray, radius: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Box-averaged coefficients ``(a, b)`` of the guided filter of ``layer`` by ``guide``."""
    guide, layer = guide.astype(np.float64), layer.astype(np.float64)
    mean_i, mean_p = _box(guide, radius), _box(layer, radius)
    var_i = _box(guide * guide, radius) - mean_i * mean_i
    cov_ip = _box(guide * layer, radius) - mean_i * mean_p
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return _box(a, radius), _box(b, radius)


def upsample_bone(bone: np.ndarray, shape: tuple[int, int], method: str = "linear",
                  guide: np.ndarray | None = None, radius: int = 2, eps: float = 1e-4) -> np.ndarray:
    """The working-size bone layer on the source ``shape`` (float32, clamped >= 0).

    ``guide`` (the source-resolution radiograph, bone-bright) is needed for ``guided``;
    ``radius`` is in working pixels, ``eps`` in squared bone-bright units.
    """
    if method == "linear":
        return np.maximum(to_source(bone, shape), 0.0).astype(np.float32)
    if method != "guided":
        raise ValueError(f"upsampling method {method!r}: expected one of {METHODS}")
    if guide is None or guide.shape != tuple(shape):
        raise ValueError(f"guided upsampling needs a guide of shape {shape}, got "
                         f"{None if guide is None else guide.shape}")
    guide_w = to_working(guide, bone.shape[0])
    a, b = guided_coefficients(guide_w, bone, radius, eps)
    full = to_source(a.astype(np.float32), shape) * guide + to_source(b.astype(np.float32), shape)
    return np.maximum(full, 0.0).astype(np.float32)
