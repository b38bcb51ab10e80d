"""What the node needs of the task queue, passed in (the node never imports the workers).

The composition root (``ribnode.cli``) builds the Celery app from the settings and hands the
node's commands a :data:`BrokerFactory`; ``ribnode serve`` and ``ribnode resend`` call it once
they have their settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ribnode.config.settings import Settings
from ribnode.ledger.dispatch import Enqueue


@dataclass(frozen=True)
class Broker:
    """The node's side of the broker."""

    enqueue: Enqueue  # publish a committed job's study task (GPU queue); the task id
    schedule_export: Callable[[int], str]  # publish a job's export task (CPU queue); the task id
    check: Callable[[], None]  # readiness probe of the broker (/readyz); raises when it is down


#: Builds the :class:`Broker` of a node's settings.
BrokerFactory = Callable[[Settings], Broker]
#: The model fingerprint of a node's settings: part of each job's idempotency key.
Fingerprint = Callable[[Settings], Mapping[str, str]]
