"""``ribnode resend JOB``: deliver a job's results again (registered in ``ribnode.node.cli``)."""

from __future__ import annotations

import argparse
import functools
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ribnode.config.settings import Settings
    from ribnode.node.broker import BrokerFactory

logger = logging.getLogger(__name__)


def add_resend_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], broker: BrokerFactory) -> None:
    """The ``resend`` subcommand; ``broker`` builds the task queue its export task goes to."""
    resend = sub.add_parser(
        "resend",
        help="deliver a job's results again to every export destination",
        description=(
            "Make every delivery of JOB pending again (attempts reset) and the job "
            "'exporting', then queue its export task on the CPU queue (or, with --here, "
            "deliver in this process). Use it after a job went 'dead' because a destination "
            "was down for longer than export.max_attempts allows. A PACS keeps one copy per "
            "SOP Instance UID, so a re-send replaces rather than duplicates."
        ),
    )
    resend.add_argument("job", type=int, help="job id (see `ribnode status`)")
    resend.add_argument(
        "--here", action="store_true", help="deliver now in this process instead of queueing the export task"
    )
    resend.add_argument(
        "--wait", type=float, default=60.0, help="with --here: longest time to keep retrying, seconds (default 60)"
    )
    resend.add_argument("--ledger-url", help="SQLAlchemy URL of the ledger (ledger.url)")
    resend.add_argument("--broker-url", help="Celery broker URL (broker.url)")
    resend.set_defaults(handler=functools.partial(resend_command, broker=broker))


def resend_command(args: argparse.Namespace, broker: BrokerFactory) -> int:
    """Reset the job's deliveries, then queue (or run) its export."""
    from ribnode.config.settings import load_settings
    from ribnode.ledger.store import Ledger, LedgerError
    from ribnode.node.export import ExportError, export_job, resend

    settings = load_settings(args.config, {"ledger.url": args.ledger_url, "broker.url": args.broker_url})
    ledger = Ledger(settings.ledger.url)
    try:
        rows = resend(args.job, settings, ledger)
    except (ExportError, LedgerError) as exc:
        print(f"ribnode resend: {exc}")
        return 2
    print(f"job {args.job}: deliveries reset for {', '.join(r.destination for r in rows)}")
    if not args.here:
        return _queue(args.job, settings, broker)
    deadline = time.monotonic() + args.wait
    report = export_job(args.job, settings, ledger)
    while report.retry_in_s is not None and time.monotonic() + report.retry_in_s < deadline:
        time.sleep(report.retry_in_s)
        report = export_job(args.job, settings, ledger)
    print(
        f"job {args.job}: {report.state}; delivered: {', '.join(report.delivered) or 'none'}; "
        f"pending: {', '.join(report.pending) or 'none'}; dead: {', '.join(report.dead) or 'none'}"
    )
    return 0 if report.state == "done" else 1


def _queue(job_id: int, settings: Settings, broker: BrokerFactory) -> int:
    from kombu.exceptions import OperationalError

    try:
        task_id = broker(settings).schedule_export(job_id)
    except OperationalError as exc:
        print(
            f"job {job_id}: the broker is unreachable ({exc}); the job stays 'exporting' and "
            "is re-queued when a worker's sweep finds it overdue, or run `ribnode resend "
            f"{job_id} --here`"
        )
        return 1
    print(f"job {job_id}: export queued (task {task_id})")
    return 0
