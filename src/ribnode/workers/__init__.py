"""ribnode.workers"""
