"""The ledger on SQLite and on the PostgreSQL server of the machine (real connections)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from ribnode.ledger.store import (
    AuditEventName,
    AuditOutcome,
    InstanceCheck,
    InstanceState,
    JobState,
    Ledger,
    LedgerError,
    ReceivedInstance,
    idempotency_key,
)

VERSIONS = {"segmentation": "a" * 64, "suppression": "b" * 64}


@pytest.fixture(params=["sqlite", "postgresql"])
def any_ledger(request, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_fresh_url")
    led = Ledger(url)
    yield led
    led.dispose()


def received(study: str, sop: str, routed: bool = True) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid="9.9",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CR",
        path=f"{study}/{sop}.dcm",
        size_bytes=10,
        calling_aet="TEST",
        routed=routed,
        ignore_reason=None if routed else "Modality 'CT' fails in ['CR', 'DX']",
    )


def test_migrations_create_every_table(any_ledger: Ledger) -> None:
    tables = set(inspect(any_ledger.engine).get_table_names())
    assert {
        "studies",
        "instances",
        "jobs",
        "job_transitions",
        "audit_events",
        "deliveries",
        "output_objects",
        "alembic_version",
    } <= tables
    any_ledger.migrate()  # idempotent


def test_instances_duplicates_and_jobs(any_ledger: Ledger) -> None:
    led = any_ledger
    assert led.record_instance(received("1.1", "1.1.1"))
    assert led.record_instance(received("1.1", "1.1.2"))
    assert led.record_instance(received("1.1", "1.1.3", routed=False))
    assert not led.record_instance(received("1.1", "1.1.1"))  # duplicate: counted
    assert led.instance("1.1.1").duplicate_count == 1
    assert led.due_studies(quiet_period_s=3600, max_wait_s=3600) == []
    [study_id] = led.due_studies(quiet_period_s=0, max_wait_s=3600)
    job = led.create_job(study_id, VERSIONS)
    assert job.state == JobState.RECEIVED and job.kind == "initial"
    assert job.idempotency_key == idempotency_key("1.1", ["1.1.2", "1.1.1"], VERSIONS)
    assert [i.sop_instance_uid for i in led.job_instances(job.id)] == ["1.1.1", "1.1.2"]
    assert led.instance("1.1.3").state == InstanceState.IGNORED
    assert led.create_job(study_id, VERSIONS) is None  # nothing pending any more
    # A late instance makes a follow-up job with only itself.
    led.record_instance(received("1.1", "1.1.4"))
    follow = led.create_job(led.due_studies(0, 3600)[0], VERSIONS)
    assert follow.kind == "follow-up"
    assert [i.sop_instance_uid for i in led.job_instances(follow.id)] == ["1.1.4"]


def test_job_transitions_are_timestamped_and_guarded(any_ledger: Ledger) -> None:
    led = any_ledger
    led.record_instance(received("2.1", "2.1.1"))
    job = led.create_job(led.due_studies(0, 3600)[0], VERSIONS)
    led.record_enqueue_error(job.id, "broker down")
    assert led.job(job.id).state == JobState.RECEIVED
    assert led.mark_queued(job.id, "task-1")
    assert not led.mark_queued(job.id, "task-1")  # only from received
    assert led.transition(job.id, JobState.RUNNING, from_states={JobState.QUEUED})
    led.record_check(
        led.job_instances(job.id)[0].id, InstanceCheck(rows=10, columns=12, bits_stored=12, photometric="MONOCHROME2")
    )
    assert led.transition(job.id, JobState.DONE)
    assert not led.transition(job.id, JobState.RUNNING)  # terminal
    states = [(t.from_state, t.to_state) for t in led.transitions(job.id)]
    assert states == [(None, "received"), ("received", "queued"), ("queued", "running"), ("running", "done")]
    times = [t.at for t in led.transitions(job.id)]
    assert times == sorted(times)
    row = led.instance("2.1.1")
    assert (row.rows, row.columns, row.bits_stored, row.photometric) == (10, 12, 12, "MONOCHROME2")
    summary = led.summary()
    assert summary.jobs == {"done": 1} and summary.last_errors[0][2] == "broker down"
    with pytest.raises(LedgerError):
        led.job(9999)


def test_concurrent_writers_one_study(any_ledger: Ledger) -> None:
    """Eight threads, like eight associations, writing the same new study at once."""
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(10):
                any_ledger.record_instance(received("3.1", f"3.1.{n}.{i}"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert any_ledger.study("3.1").instance_count == 80


def test_migrations_match_the_models(any_ledger: Ledger) -> None:
    """A column added to ribnode.ledger.schema without an Alembic revision fails here
    (add one with ``python -m ribnode.ledger.migrations revision "what changed"``)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from ribnode.ledger.schema import Base

    with any_ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_concurrent_first_migrations(tmp_path: Path, request) -> None:
    """Several processes opening a fresh ledger at once (serve and workers starting together)."""
    import subprocess
    import sys

    urls = [f"sqlite:///{tmp_path / 'ledger.sqlite'}", request.getfixturevalue("postgres_fresh_url")]
    for url in urls:
        code = f"from ribnode.ledger.store import Ledger; Ledger({url!r})"
        procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 4, errors
        assert Ledger(url).summary().studies == 0


