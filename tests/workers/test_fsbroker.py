"""The embedded broker's message files: written whole or not at all, and a bad one is skipped.

kombu's own filesystem transport writes a message into its final file name, so a polling
consumer can take the file while it is still empty; decoding it then stops the worker (seen in
``test_worker_killed_mid_export``). These tests use the transport ribnode's Celery app uses.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from queue import Empty

import pytest
from kombu import Connection

from ribnode.config.settings import Settings
from ribnode.workers.app import make_celery
from ribnode.workers.fsbroker import TRANSPORT
from tests.node.helpers import make_settings
from tests.peers.fixtures import free_port


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exchange-table folder for the module (kombu's default is ./control): kombu keeps the
    queue bindings of a transport class in memory for the whole process, so a fresh folder per
    test would miss the table that the first test's binding wrote."""
    return tmp_path_factory.mktemp("control")


def _connection(folder: Path, control: Path) -> Connection:
    folder.mkdir(parents=True, exist_ok=True)
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "store_processed": False,
        "control_folder": str(control),
    }
    return Connection("filesystem://", transport=TRANSPORT, transport_options=options)


def test_celery_app_uses_the_atomic_transport_for_the_embedded_broker(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path, free_port(), **{"broker.url": "filesystem://"})
    with make_celery(settings).connection_for_write() as connection:
        assert connection.transport_cls == TRANSPORT
        assert type(connection.transport).__module__ == "ribnode.workers.fsbroker"


def test_put_leaves_only_whole_message_files(tmp_path: Path, control: Path) -> None:
    folder = tmp_path / "queue"
    with _connection(folder, control) as connection:
        queue = connection.SimpleQueue("jobs")
        for number in range(5):
            queue.put({"job": number})
        files = sorted(p.name for p in folder.iterdir())
        assert len(files) == 5 and all(name.endswith(".jobs.msg") for name in files)
        assert [queue.get(timeout=1).payload["job"] for _ in range(5)] == list(range(5))
        queue.close()


def test_a_message_still_being_written_is_not_taken(tmp_path: Path, control: Path) -> None:
    folder = tmp_path / "queue"
    with _connection(folder, control) as connection:
        queue = connection.SimpleQueue("jobs")
        # what a writer leaves while it writes: the temporary name, not yet renamed
        (folder / f".1_{uuid.uuid4()}.jobs.msg.partial").write_bytes(b'{"body": ')
        with pytest.raises(Empty):
            queue.get(timeout=0.5)
        assert len(list(folder.iterdir())) == 1  # left for its writer to finish
        queue.close()


def test_an_undecodable_message_file_is_logged_and_skipped(
    tmp_path: Path, control: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "queue"
    with _connection(folder, control) as connection:
        queue = connection.SimpleQueue("jobs")
        # sorts before every real message: an empty file, as kombu's own writer can expose one
        (folder / f"{0:020d}_{uuid.uuid4()}.jobs.msg").write_bytes(b"")
        queue.put({"job": "after the bad file"})
        with caplog.at_level(logging.ERROR, logger="ribnode.workers.fsbroker"):
            message = queue.get(timeout=1)
        assert message.payload == {"job": "after the bad file"}
        assert any("undecodable message file" in r.getMessage() for r in caplog.records)
        queue.close()
