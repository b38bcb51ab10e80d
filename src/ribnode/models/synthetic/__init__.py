"""ribnode.models.synthetic"""
