"""Subcommands of this part of the house (see ribnode.cli): ``serve``, ``status``, ``rerun`` and
``resend``.

The task queue and the model fingerprint are passed in by the composition root
(``ribnode.cli``), so the node imports neither the workers nor the models.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ribnode.node.broker import BrokerFactory, Fingerprint

logger = logging.getLogger(__name__)


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], broker: BrokerFactory, fingerprint: Fingerprint
) -> None:
    """Register this part's subcommands on the ``ribnode`` parser. ``broker`` builds the task
    queue of the settings a command runs with, ``fingerprint`` the model fingerprint."""
    serve = sub.add_parser(
        "serve",
        help="run the DICOM listener and the study-completion thread",
        description=(
            "Run the C-STORE/C-ECHO listener (spool + ledger) and the study-completion thread "
            "that turns quiet studies into jobs and sends them to the Celery broker."
        ),
    )
    serve.add_argument("--ae-title", help="listener AE title (listener.ae_title)")
    serve.add_argument("--bind", help="bind address (listener.bind_address)")
    serve.add_argument("--port", type=int, help="DICOM port (listener.port)")
    serve.add_argument("--open", action="store_true", default=None, help="accept any caller (demo only)")
    serve.add_argument("--spool", help="spool folder (spool.directory)")
    serve.add_argument("--quiet-period", type=float, help="seconds without a new instance (spool.quiet_period_s)")
    serve.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (ledger.url)")
    serve.add_argument("--broker-url", help="Celery broker URL (broker.url)")
    serve.add_argument(
        "--http-port", type=int, help="HTTP port of STOW-RS, /healthz, /readyz, /metrics (http.port; off when unset)"
    )
    serve.add_argument(
        "--no-dimse", action="store_true", help="no DICOM listener: the HTTP service (and study completion) only"
    )
    serve.set_defaults(handler=functools.partial(serve_command, broker=broker, fingerprint=fingerprint))

    status = sub.add_parser(
        "status",
        help="ledger summary: studies, jobs by state, last errors",
        description="Summarise the ledger: studies, instances and jobs by state, last errors.",
    )
    status.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (ledger.url)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=status_command)
    _add_resend(sub, broker)
    _add_rerun(sub)


def _add_rerun(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``ribnode rerun STUDY_UID``: process a study again on purpose."""
    rerun = sub.add_parser(
        "rerun",
        help="process a study again on purpose (new settings or models)",
        description=(
            "Put every processed instance of a study back to pending: the running `ribnode "
            "serve` makes a 'rerun' job of them after the quiet period. Objects whose content "
            "changed get new UIDs in new series and name what they replace; unchanged objects "
            "keep their UIDs. Re-sending the study from the PACS does not do this unless "
            "spool.rerun_on_resend is on."
        ),
    )
    rerun.add_argument("study_uid", metavar="STUDY_UID", help="Study Instance UID")
    rerun.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (ledger.url)")
    rerun.set_defaults(handler=rerun_command)


def rerun_command(args: argparse.Namespace) -> int:
    """``ribnode rerun STUDY_UID``: exit 0 when instances were put back, 1 when the study had
    none to rerun, 2 when the ledger refuses (unknown study, a job still running)."""
    from ribnode.ledger.store import AuditEventName, Ledger, LedgerError

    settings = _settings(args)
    ledger = Ledger(settings.ledger.url)
    try:
        count = ledger.request_rerun(args.study_uid)
        if count:
            ledger.audit(AuditEventName.APPLICATION_ACTIVITY, detail=f"rerun requested: {args.study_uid}")
    except LedgerError as exc:
        print(f"ribnode rerun: {exc}", file=sys.stderr)
        return 2
    finally:
        ledger.dispose()
    if not count:
        print(f"ribnode rerun: study {args.study_uid} has no processed instance to rerun", file=sys.stderr)
        return 1
    print(
        f"study {args.study_uid}: {count} instance(s) pending again; `ribnode serve` makes a "
        f"job of them after the quiet period ({settings.spool.quiet_period_s:g} s)"
    )
    return 0


def _add_resend(sub: argparse._SubParsersAction[argparse.ArgumentParser], broker: BrokerFactory) -> None:
    """``ribnode resend JOB`` (owned by the export code, ``ribnode.node.export_cli``)."""
    from ribnode.node.export_cli import add_resend_parser

    add_resend_parser(sub, broker)


