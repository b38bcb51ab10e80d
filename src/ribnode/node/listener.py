"""The DICOM listener: C-ECHO and C-STORE SCP for every storage SOP class (pynetdicom).

The C-STORE handler saves, records and returns a status; it never raises and never runs
inference (PS3.4 Annex B.2.3 statuses):

* 0x0000 once the instance is fsynced and renamed into the spool and recorded in the ledger
  (a second copy of a known SOP Instance UID is counted and acknowledged, not stored again);
* 0xC210 "cannot understand" when the dataset cannot be decoded (truncated, no identifiers);
* 0xA700 "out of resources" when the spool or the ledger cannot take it (ENOSPC, ...), and
  for nothing else: the sender retries it;
* 0x0110 "processing failure" (PS3.7 C.4) for an unexpected error (a bug), logged with its
  traceback and audited, so that one odd instance is refused rather than retried for ever.

Routing and the ledger's descriptive columns are read leniently (``routing.attribute_text``):
an unknown or wrong VR on Modality, Photometric Interpretation, Body Part Examined, ... keeps
the instance, not routed, with the reason ("Modality cannot be read: ...").

Unknown callers are refused at association time (A-ASSOCIATE-RJ, "calling AE title not
recognised") and recorded as a PS3.15 "Security Alert".
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    evt,
)
from pynetdicom.acse import ACSE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from ribnode.config.settings import AllowedSender, ListenerSettings, Settings
from ribnode.dicom_checks import UndecodableError, check_declared_lengths
from ribnode.ledger.store import AuditEventName, AuditOutcome, Ledger, LedgerError, ReceivedInstance
from ribnode.node.routing import RoutingRule, attribute_text
from ribnode.node.spool import Spool

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC210


class ListenerError(RuntimeError):
    """The listener cannot start (bad TLS files, port in use, ...)."""


# -- sender allow-list ---------------------------------------------------------------------


@dataclass(frozen=True)
class SenderPolicy:
    """Who may associate: calling AE titles, each optionally bound to a host address."""

    allowed: tuple[AllowedSender, ...]
    open_mode: bool = False

    def allows(self, calling_aet: str, host: str) -> bool:
        """True when ``calling_aet`` from ``host`` may associate."""
        if self.open_mode:
            return True
        aet = calling_aet.strip()
        return any(s.ae_title.strip() == aet and s.host in (None, "", host) for s in self.allowed)


class AllowListACSE(ACSE):
    """ACSE that refuses callers the :class:`SenderPolicy` does not allow (PS3.8 7.1.1.9:
    result rejected-permanent, source service-user, reason calling-AE-title-not-recognised)."""

    def __init__(self, assoc: Any, policy: SenderPolicy, ledger: Ledger) -> None:
        super().__init__(assoc)
        self._policy = policy
        self._ledger = ledger

    def _negotiate_as_acceptor(self) -> None:
        calling = str(self.requestor.primitive.calling_ae_title).strip()  # type: ignore[union-attr]
        host = str(self.assoc.requestor.address)
        if self._policy.allows(calling, host):
            self._audit_if_over_the_limit(calling, host)
            super()._negotiate_as_acceptor()
            return
        logger.warning("rejecting association from unknown caller %r at %s", calling, host)
        _audit_quietly(
            self._ledger,
            AuditEventName.SECURITY_ALERT,
            AuditOutcome.MINOR_FAILURE,
            source_aet=calling[:16],
            source_host=host,
            detail=f"association rejected: calling AE {calling!r} from {host} is not allowed",
        )
        self.send_reject(0x01, 0x01, 0x03)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()

    def _audit_if_over_the_limit(self, calling: str, host: str) -> None:
        """pynetdicom rejects an association over ``max_associations`` (local limit
        exceeded, PS3.8 9.3.4); say so in the log and the audit trail."""
        ae = self.assoc.ae
        acceptors = [a for a in ae.active_associations if a.is_acceptor]
        if len(acceptors) <= ae.maximum_associations:
            return
        detail = (
            f"association from {calling!r} at {host} rejected: {len(acceptors) - 1} "
            f"associations open, limit {ae.maximum_associations}"
        )
        logger.warning(detail)
        _audit_quietly(
            self._ledger,
            AuditEventName.SECURITY_ALERT,
            AuditOutcome.MINOR_FAILURE,
            source_aet=calling[:16],
            source_host=host,
            detail=detail,
        )


class AllowListRequestHandler(RequestHandler):
    """pynetdicom request handler that installs :class:`AllowListACSE` on each association."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        server = self.server
        assoc.acse = AllowListACSE(assoc, server.ribnode_policy, server.ribnode_ledger)  # type: ignore[attr-defined]
        self.ribnode_association = assoc
        return assoc

    def handle(self) -> None:
        """Start the association (pynetdicom runs it in a thread of its own) and wait for it
        to end, so that the connection's thread lives as long as the connection and
        :class:`GuardedAssociationServer` counts it against its host until then."""
        super().handle()
        self.ribnode_association.join()


