"""ribnode.models.suppression"""
