"""The node's HTTP service (Starlette, served by uvicorn): DICOMweb STOW-RS ingest
(PS3.18 10.5), ``/healthz``, ``/readyz`` and ``/metrics``.

A STOW-RS body is streamed: each multipart part goes to a temporary file in the spool as it
arrives (never whole into memory), then takes the C-STORE path (``ribnode.node.http.stow``).
Every refusal answers a clear status and leaves an audit record:

* 401 missing or unknown credential (PS3.15 Security Alert);
* 415 not ``multipart/related; type="application/dicom"``; 400 malformed or truncated body;
* 413 request or part over ``http.max_request_bytes`` / ``http.max_instance_bytes``;
* 408 a client slower than ``http.read_timeout_s`` between two pieces of the body.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import IO, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ribnode.config.settings import HttpSettings, Settings
from ribnode.ledger.store import Ledger
from ribnode.node.http.metrics import LedgerCollector
from ribnode.node.http.multipart import (
    MultipartError,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    boundary_of,
)
from ribnode.node.http.stow import (
    CANNOT_UNDERSTAND,
    PartOutcome,
    StowCaller,
    StowContext,
    audit_failure,
    audit_request,
    audit_security_alert,
    response_status,
    store_part,
    store_response,
)
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import Spool

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DICOM_JSON = "application/dicom+json"
ANONYMOUS = "ANONYMOUS"
IN_FLIGHT = 8  # parts of one request stored at once (thread pool)


class HttpRefusal(Exception):
    """A STOW-RS request refused as a whole: HTTP status and reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# -- authentication ---------------------------------------------------------------------------


