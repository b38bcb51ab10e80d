"""ribnode.models.suppression: diffusion-based rib suppression (bone-layer estimation).

Importing this package is torch-free and onnxruntime-free: ``RibSuppressor`` imports
onnxruntime (or torch, for the torch backend) when constructed.
"""

from ribnode.models.suppression.runtime import RibSuppressor, seed_from_uid

__all__ = ["RibSuppressor", "seed_from_uid"]
