"""ribnode.models"""
