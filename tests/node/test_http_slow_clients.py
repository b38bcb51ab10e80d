"""Slow clients of the HTTP service (issue 27): a client that connects and says nothing, one that
dribbles its request head a byte at a time (slowloris) and one whose body stalls mid-part each
get 408 and a closed connection within their timeout (``http.header_timeout_s``,
``http.read_timeout_s``), each leaves an audit record, and meanwhile another client stores
over STOW-RS as if they were not there."""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from ribnode.ledger.store import AuditEventName, Ledger
from ribnode.node.http import HttpService
from tests.node.helpers import dx_dataset
from tests.node.test_http import CONTENT_TYPE, TOKEN, body, http_settings, part, scrape, start, value

HEAD_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 3.0
SLACK_S = 20.0  # a loaded machine: the answer may come late, never never


@dataclass
class SlowClient:
    """A raw-socket client in a thread: what it sent, what it got and when."""

    port: int
    pieces: list[bytes]
    pause_s: float
    answer: bytes = b""
    closed_after_s: float | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SlowClient:
        self.thread.start()
        return self

    def _run(self) -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=HEAD_TIMEOUT_S + SLACK_S) as sock:
            self.answer = dribble(sock, self.pieces, self.pause_s)
        self.closed_after_s = time.monotonic() - started

    def join(self) -> None:
        self.thread.join(timeout=HEAD_TIMEOUT_S + 2 * SLACK_S)
        assert not self.thread.is_alive(), "the server never closed the slow connection"


def dribble(sock: socket.socket, pieces: list[bytes], pause_s: float) -> bytes:
    """Send ``pieces`` with pauses until the server answers; then read until it closes."""
    for piece in pieces:
        if select.select([sock], [], [], 0)[0]:
            break  # the server answered (and closes): stop writing
        sock.sendall(piece)
        time.sleep(pause_s)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[HttpService, Ledger]]:
    settings = http_settings(
        tmp_path, **{"http.header_timeout_s": HEAD_TIMEOUT_S, "http.read_timeout_s": READ_TIMEOUT_S}
    )
    http, _ = start(settings)
    ledger = Ledger(settings.ledger.url)
    try:
        yield http, ledger
    finally:
        http.stop()
        ledger.dispose()


def _stow(port: int) -> requests.Response:
    headers = {"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {TOKEN}"}
    return requests.post(
        f"http://127.0.0.1:{port}/dicom-web/studies", data=body(part(dx_dataset())), headers=headers, timeout=30
    )


def test_slow_clients_get_408_and_others_are_served_meanwhile(service: tuple[HttpService, Ledger]) -> None:
    http, ledger = service
    url = f"http://127.0.0.1:{http.port}"
    before = scrape(url)
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    data = body(part(dx_dataset(rows=128, columns=128)))
    chunked_head = head.replace(b"Content-Length: 100000", b"Transfer-Encoding: chunked")
    clients = [
        SlowClient(http.port, [], 0.0),  # connects, says nothing
        SlowClient(http.port, [head[i : i + 1] for i in range(len(head))], 0.1),  # slowloris
        # the head and a third of the body in one chunk, then nothing: stalls inside the DICOM part
        SlowClient(http.port, [chunked_head + b"%x\r\n" % (len(data) // 3) + data[: len(data) // 3] + b"\r\n"], 0.0),
    ]
    for client in clients:
        client.start()
    time.sleep(0.5)
    served_at = time.monotonic()
    for _ in range(3):  # meanwhile another client stores, three times
        assert _stow(http.port).status_code == 200
    served_s = time.monotonic() - served_at
    for client in clients:
        client.join()
    silent, dribbler, staller = clients
    for client in (silent, dribbler):
        assert client.answer.startswith(b"HTTP/1.1 408"), client.answer[:200]
        assert client.closed_after_s is not None
        assert HEAD_TIMEOUT_S * 0.9 <= client.closed_after_s < HEAD_TIMEOUT_S + SLACK_S
    assert staller.answer.startswith(b"HTTP/1.1 408"), staller.answer[:200]
    assert staller.closed_after_s is not None and staller.closed_after_s < READ_TIMEOUT_S + SLACK_S
    assert served_s < HEAD_TIMEOUT_S + SLACK_S
    time.sleep(0.5)  # the audit of a closed head is written in a worker thread

    alerts = [e.detail or "" for e in ledger.audit_events(AuditEventName.SECURITY_ALERT)]
    assert sum("STOW-RS HTTP 408 request head not complete" in d for d in alerts) == 2, alerts
    failures = [e.detail or "" for e in ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert [d[:16] for d in failures] == ["STOW-RS HTTP 408"], failures
    after = scrape(url)
    moved = value(after, "ribnode_requests_rejected_total", protocol="stow-rs", reason="http_408") - value(
        before, "ribnode_requests_rejected_total", protocol="stow-rs", reason="http_408"
    )
    assert moved == 3
    assert _stow(http.port).status_code == 200  # and it still serves


def test_a_keep_alive_connection_gets_the_deadline_for_its_next_request(service: tuple[HttpService, Ledger]) -> None:
    """After a first request on a kept-alive connection, the next head is held to the deadline
    too (from its first byte), not only the first one."""
    http, ledger = service
    with socket.create_connection(("127.0.0.1", http.port), timeout=HEAD_TIMEOUT_S + SLACK_S) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        while b"\r\n\r\n" not in first:  # the whole first response, which may come in pieces
            first += sock.recv(65536)
        head, _, body = first.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        answer = dribble(sock, [bytes([b]) for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n"], 0.2)  # no blank line
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert HEAD_TIMEOUT_S * 0.9 <= waited < HEAD_TIMEOUT_S + SLACK_S
