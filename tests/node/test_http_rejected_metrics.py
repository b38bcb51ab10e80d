"""``ribnode_requests_rejected_total`` counts the listener's own refusals too (issue 27: "associations
and requests rejected by reason"): a connection over ``listener.max_connections_per_host`` and
one that never sends an association request are each a Security Alert, and each moves the
counter by one under its reason."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ribnode.ledger.store import AuditEventName, Ledger
from tests.node.helpers import running_listener, wait_for
from tests.node.test_http import http_settings, scrape, start, value


def test_listener_refusals_are_counted_by_reason(tmp_path: Path) -> None:
    settings = http_settings(tmp_path, **{"listener.max_connections_per_host": 1, "listener.acse_timeout_s": 1.0})
    ledger = Ledger(settings.ledger.url)
    service, _ = start(settings)
    url = f"http://127.0.0.1:{service.port}"
    try:
        with running_listener(settings, ledger) as listener:
            before = scrape(url)
            with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as idle:
                time.sleep(0.3)  # the first connection is counted against its host
                with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as extra:
                    assert extra.recv(1) == b""  # closed at once: over the per-host limit
                assert idle.recv(1) == b""  # closed by the ACSE timeout: no A-ASSOCIATE-RQ
            wait_for(lambda: len(ledger.audit_events(AuditEventName.SECURITY_ALERT)) >= 2, 30, "two Security Alerts")
            after = scrape(url)
    finally:
        service.stop()
        ledger.dispose()

    def moved(reason: str) -> float:
        return value(after, "ribnode_requests_rejected_total", protocol="dimse", reason=reason) - value(
            before, "ribnode_requests_rejected_total", protocol="dimse", reason=reason
        )

    assert moved("per_host_limit") == 1
    assert moved("acse_timeout") == 1
    assert moved("other") == 0