def _settings(args: argparse.Namespace) -> Any:
    from ribnode.config.settings import load_settings

    overrides = {
        "listener.ae_title": getattr(args, "ae_title", None),
        "listener.bind_address": getattr(args, "bind", None),
        "listener.port": getattr(args, "port", None),
        "listener.open_mode": getattr(args, "open", None),
        "spool.directory": getattr(args, "spool", None),
        "spool.quiet_period_s": getattr(args, "quiet_period", None),
        "ledger.url": getattr(args, "ledger_url", None),
        "broker.url": getattr(args, "broker_url", None),
        "http.port": getattr(args, "http_port", None),
    }
    return load_settings(args.config, overrides)


def serve_command(args: argparse.Namespace, broker: BrokerFactory, fingerprint: Fingerprint) -> int:
    """``ribnode serve``: listener + completion thread until SIGINT/SIGTERM. A configuration
    that cannot work (port taken, bad TLS files, malformed routing rule) exits with status 2
    and one line naming the problem."""
    from ribnode.node.http import HttpServiceError
    from ribnode.node.listener import ListenerError
    from ribnode.node.routing import RuleError

    try:
        return _serve(_settings(args), broker, fingerprint, dimse=not getattr(args, "no_dimse", False))
    except (ListenerError, RuleError, HttpServiceError) as exc:
        logger.error("ribnode serve cannot start: %s", exc)
        print(f"ribnode serve: {exc}", file=sys.stderr)
        return 2


def _serve(settings: Any, broker: BrokerFactory, fingerprint: Fingerprint, dimse: bool = True) -> int:
    from contextlib import ExitStack

    from ribnode.ledger.store import AuditEventName, Ledger
    from ribnode.node.completion import StudyCompletion
    from ribnode.node.listener import DicomListener
    from ribnode.node.recovery import recover_spool
    from ribnode.node.routing import RoutingRule
    from ribnode.node.spool import Spool

    routing = RoutingRule(settings.routing.rules)  # a malformed rule fails here, before binding
    _check_console(settings)
    ledger = Ledger(settings.ledger.url)
    spool = Spool(settings.spool.directory)
    try:
        recover_spool(spool, ledger, routing)
    except Exception:  # never refuse to start over recovery: log it, serve, retry next start
        logger.exception("spool recovery failed; serving anyway (it runs again at the next start)")
    queue = broker(settings)
    completion = StudyCompletion(settings, ledger, queue.enqueue, fingerprint(settings))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if dimse:
        warn_if_exposed(settings.listener)
    with ExitStack() as stack:
        if dimse:
            listener = stack.enter_context(DicomListener(settings, ledger, spool, routing))
        if settings.http.port is not None:
            http = stack.enter_context(_http_service(settings, ledger, spool, routing, queue.check))
        stack.enter_context(completion)
        if settings.console.syslog.host is not None:
            stack.enter_context(_audit_forwarder(settings, ledger))
        ledger.audit(AuditEventName.APPLICATION_ACTIVITY, detail="ribnode serve started")
        if dimse:
            print(
                f"ribnode serve: {settings.listener.ae_title} listening on "
                f"{settings.listener.bind_address}:{listener.port}",
                flush=True,
            )
        if settings.http.port is not None:
            print(
                f"ribnode serve: HTTP (STOW-RS, /healthz, /readyz, /metrics) on "
                f"{http.scheme}://{settings.http.bind_address}:{http.port}",
                flush=True,
            )
        if settings.console.enabled:
            print(
                f"ribnode serve: QA console on {http.scheme}://{settings.http.bind_address}:{http.port}/console/",
                flush=True,
            )
        stop.wait()
    ledger.audit(AuditEventName.APPLICATION_ACTIVITY, detail="ribnode serve stopped")
    return 0


ALL_INTERFACES = ("0.0.0.0", "::", "", "*")


def warn_if_exposed(listener: Any) -> str | None:
    """Warn loudly (log and stderr) when the listener binds to every interface without an
    allow-list: with ``open_mode`` anyone on the network may store; without it every caller is
    refused, so the PACS cannot connect either. Returns the warning, or None."""
    if str(listener.bind_address).strip() not in ALL_INTERFACES:
        return None
    if listener.allowed_senders and not listener.open_mode:
        return None
    consequence = (
        "open_mode is on: ANY host on the network may store instances"
        if listener.open_mode
        else "every association will be refused, the PACS's included"
    )
    text = (
        f"WARNING: listening on all interfaces ({listener.bind_address}) without a "
        f"sender allow-list: {consequence}. List the PACS's AE title and host in "
        "listener.allowed_senders (and leave open_mode off)."
    )
    logger.warning(text)
    print(f"ribnode serve: {text}", file=sys.stderr, flush=True)
    return text