class GuardedAssociationServer(ThreadedAssociationServer):
    """The association server, hardened against starvation:

    * the TLS handshake runs in the connection's own thread with a timeout
      (``listener.tls_handshake_timeout_s``), never in the accept loop (pynetdicom wraps the
      socket in ``get_request``, so one silent client blocked every other caller);
    * at most ``listener.max_connections_per_host`` connections per host address: the next
      one is closed at once;
    * a refused handshake and a refused connection are logged and audited (PS3.15 Security
      Alert). Configure with :meth:`guard` after ``AE.make_server``.
    """

    def guard(self, ledger: Ledger, per_host: int, handshake_timeout_s: float) -> None:
        self.ribnode_ledger = ledger
        self._per_host_limit = per_host
        self._handshake_timeout_s = handshake_timeout_s
        self._connections: dict[str, int] = defaultdict(int)
        self._connections_lock = threading.Lock()

    def get_request(self) -> tuple[Any, Any]:
        """Accept only: the TLS handshake happens in :meth:`process_request_thread`."""
        return cast(Any, self.socket).accept()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Count the connection against its host; refuse it over the per-host limit."""
        host = str(client_address[0])
        with self._connections_lock:
            if self._per_host_limit and self._connections[host] >= self._per_host_limit:
                refused = True
            else:
                self._connections[host] += 1
                refused = False
        if refused:
            self._alert(
                host,
                f"connection from {host} refused: {self._per_host_limit} "
                "connections from that host already open (listener.max_connections_per_host)",
            )
        return not refused

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        try:
            if self.ssl_context is not None:
                request = self._handshake(request, host)
                if request is None:
                    return
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections[host] -= 1
                if self._connections[host] <= 0:
                    del self._connections[host]

    def _handshake(self, request: Any, host: str) -> Any:
        """The server side of the TLS handshake within the timeout; None (socket closed,
        audited) when it fails: plain TCP, a rogue certificate, an old protocol, silence."""
        assert self.ssl_context is not None
        request.settimeout(self._handshake_timeout_s)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:  # socket.timeout is an OSError
            reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            self._alert(host, f"TLS handshake with {host} refused: {reason}"[:1000])
            try:
                request.close()
            except OSError:
                pass
            return None
        tls.settimeout(None)  # as pynetdicom's own accepted sockets: it polls with select
        return tls

    def _alert(self, host: str, detail: str) -> None:
        logger.warning(detail)
        _audit_quietly(
            self.ribnode_ledger,
            AuditEventName.SECURITY_ALERT,
            AuditOutcome.MINOR_FAILURE,
            source_host=host,
            detail=detail,
        )


def _audit_quietly(ledger: Ledger, name: AuditEventName, outcome: int, **fields: Any) -> None:
    """Audit from a DICOM handler: a ledger failure is logged, never raised into pynetdicom."""
    try:
        ledger.audit(name, outcome, **fields)
    except SQLAlchemyError as exc:
        logger.error("could not record audit event %s: %s", name, exc)


# -- C-STORE -------------------------------------------------------------------------------


@dataclass
class StoreContext:
    """What the C-STORE handler needs, passed in (no module globals)."""

    spool: Spool
    ledger: Ledger
    routing: RoutingRule
    # ``spool.rerun_on_resend``: a re-sent, already processed instance is processed again.
    rerun_on_resend: bool = False
    # Per association: {study uid: [count, {sop classes}]}, flushed to the audit on release.
    transfers: dict[int, dict[str, list[Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Per connection: when it opened (monotonic), to audit ACSE timeouts.
    opened: dict[int, float] = field(default_factory=dict)

    def note_transfer(self, assoc_id: int, study_uid: str, sop_class: str) -> None:
        """Count one stored instance for the association's audit record."""
        with self.lock:
            studies = self.transfers.setdefault(assoc_id, defaultdict(lambda: [0, set()]))
            entry = studies[study_uid]
            entry[0] += 1
            entry[1].add(sop_class)


def _request(event: Event) -> C_STORE:
    """The C-STORE request primitive of a C-STORE event."""
    return cast(C_STORE, event.request)


