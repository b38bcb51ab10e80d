"""The listener cannot be starved (issue 29, failure 4): an idle TCP connection never blocks a
TLS listener's accept loop, idle connections are closed by the ACSE timeout, one host cannot
take every slot, and each refusal is audited as a PS3.15 Security Alert."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ribnode.ledger.store import AuditEventName, Ledger
from tests.node.helpers import dx_dataset, make_settings, running_listener, wait_for, write_dataset
from tests.node.test_tls import pki  # noqa: F401  (pytest fixture)
from tests.peers.fixtures import echoscu, free_port, storescu


def _alerts(ledger: Ledger) -> list[str]:
    return [e.detail or "" for e in ledger.audit_events(AuditEventName.SECURITY_ALERT)]


def _closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, ConnectionResetError):
        return False


def test_idle_connection_does_not_block_a_tls_listener(tmp_path: Path, pki) -> None:  # noqa: F811
    settings = make_settings(
        tmp_path,
        free_port(),
        **{
            "listener.tls_cert": str(pki["server"]),
            "listener.tls_key": str(pki["server_key"]),
            "listener.tls_ca": str(pki["ca"]),
            "listener.tls_handshake_timeout_s": 3.0,
        },
    )
    ledger = Ledger(settings.ledger.url)
    path = write_dataset(dx_dataset(), tmp_path / "a.dcm")
    tls = ["+tls", str(pki["client_key"]), str(pki["client"]), "+cf", str(pki["ca"])]
    with running_listener(settings, ledger) as lst:
        idle = socket.create_connection(("127.0.0.1", lst.port))  # says nothing
        try:
            started = time.monotonic()
            result = storescu([path], lst.port, called_aet="RIBNODE", options=tls)
            assert result.returncode == 0, result.stderr
            assert time.monotonic() - started < 2.5  # not behind the idle connection
            assert _closed_by_peer(idle, 10.0)  # the handshake timed out
        finally:
            idle.close()
        plain = storescu([path], lst.port, called_aet="RIBNODE")  # plain DICOM on a TLS port
        assert plain.returncode != 0
        wait_for(lambda: len(_alerts(ledger)) >= 2, 10, "two Security Alerts")
    alerts = _alerts(ledger)
    assert any("TLS handshake" in a and "timed out" in a for a in alerts), alerts
    assert sum("TLS handshake" in a for a in alerts) == 2, alerts


def test_idle_connection_is_closed_by_the_acse_timeout_and_audited(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port(), **{"listener.acse_timeout_s": 1.0})
    ledger = Ledger(settings.ledger.url)
    with running_listener(settings, ledger) as lst:
        idle = socket.create_connection(("127.0.0.1", lst.port))
        try:
            assert _closed_by_peer(idle, 10.0)
        finally:
            idle.close()
        wait_for(lambda: _alerts(ledger), 10, "a Security Alert")
        assert echoscu(lst.port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0
    assert "sent no association request within 1 s" in _alerts(ledger)[0]


def test_one_host_cannot_take_every_slot(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, free_port(), **{"listener.max_connections_per_host": 2, "listener.acse_timeout_s": 3.0}
    )
    ledger = Ledger(settings.ledger.url)
    with running_listener(settings, ledger) as lst:
        held = [socket.create_connection(("127.0.0.1", lst.port)) for _ in range(2)]
        try:
            time.sleep(0.3)
            third = socket.create_connection(("127.0.0.1", lst.port))
            try:
                assert _closed_by_peer(third, 5.0)  # closed at once, not held for the timeout
            finally:
                third.close()
        finally:
            for sock in held:
                sock.close()
        wait_for(
            lambda: echoscu(lst.port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0,
            20,
            "a slot free again (the held connections end with the ACSE timeout)",
        )
    assert any("connections from that host already open" in a for a in _alerts(ledger))