def _http_service(settings: Any, ledger: Any, spool: Any, routing: Any, broker_check: Any) -> Any:
    """The HTTP service (``ribnode.node.http``), not yet started; with the QA console
    (``ribnode.console``) mounted at /console when ``console.enabled``."""
    from ribnode.node.http import HttpService
    from ribnode.node.http.app import make_app

    console = None
    if settings.console.enabled:
        from ribnode.console.app import make_console

        console = make_console(settings, ledger)
    app = make_app(settings, ledger, spool, routing, broker_check, console)
    return HttpService(app, settings.http)


def _check_console(settings: Any) -> None:
    """The console needs the HTTP service and users; warn when it is reachable off the host
    without TLS (passwords and session cookies would cross the network in clear)."""
    from ribnode.node.http import HttpServiceError

    if not settings.console.enabled:
        return
    if settings.http.port is None:
        raise HttpServiceError("console.enabled needs the HTTP service: set http.port (--http-port)")
    if not settings.console.users:
        raise HttpServiceError("console.enabled but console.users is empty: nobody could log in")
    loopback = str(settings.http.bind_address) in ("127.0.0.1", "::1", "localhost")
    if not loopback and settings.http.tls_cert is None:
        text = (
            f"WARNING: the QA console is served on {settings.http.bind_address} without TLS: "
            "passwords and session cookies cross the network in clear. Set http.tls_cert/tls_key."
        )
        logger.warning(text)
        print(f"ribnode serve: {text}", file=sys.stderr, flush=True)


def _audit_forwarder(settings: Any, ledger: Any) -> Any:
    """The syslog forwarder of the audit trail (``console.syslog``), not yet started."""
    from pathlib import Path

    from ribnode.console.audit_export import AuditSource
    from ribnode.console.syslog import SyslogForwarder

    source = AuditSource(settings.outputs.node_id, settings.listener.ae_title)
    cursor = Path(settings.var_dir) / "audit-syslog.cursor"
    return SyslogForwarder(settings.console.syslog, ledger, source, cursor)


def status_command(args: argparse.Namespace) -> int:
    """``ribnode status``: print the ledger summary and how each export destination stands
    (deliveries by state, latest error, next attempt). Credentials are masked."""
    from ribnode.config.redact import redact
    from ribnode.ledger.deliveries import DeliveryLedger
    from ribnode.ledger.store import Ledger

    settings = _settings(args)
    ledger = Ledger(settings.ledger.url)
    summary = ledger.summary()
    destinations = DeliveryLedger(ledger).destination_status()
    if args.json:
        data = {
            "ledger": redact(settings.ledger.url),
            "studies": summary.studies,
            "instances": summary.instances,
            "duplicates": summary.duplicates,
            "jobs": summary.jobs,
            "security_alerts": summary.security_alerts,
            "last_errors": [
                {"job": j, "state": s, "error": redact(e), "at": at.isoformat()} for j, s, e, at in summary.last_errors
            ],
            "destinations": [
                {
                    "name": d.name,
                    "deliveries": d.deliveries,
                    "last_error": redact(d.last_error),
                    "next_attempt_at": d.next_attempt_at.isoformat() if d.next_attempt_at else None,
                }
                for d in destinations
            ],
        }
        print(json.dumps(data, indent=2))
        return 0
    print(f"ledger     {redact(settings.ledger.url)}")
    print(f"studies    {summary.studies}")
    print(
        "instances  "
        + (", ".join(f"{k} {v}" for k, v in sorted(summary.instances.items())) or "none")
        + f" (duplicates received: {summary.duplicates})"
    )
    print("jobs       " + (", ".join(f"{k} {v}" for k, v in sorted(summary.jobs.items())) or "none"))
    print(f"security alerts (rejected associations): {summary.security_alerts}")
    if destinations:
        print("destinations:")
        for d in destinations:
            states = ", ".join(f"{k} {v}" for k, v in sorted(d.deliveries.items()))
            due = f"; next attempt {d.next_attempt_at:%Y-%m-%d %H:%M:%S}Z" if d.next_attempt_at else ""
            last = f"; last error: {redact(d.last_error)}" if d.last_error else ""
            print(f"  {d.name}: {states}{due}{last}")
    if summary.last_errors:
        print("last errors:")
        for job_id, state, error, at in summary.last_errors:
            print(f"  job {job_id} [{state}] {at:%Y-%m-%d %H:%M:%S}Z  {redact(error)}")
    return 0
