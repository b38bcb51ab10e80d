"""Serving the HTTP app with uvicorn in a background thread of ``ribnode serve``.

The socket is bound here (not by uvicorn, which would ``sys.exit`` from its thread on a port
clash), so a taken port or unreadable TLS files fail ``start()`` with a message.

uvicorn has no deadline on a request's head: a client that connects and sends nothing, or
dribbles its request line and headers a byte at a time (slowloris), holds its connection for
ever. :class:`HeadDeadlineProtocol` gives every request ``http.header_timeout_s`` from the
connection (or the end of the previous request) to the end of its headers; then it answers 408,
closes the connection, logs it and calls the app's ``state.on_slow_client`` (the STOW-RS
service audits a Security Alert). A body that stalls is the app's: ``http.read_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ribnode.config.settings import HttpSettings

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class HttpServiceError(RuntimeError):
    """The HTTP service cannot start (port in use, bad TLS files, ...)."""


SlowClientHook = Callable[[str, str], None]  # (host, detail), called in a worker thread
TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\nconnection: close\r\n\r\nRequest Timeout\n"
)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on each request's head (see the module
    docstring). ``head_timeout_s`` and ``on_slow_client`` are set by :func:`head_deadline`."""

    head_timeout_s: float = 10.0
    on_slow_client: SlowClientHook | None = None
    _head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # a keep-alive connection's next request: from its first byte

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing():
            return
        host = self.client[0] if self.client else ""
        detail = (
            f"HTTP 408 request head not complete within {self.head_timeout_s:g} s "
            f"(http.header_timeout_s) from {host}: connection closed"
        )
        logger.warning(detail)
        self.transport.write(TIMEOUT_408)
        self.transport.close()
        if self.on_slow_client is not None:
            self.loop.run_in_executor(None, self.on_slow_client, host, detail)


def head_deadline(timeout_s: float, on_slow_client: SlowClientHook | None) -> type[HeadDeadlineProtocol]:
    """The protocol class of one service: its head timeout and slow-client hook."""
    return type(
        "HeadDeadlineProtocol",
        (HeadDeadlineProtocol,),
        {"head_timeout_s": timeout_s, "on_slow_client": staticmethod(on_slow_client) if on_slow_client else None},
    )


def uvicorn_config(app: Any, settings: HttpSettings) -> uvicorn.Config:
    """uvicorn settings: the httptools (C) parser with a deadline on each request's head
    (``http.header_timeout_s``), TLS from ``http.tls_*`` (the style of ``listener.tls_*``), no
    logging set-up of its own (entry points do that), no lifespan."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise HttpServiceError("set http.tls_cert and http.tls_key together")
    if settings.tls_verify_client and settings.tls_ca is None:
        raise HttpServiceError("http.tls_verify_client needs http.tls_ca")
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None:
        tls = {
            "ssl_certfile": str(settings.tls_cert),
            "ssl_keyfile": str(settings.tls_key),
            "ssl_ca_certs": str(settings.tls_ca) if settings.tls_ca else None,
            "ssl_cert_reqs": ssl.CERT_REQUIRED if settings.tls_verify_client else ssl.CERT_NONE,
        }
    return uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=head_deadline(settings.header_timeout_s, getattr(getattr(app, "state", None), "on_slow_client", None)),
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        **tls,
    )


class HttpService:
    """The HTTP service on ``http.bind_address:http.port``; ``start()`` returns once it
    accepts connections. Use as a context manager or call ``stop()``."""

    def __init__(self, app: Any, settings: HttpSettings) -> None:
        self.settings = settings
        self._config = uvicorn_config(app, settings)
        self._server: uvicorn.Server | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind, load TLS, and serve in a background thread."""
        address = (self.settings.bind_address, self.settings.port or 0)
        try:
            self._config.load()
        except (OSError, ssl.SSLError) as exc:
            raise HttpServiceError(
                f"cannot load TLS files {self.settings.tls_cert}, {self.settings.tls_key}: {exc}"
            ) from exc
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
        except OSError as exc:
            raise HttpServiceError(f"cannot listen on {address[0]}:{address[1]} (HTTP): {exc}") from exc
        sock.setblocking(False)
        self._socket = sock
        self._server = uvicorn.Server(self._config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http-service", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise HttpServiceError("the HTTP service did not start (see the log)")
            time.sleep(0.01)
        logger.info("HTTP service on %s:%d%s", address[0], self.port, " (TLS)" if self.settings.tls_cert else "")

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._socket is None:
            return self.settings.port or 0
        return int(self._socket.getsockname()[1])

    @property
    def scheme(self) -> str:
        """``https`` with TLS, else ``http``."""
        return "https" if self.settings.tls_cert is not None else "http"

    def stop(self) -> None:
        """Stop accepting, finish open requests (5 s at most), close the socket."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        logger.info("HTTP service stopped")

    def __enter__(self) -> HttpService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