def _expected_native_length(ds: Dataset) -> int:
    """Bytes a native (uncompressed) Pixel Data must hold (PS3.5 8.1.1), rounded down."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.BitsAllocated) * int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    return bits * frames // 8


def decode_store_dataset(event: Event) -> Dataset:
    """The C-STORE dataset with its file meta; raises :class:`UndecodableError` when it is
    truncated or lacks the identifiers needed to file it."""
    try:
        ds = event.dataset
        ds.file_meta = event.file_meta
        study_uid = str(ds.StudyInstanceUID)
        sop_uid = str(ds.SOPInstanceUID)
    except Exception as exc:  # pydicom raises many types on bad input; all mean "undecodable"
        raise UndecodableError(f"dataset cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if not study_uid or not sop_uid:
        raise UndecodableError("dataset has no Study or SOP Instance UID")
    if len(study_uid) > 64 or len(sop_uid) > 64:  # PS3.5 9.1: at most 64 characters
        raise UndecodableError(f"UID longer than 64 characters: {max(study_uid, sop_uid, key=len)[:80]!r}")
    requested = str(_request(event).AffectedSOPInstanceUID or "")
    if requested and requested != sop_uid:
        raise UndecodableError(f"SOP Instance UID {sop_uid} differs from the request's {requested}")
    check_declared_lengths(ds)
    _check_pixel_data(ds, event.context.transfer_syntax)
    return ds


def _check_pixel_data(ds: Dataset, transfer_syntax: Any) -> None:
    """Catch truncation: pydicom reads a truncated stream silently."""
    if "Rows" not in ds or "BitsAllocated" not in ds:
        return
    if "PixelData" not in ds:
        raise UndecodableError("image dataset without Pixel Data (truncated?)")
    if getattr(transfer_syntax, "is_encapsulated", False):
        return  # a truncated fragment stream leaves pydicom with no attributes at all
    try:
        expected = _expected_native_length(ds)
        actual = len(ds.PixelData)
    except Exception as exc:  # unknown/wrong VR on Rows, Bits Allocated, ...: pydicom raises many types
        raise UndecodableError(f"bad image geometry: {type(exc).__name__}: {exc}") from exc
    if actual < expected:
        raise UndecodableError(f"Pixel Data holds {actual} bytes, {expected} expected (truncated)")


def received_instance(
    ds: Dataset,
    routing: RoutingRule,
    *,
    path: str,
    size: int,
    sop_class_uid: str | None,
    transfer_syntax_uid: str,
    calling_aet: str | None,
) -> ReceivedInstance:
    """The ledger record of a spooled instance (listener and start-up recovery). Only the
    identifiers are read strictly (the caller has checked them); every other attribute is read
    leniently, and the routing decision never raises."""
    patient_id = attribute_text(ds, "PatientID", 10_000)
    accession = attribute_text(ds, "AccessionNumber", 10_000)
    decision = routing(ds)
    return ReceivedInstance(
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=attribute_text(ds, "SeriesInstanceUID", 64),
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=(sop_class_uid or attribute_text(ds, "SOPClassUID", 64) or "")[:64],
        transfer_syntax_uid=transfer_syntax_uid[:64],
        modality=attribute_text(ds, "Modality", 16),
        path=path,
        size_bytes=size,
        calling_aet=calling_aet,
        routed=decision.routed,
        ignore_reason=decision.reason,
        patient_id=patient_id[:64] if patient_id else None,
        accession_number=accession[:64] if accession else None,
    )


def _received(ds: Dataset, event: Event, path: str, size: int, routing: RoutingRule) -> ReceivedInstance:
    return received_instance(
        ds,
        routing,
        path=path,
        size=size,
        sop_class_uid=str(_request(event).AffectedSOPClassUID or "") or None,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        calling_aet=str(event.assoc.requestor.ae_title).strip()[:16],
    )


def handle_c_store(event: Event, ctx: StoreContext) -> int:
    """EVT_C_STORE handler: spool, record, answer. Never raises."""
    try:
        return _store(event, ctx)
    except Exception as exc:  # the listener must stay up whatever happens; log with traceback
        # Not 0xA700: that tells the sender to retry, and an instance that trips a bug would
        # be retried for ever. Refuse it, log and audit it (PS3.7 C.4 processing failure).
        logger.exception("unexpected error storing an instance; answering 0x0110")
        _audit_failure(
            ctx, event, AuditOutcome.SERIOUS_FAILURE, f"0x0110 unexpected error: {type(exc).__name__}: {exc}"
        )
        return PROCESSING_FAILURE


def _rerun_resent(ctx: StoreContext, study_uid: str, sop_uid: str) -> None:
    """``spool.rerun_on_resend``: put a re-sent instance up for processing again (the spool
    already holds it). Refused while its study has an unfinished job: logged, not raised."""
    try:
        count = ctx.ledger.request_rerun(study_uid, [sop_uid])
    except LedgerError as exc:
        logger.warning("re-sent %s not rerun: %s", sop_uid, exc)
        return
    if count:
        logger.info("re-sent %s of study %s: processed again (rerun_on_resend)", sop_uid, study_uid)


def _store(event: Event, ctx: StoreContext) -> int:
    calling = str(event.assoc.requestor.ae_title).strip()
    try:
        ds = decode_store_dataset(event)
    except UndecodableError as exc:
        logger.warning("C-STORE from %s refused (0xC210): %s", calling, exc)
        _audit_failure(ctx, event, AuditOutcome.MINOR_FAILURE, f"0xC210 {exc}")
        return CANNOT_UNDERSTAND
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    try:
        if ctx.ledger.is_known(sop_uid):
            ctx.ledger.count_duplicate(sop_uid)
            logger.info("duplicate SOP Instance UID %s from %s: counted, not stored again", sop_uid, calling)
            if ctx.rerun_on_resend:
                _rerun_resent(ctx, study_uid, sop_uid)
            return SUCCESS
        data = event.encoded_dataset()
        # Decided before the write: nothing that reads the header can fail between the spool
        # and the ledger (the record itself never raises on a malformed attribute).
        record = _received(ds, event, ctx.spool.relative_path(study_uid, sop_uid), len(data), ctx.routing)
        ctx.spool.write(study_uid, sop_uid, data)
        ctx.ledger.record_instance(record)
    except (OSError, SQLAlchemyError) as exc:
        logger.error("C-STORE of %s from %s failed (0xA700): %s", sop_uid, calling, exc)
        _audit_failure(ctx, event, AuditOutcome.SERIOUS_FAILURE, f"0xA700 {exc}", study_uid)
        return OUT_OF_RESOURCES
    ctx.note_transfer(id(event.assoc), study_uid, str(_request(event).AffectedSOPClassUID))
    return SUCCESS


def _audit_failure(ctx: StoreContext, event: Event, outcome: int, detail: str, study_uid: str | None = None) -> None:
    _audit_quietly(
        ctx.ledger,
        AuditEventName.INSTANCES_TRANSFERRED,
        outcome,
        source_aet=str(event.assoc.requestor.ae_title).strip()[:16],
        source_host=str(event.assoc.requestor.address),
        destination_aet=str(event.assoc.acceptor.ae_title).strip(),
        study_instance_uid=study_uid,
        sop_class_uids=str(_request(event).AffectedSOPClassUID),
        instance_count=0,
        detail=detail[:2000],
    )


def handle_connection_open(event: Event, ctx: StoreContext) -> None:
    """EVT_CONN_OPEN: note when the connection opened (to tell a timeout from a probe)."""
    with ctx.lock:
        ctx.opened[id(event.assoc)] = time.monotonic()


def handle_connection_close(event: Event, ctx: StoreContext, acse_timeout_s: float) -> None:
    """EVT_CONN_CLOSE: a connection that never sent an A-ASSOCIATE-RQ and was closed by the
    ACSE timeout (ARTIM) is a Security Alert: it held a slot doing nothing. A quick close (a
    port probe, a health check) is only logged at debug level."""
    with ctx.lock:
        opened = ctx.opened.pop(id(event.assoc), None)
    if getattr(event.assoc.requestor, "primitive", None) is not None or opened is None:
        return  # an association was requested: the ACSE and the C-STORE handler audit it
    held = time.monotonic() - opened
    host = str(event.assoc.requestor.address)
    if held < 0.9 * acse_timeout_s:
        logger.debug("connection from %s closed after %.1f s without an association request", host, held)
        return
    detail = (
        f"connection from {host} sent no association request within {acse_timeout_s:g} s "
        "(listener.acse_timeout_s): closed"
    )
    logger.warning(detail)
    _audit_quietly(
        ctx.ledger, AuditEventName.SECURITY_ALERT, AuditOutcome.MINOR_FAILURE, source_host=host, detail=detail
    )


def handle_association_end(event: Event, ctx: StoreContext) -> None:
    """EVT_RELEASED / EVT_ABORTED: one PS3.15 "DICOM Instances Transferred" per study."""
    with ctx.lock:
        studies = ctx.transfers.pop(id(event.assoc), {})
    for study_uid, (count, classes) in studies.items():
        _audit_quietly(
            ctx.ledger,
            AuditEventName.INSTANCES_TRANSFERRED,
            AuditOutcome.SUCCESS,
            source_aet=str(event.assoc.requestor.ae_title).strip()[:16],
            source_host=str(event.assoc.requestor.address),
            destination_aet=str(event.assoc.acceptor.ae_title).strip(),
            study_instance_uid=study_uid,
            sop_class_uids=" ".join(sorted(classes)),
            instance_count=count,
            detail="received" + (" (association aborted)" if event.event == evt.EVT_ABORTED else ""),
        )


# -- TLS and the server ----------------------------------------------------------------------


def make_ssl_context(settings: ListenerSettings) -> ssl.SSLContext | None:
    """A server TLS context (PS3.15 B.1) from the settings; None when TLS is off."""
    if settings.tls_cert is None:
        return None
    if settings.tls_key is None:
        raise ListenerError("listener.tls_cert is set but listener.tls_key is not")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
        if settings.tls_ca is not None:
            context.load_verify_locations(cafile=str(settings.tls_ca))
    except (OSError, ssl.SSLError) as exc:
        raise ListenerError(f"cannot load TLS files {settings.tls_cert}, {settings.tls_key}: {exc}") from exc
    _warn_if_readable_by_others(settings.tls_key)
    if settings.tls_verify_client:
        if settings.tls_ca is None:
            raise ListenerError("listener.tls_verify_client needs listener.tls_ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _warn_if_readable_by_others(key: Any) -> None:
    """A private key readable by the group or others is logged (it should be 0600)."""
    import os

    try:
        mode = os.stat(key).st_mode & 0o777
    except OSError:
        return
    if mode & 0o077:
        logger.warning("TLS private key %s is mode %04o: make it 0600 (owner only)", key, mode)


class DicomListener:
    """The C-STORE/C-ECHO SCP. ``start()`` returns once the port is bound; use as a context
    manager or call ``stop()``."""

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        spool: Spool | None = None,
        routing: RoutingRule | None = None,
    ) -> None:
        self.settings = settings.listener
        self.ledger = ledger
        self.context = StoreContext(
            spool=spool or Spool(settings.spool.directory),
            ledger=ledger,
            routing=routing or RoutingRule(settings.routing.rules),
            rerun_on_resend=settings.spool.rerun_on_resend,
        )
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None

    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu_size
        ae.network_timeout = self.settings.network_timeout_s
        ae.acse_timeout = self.settings.acse_timeout_s
        ae.dimse_timeout = self.settings.dimse_timeout_s
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cast(str, cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        return ae

    def start(self) -> None:
        """Bind the port and serve associations in a background thread."""
        ae = self._make_ae()
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_c_store, [self.context]),
            (evt.EVT_RELEASED, handle_association_end, [self.context]),
            (evt.EVT_ABORTED, handle_association_end, [self.context]),
            (evt.EVT_CONN_OPEN, handle_connection_open, [self.context]),
            (evt.EVT_CONN_CLOSE, handle_connection_close, [self.context, self.settings.acse_timeout_s]),
        ]
        address = (self.settings.bind_address, self.settings.port)
        try:
            server = ae.make_server(
                address,
                ssl_context=make_ssl_context(self.settings),
                evt_handlers=handlers,
                server_class=GuardedAssociationServer,
                request_handler=AllowListRequestHandler,
            )
        except OSError as exc:
            raise ListenerError(f"cannot listen on {address[0]}:{address[1]}: {exc}") from exc
        server.ribnode_policy = SenderPolicy(  # type: ignore[attr-defined]
            tuple(self.settings.allowed_senders), self.settings.open_mode
        )
        cast(GuardedAssociationServer, server).guard(
            self.ledger, self.settings.max_connections_per_host, self.settings.tls_handshake_timeout_s
        )
        ae._servers.append(server)  # server.shutdown() removes itself from this list
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        logger.info(
            "listening as %s on %s:%d%s",
            self.settings.ae_title,
            address[0],
            self.port,
            " (TLS)" if self.settings.tls_cert else "",
        )

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        if self._server is None:
            return self.settings.port
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, close the socket and wait for the server thread."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        for assoc in list(self._server.active_associations):
            assoc.join(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        logger.info("listener stopped")

    def __enter__(self) -> DicomListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
