"""A worker bootstep that runs a sweep once at start, then periodically, in a daemon thread.

A daemon thread, so that stopping the worker is not delayed by a timer's sleep; started after
the pool, so prefork children are never forked from a process in mid-sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

from ribnode.config.settings import Settings

# What a sweep does: (the first pass, at start; each later pass; seconds between passes).
SweepPlan = tuple[Callable[[], object], Callable[[], object], float]


class PeriodicSweep(bootsteps.StartStopStep):
    """Base of the worker's sweeps; a subclass says what to run in :meth:`plan`."""

    requires = ("celery.worker.components:Pool",)
    thread_name = "ribnode-sweep"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def plan(self, parent: Any, settings: Settings) -> SweepPlan | None:
        """The passes to run for this worker, or None to run nothing."""
        raise NotImplementedError

    def start(self, parent: Any) -> None:
        settings: Settings | None = getattr(parent.app, "ribnode_settings", None)
        plan = None if settings is None else self.plan(parent, settings)
        if plan is None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=plan, name=self.thread_name, daemon=True)
        self._thread.start()

    def _loop(self, first: Callable[[], object], then: Callable[[], object], interval_s: float) -> None:
        first()
        while not self._stop.wait(interval_s):
            then()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
