"""ribnode.models.suppression: bone suppression, a bone-layer estimator refined by diffusion.

Importing this package is torch-free and onnxruntime-free: ``RibSuppressor`` imports
onnxruntime when constructed. Training and export live in the lab (``ribnode_lab``).
"""

from ribnode.models.suppression.runtime import RibSuppressor, seed_from_uid

__all__ = ["RibSuppressor", "seed_from_uid"]
