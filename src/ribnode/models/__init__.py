"""ribnode.models: preprocessing, rib segmentation, rib suppression and their weights.

Importing this package is torch-free; the networks are imported only where they are used.
"""
