"""Subcommands of this part of the house (see ribnode.cli): ``worker``."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this part's subcommands on the ``ribnode`` parser."""
    worker = sub.add_parser(
        "worker",
        help="run a Celery worker that takes jobs from the broker",
        description=(
            "Run a Celery worker for ribnode's queues. On another host, give it the same "
            "settings (ledger URL, broker URL) and the spool folder at the same path "
            "(see docs/operations.md)."
        ),
    )
    worker.add_argument("-Q", "--queues", help="comma-separated queues (default: the GPU and CPU queues)")
    worker.add_argument("-c", "--concurrency", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery pool (default prefork)"
    )
    worker.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (ledger.url)")
    worker.add_argument("--broker-url", help="Celery broker URL (broker.url)")
    worker.add_argument("--spool", help="spool folder (spool.directory)")
    worker.add_argument("--hostname", help="Celery node name (default ribnode@<host>)")
    worker.set_defaults(handler=worker_command)


def worker_command(args: argparse.Namespace) -> int:
    """``ribnode worker``: start a Celery worker in this process."""
    from ribnode.config.settings import load_settings
    from ribnode.workers.app import make_celery

    settings = load_settings(
        args.config,
        {"ledger.url": args.ledger_url, "broker.url": args.broker_url, "spool.directory": args.spool},
    )
    app = make_celery(settings)
    queues = args.queues or f"{settings.broker.gpu_queue},{settings.broker.cpu_queue}"
    _audit_activity(settings.ledger.url, f"ribnode worker started (queues {queues})")
    argv = [
        "worker",
        "-Q",
        queues,
        "-c",
        str(args.concurrency),
        "-P",
        args.pool,
        "-n",
        args.hostname or "ribnode@%h",
        "--loglevel",
        (args.log_level or "INFO").upper(),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    try:
        app.worker_main(argv=argv)
    finally:
        _audit_activity(settings.ledger.url, "ribnode worker stopped")
    return 0


def _audit_activity(ledger_url: str, detail: str) -> None:
    """PS3.15 "Application Activity" for the worker (its own short-lived ledger connection,
    so no database connection is inherited by the prefork pool's children)."""
    from ribnode.ledger.store import AuditEventName, Ledger

    ledger = Ledger(ledger_url)
    try:
        ledger.audit(AuditEventName.APPLICATION_ACTIVITY, detail=detail)
    finally:
        ledger.dispose()
