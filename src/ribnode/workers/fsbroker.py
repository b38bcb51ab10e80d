"""The embedded broker: kombu's filesystem transport, with messages written atomically.

kombu's filesystem transport (5.x) creates a message file under its final name, then writes
the payload into it. A consumer polling the same folder can move and read that file between
the two steps: it reads an empty payload, the JSON decoder raises inside the worker's event
loop, and the worker stops, while the message, already moved away, is lost. Two workers (or
a worker that publishes its own retry while it polls) hit this sooner or later; the test suite
did.

Here a message is written to a hidden temporary name in the same folder, flushed to disk, and
renamed to its final name (an atomic step on POSIX): a consumer sees a whole message or none.
Names start with a zero-padded nanosecond clock instead of kombu's milliseconds, so messages
put by one process within the same millisecond are still taken in order.
A file that still cannot be decoded (written by something else, or damaged on disk) is logged
as an error and skipped, so the worker stays up; the job it belonged to is recovered by the
ledger's sweeps (``ribnode.workers.sweeps``).
"""

from __future__ import annotations

import logging
import os
import uuid
from time import monotonic_ns
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

#: ``broker_transport`` for Celery when the broker URL is ``filesystem://``.
TRANSPORT = "ribnode.workers.fsbroker:Transport"


class Channel(filesystem.Channel):
    """A filesystem channel whose messages appear in the queue folder whole or not at all."""

    # kombu's own signature (its base class names the message differently; it is passed by position)
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # consumers take files in name order: nanoseconds, zero-padded, keep a process's order
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # a leading dot and no ".msg" ending: never taken for a message by ``_get``
        partial = os.path.join(self.data_folder_out, f".{name}.partial")
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"cannot add message {final!r} to the queue folder: {exc}") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        while True:  # ``Empty`` from the base class ends the loop
            try:
                return super()._get(queue)
            except ValueError as exc:  # json.JSONDecodeError: the file is consumed, skip it
                logger.error("broker: skipped an undecodable message file in queue %r (%s)", queue, exc)


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
