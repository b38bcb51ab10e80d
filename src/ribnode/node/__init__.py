"""ribnode.node"""
