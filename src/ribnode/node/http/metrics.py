"""Prometheus metrics, read from the ledger at scrape time.

ribnode runs as several processes (``ribnode serve``, one or more workers, on one host or
several) that share only the spool, the ledger and the broker. Rather than prometheus-client's
multiprocess mode (a shared folder of mmap files, one host only, cleaned up by hand when a
process dies), the HTTP service computes every figure from the ledger when Prometheus scrapes
(a custom ``Collector``): the ledger is already the one place every process writes, so the
figures add up across processes and hosts, survive restarts, and cannot disagree with
``ribnode status``. Counters come from append-only rows (audit events, job transitions); the
stage-duration histograms are folded incrementally from the new ``job_transitions`` rows at
each scrape, and the inference-time histograms from the new ``model_runs`` rows (each worker
records how long each model took on each instance), so a scrape costs a few aggregate queries.

Receive counters follow the audit records: a C-STORE is counted when its association ends
(one "DICOM Instances Transferred" record per study and association), a STOW-RS when its
request is answered.
"""

from __future__ import annotations

import bisect
import logging
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ribnode.ledger.schema import (
    AuditEvent,
    AuditEventName,
    Delivery,
    Job,
    JobState,
    JobTransition,
    ModelRun,
    Study,
)
from ribnode.ledger.store import Ledger, utcnow

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# Stage durations: seconds from entering the first state to entering the second.
STAGES = {
    JobState.RUNNING: (JobState.QUEUED, "queued_to_running"),
    JobState.EXPORTING: (JobState.RUNNING, "running_to_exporting"),
    JobState.DONE: (JobState.EXPORTING, "exporting_to_done"),
}
BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
WAITING = (JobState.RECEIVED, JobState.QUEUED)


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip([*map(str, BUCKETS), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


@dataclass
class _StageFold:
    """Stage durations folded from ``job_transitions`` rows, oldest first, from ``last_id``."""

    last_id: int = 0
    entered: dict[int, dict[str, datetime]] = field(default_factory=dict)  # unfinished jobs
    histograms: dict[str, _Histogram] = field(default_factory=lambda: {s: _Histogram() for _, s in STAGES.values()})

    def add(self, job_id: int, to_state: str, at: datetime) -> None:
        states = self.entered.setdefault(job_id, {})
        stage = STAGES.get(JobState(to_state)) if to_state in JobState._value2member_map_ else None
        if stage is not None and stage[0] in states:
            self.histograms[stage[1]].observe(max(0.0, (at - states[stage[0]]).total_seconds()))
        states[to_state] = at
        if to_state in (JobState.DONE, JobState.FAILED, JobState.DEAD):
            del self.entered[job_id]


@dataclass
class _ModelFold:
    """Inference times folded from ``model_runs`` rows, oldest first, from ``last_id``."""

    last_id: int = 0
    histograms: dict[str, _Histogram] = field(default_factory=dict)

    def add(self, model: str, seconds: float) -> None:
        self.histograms.setdefault(model, _Histogram()).observe(max(0.0, seconds))


class LedgerCollector(Collector):
    """Every ribnode metric, from the ledger (and the spool's file system) at scrape time."""

    def __init__(self, ledger: Ledger, spool_dir: Path, ae_title: str) -> None:
        self._ledger = ledger
        self._spool_dir = spool_dir
        self._ae_title = ae_title
        self._stages = _StageFold()
        self._models = _ModelFold()
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._ledger.session() as s:
            yield from self._received(s)
            yield from self._rejected(s)
            yield from self._jobs(s)
            yield from self._exports(s)
            with self._lock:
                yield self._stage_histogram(s)
                yield self._model_histogram(s)
        yield GaugeMetricFamily(
            "ribnode_spool_free_bytes",
            "Free bytes on the spool's file system",
            value=shutil.disk_usage(self._spool_dir).free,
        )

    def _received(self, s: Session) -> Iterator[Metric]:
        detail = AuditEvent.detail
        protocol = case((detail.like("STOW-RS %"), "stow-rs"), else_="dimse")
        outcome = case(
            (AuditEvent.outcome == 0, "stored"),
            (detail.like("0x%"), func.substr(detail, 1, 6)),
            (detail.like("STOW-RS 0x%"), func.substr(detail, 9, 6)),
            else_="other",
        )
        query = (
            select(protocol, outcome, func.count(AuditEvent.id), func.coalesce(func.sum(AuditEvent.instance_count), 0))
            .where(AuditEvent.event == str(AuditEventName.INSTANCES_TRANSFERRED))
            .where(
                detail.like("received%")
                | detail.like("0x%")
                | detail.like("STOW-RS received%")
                | detail.like("STOW-RS 0x%")
            )
            .group_by(protocol, outcome)
        )
        received = CounterMetricFamily(
            "ribnode_instances_received",
            "Instances received, by protocol (dimse, stow-rs) and outcome (stored, or the failure "
            "status 0xC210, 0xA700, 0xA900); duplicates are counted apart",
            labels=["protocol", "outcome"],
        )
        for proto, result, events, instances in s.execute(query):
            label = str(result)
            received.add_metric([str(proto), label], _number(instances if label == "stored" else events))
        yield received
        duplicates = s.scalar(select(func.coalesce(func.sum(Study.duplicate_count), 0)))
        yield CounterMetricFamily(
            "ribnode_instances_duplicate",
            "Copies of already received SOP instances (acknowledged, not stored)",
            value=duplicates or 0,
        )

    def _rejected(self, s: Session) -> Iterator[Metric]:
        detail = AuditEvent.detail
        reason = case(
            (detail.like("association rejected%"), "unknown_caller"),
            (detail.like("association from % rejected:%"), "max_associations"),
            (detail.like("connection from % refused:%"), "per_host_limit"),
            (detail.like("connection from % sent no association request%"), "acse_timeout"),
            (detail.like("TLS handshake with %"), "tls_handshake"),
            (detail.like("STOW-RS HTTP 401%"), "unauthorized"),
            (detail.like("STOW-RS HTTP %"), func.replace(func.substr(detail, 9, 8), " ", "_")),
            else_="other",
        )
        protocol = case((detail.like("STOW-RS %"), "stow-rs"), else_="dimse")
        query = (
            select(protocol, reason, func.count(AuditEvent.id))
            .where(
                (AuditEvent.event == str(AuditEventName.SECURITY_ALERT))
                | ((AuditEvent.event == str(AuditEventName.INSTANCES_TRANSFERRED)) & detail.like("STOW-RS HTTP %"))
            )
            .group_by(protocol, reason)
        )
        rejected = CounterMetricFamily(
            "ribnode_requests_rejected",
            "Connections and associations (dimse) and STOW-RS requests refused as a whole, by reason "
            "(unknown_caller, max_associations, per_host_limit, acse_timeout, tls_handshake; "
            "unauthorized, HTTP_400, HTTP_408, HTTP_413, HTTP_415)",
            labels=["protocol", "reason"],
        )
        for proto, why, count in s.execute(query):
            label = str(why)
            rejected.add_metric([str(proto), label.lower() if label.startswith("HTTP") else label], _number(count))
        yield rejected

    def _jobs(self, s: Session) -> Iterator[Metric]:
        counts = dict(s.execute(select(Job.state, func.count(Job.id)).group_by(Job.state)).all())
        jobs = GaugeMetricFamily("ribnode_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([str(state)], counts.get(str(state), 0))
        yield jobs
        studies = s.scalar(select(func.count(func.distinct(Job.study_id))))
        yield CounterMetricFamily(
            "ribnode_studies_completed", "Studies that study completion turned into a job", value=studies or 0
        )
        oldest = s.scalar(select(func.min(Job.created_at)).where(Job.state.in_([str(w) for w in WAITING])))
        yield GaugeMetricFamily(
            "ribnode_oldest_waiting_job_seconds",
            "Age of the oldest job not yet taken by a worker (received or queued); 0 when none",
            value=(utcnow() - oldest).total_seconds() if oldest is not None else 0.0,
        )

    def _exports(self, s: Session) -> Iterator[Metric]:
        delivered = case((Delivery.state == "delivered", 1), else_=0)
        query = select(
            Delivery.destination,
            func.sum(Delivery.attempts),
            func.sum(delivered),
            func.sum(case((Delivery.state == "dead", 1), else_=0)),
        ).group_by(Delivery.destination)
        attempts = CounterMetricFamily(
            "ribnode_export_attempts",
            "Delivery attempts per destination (reset by ribnode resend)",
            labels=["destination"],
        )
        failures = CounterMetricFamily(
            "ribnode_export_failures",
            "Failed delivery attempts per destination (reset by ribnode resend)",
            labels=["destination"],
        )
        dead = GaugeMetricFamily("ribnode_export_dead", "Deliveries given up, per destination", labels=["destination"])
        for name, tried, ok, gave_up in s.execute(query):
            attempts.add_metric([str(name)], _number(tried))
            failures.add_metric([str(name)], max(0.0, _number(tried) - _number(ok)))
            dead.add_metric([str(name)], _number(gave_up))
        yield from (attempts, failures, dead)

    def _stage_histogram(self, s: Session) -> Metric:
        rows = s.execute(
            select(JobTransition.id, JobTransition.job_id, JobTransition.to_state, JobTransition.at)
            .where(JobTransition.id > self._stages.last_id)
            .order_by(JobTransition.id)
        )
        for row_id, job_id, to_state, at in rows:
            self._stages.add(job_id, to_state, at)
            self._stages.last_id = row_id
        family = HistogramMetricFamily(
            "ribnode_job_stage_duration_seconds",
            "Seconds a job spent in each stage: queued_to_running (waiting for a worker), "
            "running_to_exporting (the models), exporting_to_done (delivery)",
            labels=["stage"],
        )
        for stage, hist in self._stages.histograms.items():
            family.add_metric([stage], hist.cumulative(), hist.total)
        return family

    def _model_histogram(self, s: Session) -> Metric:
        rows = s.execute(
            select(ModelRun.id, ModelRun.model, ModelRun.seconds)
            .where(ModelRun.id > self._models.last_id)
            .order_by(ModelRun.id)
        )
        for row_id, model, seconds in rows:
            self._models.add(str(model), float(seconds))
            self._models.last_id = row_id
        family = HistogramMetricFamily(
            "ribnode_model_inference_seconds",
            "Seconds of inference per instance, by model (segmentation, suppression), as the workers timed it",
            labels=["model"],
        )
        for model in sorted({"segmentation", "suppression", *self._models.histograms}):
            hist = self._models.histograms.get(model, _Histogram())
            family.add_metric([model], hist.cumulative(), hist.total)
        return family


def _number(value: Any) -> float:
    """An aggregate from SQL as a float: int, or Decimal (PostgreSQL's SUM); None (SUM over
    no row) is 0."""
    return 0.0 if value is None else float(value)