def test_lease_claim_renew_and_reclaim(any_ledger: Ledger) -> None:
    """A running job is held under a lease: renewed by its worker, reclaimed (back to
    "received", audited) once it expires or when the same node name restarted."""
    import time
    from datetime import timedelta

    from ribnode.ledger.store import utcnow

    led = any_ledger
    led.record_instance(received("4.1", "4.1.1"))
    job = led.create_job(led.due_studies(0, 3600)[0], VERSIONS)
    assert led.mark_queued(job.id)
    assert led.claim(job.id, "w1", 1.0, {JobState.QUEUED})
    assert not led.claim(job.id, "w2", 1.0, {JobState.QUEUED})  # already running
    assert not led.claim(job.id, "w2", 1.0, {JobState.RUNNING})  # held by w1's valid lease
    assert led.job_row(job.id).worker == "w1"
    assert led.reclaim_running(1.0) == []  # lease still valid
    time.sleep(0.6)
    assert led.renew_lease(job.id, "w1", 1.0) and not led.renew_lease(job.id, "w2", 1.0)
    time.sleep(0.6)
    assert led.reclaim_running(1.0) == []  # renewed 0.6 s ago: still held
    time.sleep(0.5)
    [back] = led.reclaim_running(1.0)
    assert back.id == job.id and led.job(job.id).state == JobState.RECEIVED
    assert not led.renew_lease(job.id, "w1", 1.0)  # the dead worker's lease is gone
    assert "worker w1 lost the job" in led.job_row(job.id).last_error
    [audit] = [e for e in led.audit_events(AuditEventName.APPLICATION_ACTIVITY) if e.detail.startswith("job ")]
    assert audit.study_instance_uid == "4.1" and audit.outcome == AuditOutcome.MINOR_FAILURE
    # The same node name restarting reclaims at once what it held before (lease not expired),
    # but not a job it claimed after it started.
    assert led.mark_queued(job.id) and led.claim(job.id, "w1", 60, {JobState.QUEUED})
    started = utcnow() + timedelta(seconds=1)
    assert led.reclaim_running(60) == [] and led.reclaim_running(60, "w2", started) == []
    assert [j.id for j in led.reclaim_running(60, "w1", started)] == [job.id]
    assert led.mark_queued(job.id) and led.claim(job.id, "w1", 60, {JobState.QUEUED})
    assert led.reclaim_running(60, "w1", utcnow() - timedelta(seconds=1)) == []
    assert led.claim(job.id, "w1", 60, {JobState.RUNNING})  # w1's own redelivery (pool child died)
    assert led.job_row(job.id).attempts == 4
    states = [t.to_state for t in led.transitions(job.id)]
    assert states == [
        "received",
        "queued",
        "running",
        "received",
        "queued",
        "running",
        "received",
        "queued",
        "running",
        "running",
    ]


def test_a_deferred_retry_whose_worker_died_is_reclaimed(any_ledger: Ledger) -> None:
    """A failed job waits for its retry in one worker's memory: if that worker dies, the
    retry's lease ends and the sweep sends the job again; a retry still due is left alone."""
    import time

    from ribnode.ledger.store import utcnow

    led = any_ledger
    led.record_instance(received("5.1", "5.1.1"))
    job = led.create_job(led.due_studies(0, 3600)[0], VERSIONS)
    assert led.mark_queued(job.id) and led.claim(job.id, "w1", 60, {JobState.QUEUED})
    assert led.defer_retry(job.id, "w1", 0.3, 0.3, "OSError: disk full")
    assert not led.defer_retry(job.id, "w1", 0.3, 0.3, "twice")  # only a running job defers
    row = led.job_row(job.id)
    assert row.state == JobState.QUEUED and row.worker == "w1" and row.lease_until is not None
    assert led.reclaim_running(0.3) == []  # the retry is not even due yet
    assert led.reclaim_running(0.3, "w2", utcnow()) == []  # another node name restarting
    time.sleep(0.7)
    [back] = led.reclaim_running(0.3)
    assert back.id == job.id and led.job(job.id).state == JobState.RECEIVED
    assert "worker w1 lost the job's retry" in led.job_row(job.id).last_error
    # A retry that a worker takes in time is never reclaimed; nor is a queued job without a
    # retry lease (a backlog on the broker).
    assert led.mark_queued(job.id)
    time.sleep(0.4)
    assert led.reclaim_running(0.3) == []
    assert led.claim(job.id, "w2", 60, {JobState.QUEUED})
    assert led.defer_retry(job.id, "w2", 0.1, 0.1, "again")
    assert led.claim(job.id, "w2", 60, {JobState.QUEUED})  # the retry ran
    time.sleep(0.4)
    assert led.reclaim_running(60) == [] and led.job(job.id).state == JobState.RUNNING
    # The same node name restarting reclaims at once the retry its predecessor held.
    assert led.defer_retry(job.id, "w2", 30, 60, "once more")
    assert [j.id for j in led.reclaim_running(60, "w2", utcnow())] == [job.id]
