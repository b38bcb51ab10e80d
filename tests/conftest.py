"""Shared pytest configuration: real peers (Orthanc, dcmtk, Redis, PostgreSQL) on loopback.

Every test under ``tests/e2e/`` gets the ``e2e`` marker: those spawn ``ribnode`` processes,
Orthanc or a browser. ``make test-fast`` leaves them out; ``make test`` runs everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["tests.peers.fixtures"]

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)
