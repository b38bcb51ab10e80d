"""Fixtures of the node tests (the shared peers live in tests/peers/fixtures.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ribnode.config.settings import Settings
from ribnode.ledger.store import Ledger
from ribnode.node.listener import DicomListener
from tests.node.helpers import make_settings, running_listener
from tests.peers.fixtures import free_port


@pytest.fixture
def node_settings(tmp_path: Path) -> Settings:
    """Settings for one test: SQLite ledger, spool and broker folders in ``tmp_path``."""
    return make_settings(tmp_path, free_port())


@pytest.fixture
def ledger(node_settings: Settings) -> Iterator[Ledger]:
    """The test's ledger (migrated)."""
    led = Ledger(node_settings.ledger.url)
    yield led
    led.dispose()


@pytest.fixture
def listener(node_settings: Settings, ledger: Ledger) -> Iterator[DicomListener]:
    """A running listener on a free loopback port."""
    with running_listener(node_settings, ledger) as lst:
        yield lst