def authenticate(authorization: str | None, settings: HttpSettings) -> str | None:
    """The sender name of an ``Authorization`` header (bearer token or HTTP basic), or None
    when it is missing or matches no configured sender. Comparisons are constant-time."""
    if not authorization:
        return ANONYMOUS if settings.open_mode else None
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() == "bearer":
        for sender in settings.senders:
            token = sender.bearer_token
            if token is not None and hmac.compare_digest(token.get_secret_value().encode(), credential.encode()):
                return sender.name
    elif scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(credential, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        for sender in settings.senders:
            if sender.username is None or sender.password is None:
                continue
            if hmac.compare_digest(sender.username.encode(), user.encode()) and hmac.compare_digest(
                sender.password.get_secret_value().encode(), password.encode()
            ):
                return sender.name
    return None


# -- STOW-RS ----------------------------------------------------------------------------------


def _content_type(header: str) -> Message:
    message = Message()
    message["content-type"] = header
    return message


def _check_content_type(header: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body (PS3.18 10.5.1.2)."""
    parsed = _content_type(header)
    if parsed.get_content_type() != "multipart/related":
        raise HttpRefusal(415, f"Content-Type {header!r} is not multipart/related")
    kind = parsed.get_param("type")
    if isinstance(kind, str) and kind.lower() != "application/dicom":
        raise HttpRefusal(
            415, f"multipart/related type {kind!r} is not application/dicom (only PS3.10 files are accepted)"
        )
    try:
        return boundary_of(parsed)
    except MultipartError as exc:
        raise HttpRefusal(400, str(exc)) from exc


PREAMBLE = 132  # PS3.10 7.1: 128-byte preamble and "DICM"


def _with_preamble(head: bytes) -> bytes:
    """``head`` as it starts a PS3.10 file: unchanged when it has the preamble, with an empty
    preamble and "DICM" in front when it starts with group 0002 (File Meta Information)."""
    if head[128:132] == b"DICM" or not head.startswith(b"\x02\x00"):
        return head
    return bytes(128) + b"DICM" + head


@dataclass
class _Part:
    """The part being received: its temporary spool file (None for a non-DICOM part)."""

    file: IO[bytes] | None
    path: Path | None
    size: int = 0
    refused: str = ""
    head: bytearray | None = field(default_factory=bytearray)  # the first bytes; None once written

    def write(self, data: bytes) -> None:
        """Write ``data``; a part that starts with the File Meta Information (group 0002)
        without the 128-byte preamble and "DICM" (as some clients send) gets them in front,
        so the spool holds PS3.10 files as C-STORE leaves them. Nothing else is changed."""
        if self.file is None:
            return
        if self.head is None:
            self.file.write(data)
            return
        self.head += data
        if len(self.head) >= PREAMBLE:
            self.file.write(_with_preamble(bytes(self.head)))
            self.head = None

    def close(self) -> None:
        """Write out what is held back and close the file."""
        if self.file is not None:
            if self.head:
                self.file.write(_with_preamble(bytes(self.head)))
            self.file.close()

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class StowService:
    """The STOW-RS endpoint: authenticate, stream, store each part, answer PS3.18."""

    def __init__(self, settings: HttpSettings, ctx: StowContext) -> None:
        self.settings = settings
        self.ctx = ctx

    async def handle(self, request: Request) -> Response:
        host = request.client.host if request.client else ""
        sender = authenticate(request.headers.get("authorization"), self.settings)
        if sender is None:
            what = "unknown credential" if request.headers.get("authorization") else "no credential"
            logger.warning("STOW-RS from %s refused (401): %s", host, what)
            await run_in_threadpool(audit_security_alert, self.ctx, host, f"HTTP 401 {what} from {host}")
            return JSONResponse(
                {"error": f"401 Unauthorized: {what}"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="ribnode", Basic realm="ribnode"'},
            )
        caller = StowCaller(sender, host)
        study = request.path_params.get("study")
        outcomes: list[PartOutcome] = []
        try:
            boundary = _check_content_type(request.headers.get("content-type", ""))
            self._check_length(request.headers.get("content-length"))
            await self._receive(request, MultipartParser(boundary), caller, study, outcomes)
        except HttpRefusal as refusal:
            return await self._refuse(request, caller, outcomes, refusal)
        except ClientDisconnect:
            logger.warning("STOW-RS client %s (%s) went away mid-request", sender, host)
            await run_in_threadpool(audit_request, self.ctx, caller, outcomes, " (client disconnected)")
            await run_in_threadpool(audit_failure, self.ctx, caller, "HTTP 400 client disconnected mid-request")
            return Response(status_code=400)
        await run_in_threadpool(audit_request, self.ctx, caller, outcomes)
        return JSONResponse(
            store_response(outcomes, _base_url(request)), response_status(outcomes), media_type=DICOM_JSON
        )

    def _check_length(self, header: str | None) -> None:
        if header is not None and header.isdigit() and int(header) > self.settings.max_request_bytes:
            raise HttpRefusal(
                413, f"request of {header} bytes is over http.max_request_bytes ({self.settings.max_request_bytes})"
            )

    async def _refuse(
        self, request: Request, caller: StowCaller, outcomes: list[PartOutcome], refusal: HttpRefusal
    ) -> Response:
        logger.warning("STOW-RS from %s refused (%d): %s", caller.sender, refusal.status, refusal.reason)
        await run_in_threadpool(audit_request, self.ctx, caller, outcomes)
        await run_in_threadpool(audit_failure, self.ctx, caller, f"HTTP {refusal.status} {refusal.reason}")
        body = store_response(outcomes, _base_url(request))
        body["error"] = f"{refusal.status}: {refusal.reason}"  # instances stored before the refusal are listed
        headers = {"Connection": "close"}  # the rest of the body is not read
        return JSONResponse(body, refusal.status, media_type=DICOM_JSON, headers=headers)

    async def _receive(
        self,
        request: Request,
        parser: MultipartParser,
        caller: StowCaller,
        study: str | None,
        outcomes: list[PartOutcome],
    ) -> None:
        """Stream the body part by part. Each complete part is stored in the thread pool while
        the next ones arrive (at most ``IN_FLIGHT`` at once per request: concurrent fsyncs share
        the file system's journal commits); every store has finished, and ``outcomes`` holds
        them in the order of the parts, when this returns or raises."""
        part: _Part | None = None
        stores: list[asyncio.Future[PartOutcome]] = []
        total = 0
        try:
            async for chunk in _timed(request.stream(), self.settings.read_timeout_s):
                total += len(chunk)
                if total > self.settings.max_request_bytes:
                    raise HttpRefusal(
                        413, f"request body over http.max_request_bytes ({self.settings.max_request_bytes})"
                    )
                try:
                    events = parser.feed(chunk)
                except MultipartError as exc:
                    raise HttpRefusal(400, f"malformed multipart body: {exc}") from exc
                for event in events:
                    if isinstance(event, PartStart):
                        part = self._open_part(event)
                    elif isinstance(event, PartData) and part is not None:
                        self._write(part, event.data)
                    elif isinstance(event, PartEnd) and part is not None:
                        stores.append(asyncio.ensure_future(self._finish(part, caller, study)))
                        part = None
                        if sum(not f.done() for f in stores) >= IN_FLIGHT:
                            await asyncio.wait([f for f in stores if not f.done()], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if part is not None:
                part.discard()
            outcomes.extend(await asyncio.gather(*stores))  # store_part never raises
        if not parser.done:
            raise HttpRefusal(400, f"multipart body truncated after {total} bytes (no closing boundary)")
        if not outcomes:
            raise HttpRefusal(400, "multipart body holds no part")

    def _open_part(self, event: PartStart) -> _Part:
        kind = event.headers.get_content_type() if event.headers.get("content-type") else "application/dicom"
        if kind != "application/dicom":
            return _Part(None, None, refused=f"part Content-Type {kind} is not application/dicom")
        file, path = self.ctx.spool.incoming()
        return _Part(file, path)

    def _write(self, part: _Part, data: bytes) -> None:
        part.size += len(data)
        if part.size > self.settings.max_instance_bytes:
            raise HttpRefusal(413, f"instance over http.max_instance_bytes ({self.settings.max_instance_bytes})")
        part.write(data)

    async def _finish(self, part: _Part, caller: StowCaller, study: str | None) -> PartOutcome:
        if part.file is None or part.path is None:
            return PartOutcome(CANNOT_UNDERSTAND, detail=part.refused)
        part.close()
        return await run_in_threadpool(store_part, self.ctx, part.path, caller, study)


async def _timed(stream: AsyncIterator[bytes], timeout_s: float) -> AsyncIterator[bytes]:
    """The body chunks; HttpRefusal 408 when the next one takes longer than ``timeout_s``."""
    iterator = stream.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), timeout_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise HttpRefusal(408, f"no request data for {timeout_s:g} s (http.read_timeout_s)") from None
        if chunk:
            yield chunk


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicom-web"


# -- health and metrics -----------------------------------------------------------------------


@dataclass
class Readiness:
    """The checks of ``/readyz``: ledger, broker, spool free space."""

    ledger: Ledger
    broker_check: Callable[[], None]
    spool_dir: Path
    min_free_bytes: int

    def run(self) -> dict[str, dict[str, Any]]:
        """Each check's state; ``ok`` False with the error when it fails."""
        checks: dict[str, dict[str, Any]] = {}
        checks["ledger"] = _check(self._ledger)
        checks["broker"] = _check(self.broker_check)
        try:
            free = shutil.disk_usage(self.spool_dir).free
            checks["spool"] = {
                "ok": free >= self.min_free_bytes,
                "free_bytes": free,
                "min_free_bytes": self.min_free_bytes,
            }
        except OSError as exc:
            checks["spool"] = {"ok": False, "error": str(exc)}
        return checks

    def _ledger(self) -> None:
        with self.ledger.session() as s:
            s.execute(text("SELECT 1"))


def _check(probe: Callable[[], None]) -> dict[str, Any]:
    try:
        probe()
    except Exception as exc:  # any failure of a probe means "not ready"; reported, not raised
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"ok": True}


def broker_probe(celery_app: Any, timeout_s: float = 3.0) -> Callable[[], None]:
    """A readiness probe of a Celery app's broker: connect once, no retries."""

    def probe() -> None:
        with celery_app.connection_for_write(connect_timeout=timeout_s) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)

    return probe


def make_app(
    settings: Settings,
    ledger: Ledger,
    spool: Spool,
    routing: RoutingRule,
    broker_check: Callable[[], None],
    console: Any = None,
) -> Starlette:
    """The ASGI app of the node's HTTP service (no globals: everything is passed in);
    ``console``, an ASGI app (the QA console, ``ribnode.console``), is mounted at /console."""
    stow = StowService(settings.http, StowContext(spool, ledger, routing, settings.listener.ae_title))
    readiness = Readiness(ledger, broker_check, spool.directory, settings.http.min_spool_free_bytes)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, spool.directory, settings.listener.ae_title))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await run_in_threadpool(readiness.run)
        ready = all(c["ok"] for c in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    routes: list[BaseRoute] = [
        Route("/dicom-web/studies", stow.handle, methods=["POST"]),
        Route("/dicom-web/studies/{study}", stow.handle, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    if console is not None:
        routes.append(Mount("/console", app=console))
    app = Starlette(routes=routes)
    # a client too slow to send its request head (the server closes it: http.header_timeout_s)
    app.state.on_slow_client = lambda host, detail: audit_security_alert(stow.ctx, host, detail)
    return app
