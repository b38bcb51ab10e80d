"""Fixtures that start real peers for the tests (owned by the peers/export engineer)."""
