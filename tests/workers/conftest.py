"""Fixtures of the workers tests (the node fixtures are reused)."""

from tests.node.conftest import ledger, listener, node_settings  # noqa: F401  (pytest fixtures)
