"""The Celery app of ribnode, built from the settings (no broker URL is hard-coded).

``make_celery(settings)`` is what code calls. ``ribnode.workers.app:app`` exists for
``celery -A`` and ``ribnode worker``: it is built lazily from ``load_settings()`` on first use.

Reliability settings (celery ``userguide/tasks.rst``, ``optimizing.rst``): acknowledge late so a
task whose worker dies is delivered again, prefetch one (long GPU work), reject on worker loss,
ignore results (the ledger is the state store), and a time limit on every task
(``broker.task_time_limit_s``) so that a stuck task neither holds a pool slot for ever nor
stalls a warm shutdown. GPU work and CPU work (export) have their own queues
(``ribnode.workers.queue``); the worker runs the sweeps of ``ribnode.workers.sweeps`` as
bootsteps.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

from ribnode.config.settings import BrokerSettings, Settings, load_settings
from ribnode.workers.fsbroker import TRANSPORT as FILESYSTEM_TRANSPORT
from ribnode.workers.queue import PROCESS_STUDY
from ribnode.workers.sweeps import ExportSweep, LeaseSweep

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: Seconds between a task's soft time limit (an exception in the task) and its hard limit
#: (the prefork pool child is killed).
HARD_TIME_LIMIT_GRACE_S = 30.0


def transport_options(broker: BrokerSettings) -> dict[str, Any]:
    """Transport options: folders for the embedded filesystem broker, timeouts for Redis."""
    if broker.url.startswith("filesystem"):
        folder = Path(broker.folder).resolve()
        queue_dir, processed = folder / "queue", folder / "processed"
        control = folder / "control"  # kombu's default is ./control in the working directory
        for path in (queue_dir, processed, control):
            path.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed),
            "store_processed": False,
            "control_folder": str(control),
        }
    # Redis: a message not acknowledged within the visibility timeout is delivered again, so
    # it must exceed the longest job (with acks_late, a job is acknowledged when it ends).
    return {"visibility_timeout": broker.visibility_timeout_s, "socket_connect_timeout": 3, "socket_timeout": 10}


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings`` (tasks from ``ribnode.workers.tasks``, loaded by the
    worker)."""
    broker = settings.broker
    app = Celery(
        "ribnode",
        broker=broker.url,
        include=["ribnode.workers.tasks"],
    )
    app.conf.update(
        # the embedded broker: kombu's filesystem transport with atomic message files
        broker_transport=FILESYSTEM_TRANSPORT if broker.url.startswith("filesystem") else None,
        broker_transport_options=transport_options(broker),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_soft_time_limit=broker.task_time_limit_s,
        task_time_limit=broker.task_time_limit_s + HARD_TIME_LIMIT_GRACE_S,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=broker.cpu_queue,
        task_routes={PROCESS_STUDY: {"queue": broker.gpu_queue}},
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not broker.url.startswith("filesystem"),
        worker_send_task_events=False,
        # a pool process grown past this after a task is replaced (KiB; None: never)
        worker_max_memory_per_child=broker.worker_max_memory_per_child_mb * 1024 or None,
    )
    app.ribnode_settings = settings  # type: ignore[attr-defined]
    app.steps["worker"].add(ExportSweep)  # pending and overdue exports
    app.steps["worker"].add(LeaseSweep)  # jobs whose worker died
    worker_process_init.connect(limit_child_memory, weak=False, dispatch_uid="ribnode-memory-limit")
    return app


def limit_child_memory(**_: Any) -> None:
    """``worker_process_init``: cap the address space of a prefork pool process at
    ``broker.worker_memory_limit_mb`` (RLIMIT_AS), so a decoder asking for more memory than the
    image can need gets MemoryError (a transient error, counted in the ledger) instead of the
    kernel's OOM killer taking the host down. 0: no limit."""
    import resource

    from celery import current_app

    settings: Settings | None = getattr(current_app, "ribnode_settings", None)
    limit_mb = settings.broker.worker_memory_limit_mb if settings is not None else 0
    if limit_mb:
        limit = limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        logger.info("worker process memory limited to %d MiB (RLIMIT_AS)", limit_mb)


@functools.lru_cache(maxsize=1)
def default_app() -> Celery:
    """The app built from ``load_settings()`` (environment and ``RIBNODE_CONFIG``)."""
    return make_celery(load_settings())


def __getattr__(name: str) -> Any:
    """``ribnode.workers.app:app`` for ``celery -A``, built on first access."""
    if name == "app":
        return default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
