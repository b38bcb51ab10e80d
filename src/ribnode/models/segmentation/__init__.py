"""ribnode.models.segmentation: chest anatomy (ribs, clavicles, lung fields) on ONNX Runtime.

Importing this package is torch-free and onnxruntime-free: ``RibSegmenter`` imports
onnxruntime when constructed. Training and export live in the lab (``ribnode_lab``).
"""

from ribnode.models.segmentation.runtime import RibSegmenter

__all__ = ["RibSegmenter"]
