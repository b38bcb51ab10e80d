"""Forwarding the audit trail to a syslog collector, as IHE ATNA (ITI-20) does it.

Each ledger audit event is sent as one RFC 5424 message whose MSG is the PS3.15 A.5 XML
(``ribnode.console.audit_export``), over TLS with RFC 5425 octet-counting framing
("MSG-LEN SP SYSLOG-MSG"). ATNA's conventions: facility 10 (security/authorization), severity
5 (notice), MSGID ``IHE+RFC-3881``, the XML after a UTF-8 BOM.

:class:`SyslogForwarder` is a thread of ``ribnode serve``: it polls the ledger for events newer
than the last one sent, sends them in order, and keeps its place in ``<var_dir>/audit-syslog.cursor``
so that a restart neither repeats nor skips events. A collector that is down is retried on the
next poll; nothing is lost, the events wait in the ledger.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import threading
from datetime import datetime
from pathlib import Path

from ribnode.config.settings import SyslogSettings
from ribnode.console.audit_export import AuditSource, message_xml
from ribnode.console.queries import AuditRow, audit_after
from ribnode.ledger.store import Ledger

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
SEVERITY_WARNING = 4
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"


def _header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable US-ASCII without spaces, or NILVALUE."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def rfc5424(xml: bytes, at: datetime, hostname: str, app_name: str, severity: int = SEVERITY_NOTICE) -> bytes:
    """One RFC 5424 message: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM MSG``."""
    pri = FACILITY_AUTHPRIV * 8 + severity
    header = " ".join(
        [
            f"<{pri}>1",
            at.isoformat(timespec="milliseconds") + "Z",
            _header_field(hostname, 255),
            _header_field(app_name, 48),
            _header_field(str(os.getpid()), 128),
            MSGID,
            "-",  # no STRUCTURED-DATA
        ]
    )
    return header.encode("ascii") + b" " + BOM + xml


def frame(message: bytes) -> bytes:
    """RFC 5425 4.3 (RFC 6587 octet counting): ``MSG-LEN SP SYSLOG-MSG``."""
    return str(len(message)).encode("ascii") + b" " + message


def tls_context(settings: SyslogSettings) -> ssl.SSLContext:
    """A client context that verifies the collector (RFC 5425 5.1), with our certificate when set."""
    context = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.tls_cert is not None:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None)
    return context


class SyslogForwarder:
    """Sends the ledger's audit events to ``settings.host:port`` over TLS, in order, once each."""

    def __init__(self, settings: SyslogSettings, ledger: Ledger, source: AuditSource, cursor_file: Path) -> None:
        if settings.host is None:
            raise ValueError("console.syslog.host is unset: nothing to forward to")
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise ValueError("set console.syslog.tls_cert and console.syslog.tls_key together")
        self.settings = settings
        self.ledger = ledger
        self.source = source
        self.cursor_file = cursor_file
        self._context = tls_context(settings)
        self._socket: ssl.SSLSocket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hostname = socket.gethostname()

    # -- the cursor: id of the last event the collector has ----------------------------------
    def last_sent(self) -> int:
        try:
            return int(self.cursor_file.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError as exc:
            raise ValueError(f"syslog cursor {self.cursor_file} holds no event id: {exc}") from exc

    def _save(self, event_id: int) -> None:
        self.cursor_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cursor_file.with_suffix(".partial")
        partial.write_text(f"{event_id}\n")
        os.replace(partial, self.cursor_file)

    # -- sending -----------------------------------------------------------------------------
    def _connect(self) -> ssl.SSLSocket:
        if self._socket is None:
            host, port = self.settings.host or "", self.settings.port
            raw = socket.create_connection((host, port), timeout=self.settings.timeout_s)
            self._socket = self._context.wrap_socket(raw, server_hostname=host)
            logger.info("audit syslog: connected to %s:%d (TLS)", host, port)
        return self._socket

    def _close(self) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except OSError:
                pass
            self._socket = None

    def message(self, row: AuditRow) -> bytes:
        severity = SEVERITY_NOTICE if row.outcome == 0 else SEVERITY_WARNING
        return rfc5424(message_xml(row, self.source), row.at, self.hostname, self.settings.app_name, severity)

    def forward_once(self) -> int:
        """Send every event not yet sent; returns how many went. A failed send closes the
        connection and leaves the cursor on the last event that went (retried next time)."""
        sent = 0
        last = self.last_sent()
        while True:
            rows = audit_after(self.ledger, last)
            if not rows:
                return sent
            for row in rows:
                try:
                    self._connect().sendall(frame(self.message(row)))
                except (OSError, ssl.SSLError) as exc:
                    logger.warning(
                        "audit syslog to %s:%d failed (%s); retried", self.settings.host, self.settings.port, exc
                    )
                    self._close()
                    return sent
                last = row.id
                self._save(last)
                sent += 1

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.forward_once()
            except Exception:  # the ledger unreachable for a moment: log, try again next poll
                logger.exception("audit syslog forwarding failed; trying again")
            self._stop.wait(self.settings.poll_s)
        self._close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.timeout_s + 5)

    def __enter__(self) -> SyslogForwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
