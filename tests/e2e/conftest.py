"""Fixtures of the end-to-end tests: the node's (settings, ledger, a running listener)."""

from tests.node.conftest import ledger, listener, node_settings

__all__ = ["ledger", "listener", "node_settings"]
