"""ribnode's laboratory: training, export and evaluation of the two models (``ribnode-lab``).

Installed with the ``lab`` extra (torch, diffusers, onnx). The runtime (``ribnode``) never imports
this package; this package imports the runtime's preprocessing and ONNX Runtime classes, so the
figures it measures are those of the product path.
"""
