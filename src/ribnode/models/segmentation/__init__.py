"""ribnode.models.segmentation"""
