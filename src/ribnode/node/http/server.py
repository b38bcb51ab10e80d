"""Serving the HTTP app with uvicorn in a background thread of ``ribnode serve``.

The socket is bound here (not by uvicorn, which would ``sys.exit`` from its thread on a port
clash), so a taken port or unreadable TLS files fail ``start()`` with a message.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from typing import Any

import uvicorn

from ribnode.config.settings import HttpSettings

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class HttpServiceError(RuntimeError):
    """The HTTP service cannot start (port in use, bad TLS files, ...)."""


def uvicorn_config(app: Any, settings: HttpSettings) -> uvicorn.Config:
    """uvicorn settings: the httptools (C) parser, TLS from ``http.tls_*`` (the style of
    ``listener.tls_*``), no logging set-up of its own (entry points do that), no lifespan."""
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
        http="httptools",
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
