"""ribnode.models.segmentation: the rib-segmentation U-Net and its ONNX Runtime segmenter.

Importing this package is torch-free and onnxruntime-free: ``RibSegmenter`` imports
onnxruntime when constructed; training and export (torch) live in ``train``/``export``.
"""

from ribnode.models.segmentation.runtime import RibSegmenter

__all__ = ["RibSegmenter"]
