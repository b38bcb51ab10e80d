"""Every job reaches a final state (issue 29, failures 2, 3 and 5): the attempt count is the
ledger's and survives re-sends, and a job whose broker message was lost is published again."""

from __future__ import annotations

import functools
import time
from pathlib import Path

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobRef, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.workers.app import make_celery
from ribnode.workers.jobs import CLAIMABLE
from ribnode.workers.queue import enqueue_job
from tests.node.helpers import (
    RedisProcess,
    c_store,
    celery_worker,
    dx_dataset,
    make_settings,
    running_listener,
    wait_for,
)
from tests.peers.fixtures import free_port

VERSIONS = {"segmentation": "test", "suppression": "test"}


def _job(settings: Settings, ledger: Ledger, completion: StudyCompletion) -> tuple[JobRef, str]:
    with running_listener(settings, ledger) as lst:
        ds = dx_dataset()
        assert c_store(lst.port, [ds]) == [0]
    time.sleep(settings.spool.quiet_period_s + 0.05)
    [job] = completion.tick()
    return job, ds.SOPInstanceUID


def _taken_and_lost(ledger: Ledger, job_id: int, times: int) -> None:
    """As if ``times`` worker processes each took the job and were killed mid-job (OOM)."""
    for i in range(times):
        assert ledger.claim(job_id, f"killed-{i}", 0.01, CLAIMABLE)
        time.sleep(0.02)


def test_a_job_whose_worker_keeps_dying_fails_after_max_deliveries(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, free_port(), **{"broker.url": redis_url, "broker.max_retries": 2})
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, lambda j: "never-published", versions=VERSIONS)
    job, _ = _job(settings, ledger, completion)
    _taken_and_lost(ledger, job.id, 3)  # max_retries + 1 deliveries, none finished
    with celery_worker(app, settings):
        enqueue_job(app, ledger.job(job.id))  # a fresh message: its own retry count is 0
        wait_for(lambda: ledger.job(job.id).state == JobState.FAILED, 60, "job failed")
    row = ledger.job_row(job.id)
    assert row.attempts == 3 and "could not be decoded safely" in row.last_error


def test_retry_count_survives_a_resend(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(
        tmp_path,
        free_port(),
        **{
            "broker.url": redis_url,
            "broker.max_retries": 2,
            "broker.retry_backoff_s": 0.1,
            "broker.retry_backoff_max_s": 0.2,
        },
    )
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, lambda j: "never-published", versions=VERSIONS)
    job, sop_uid = _job(settings, ledger, completion)
    Path(settings.spool.directory, ledger.instance(sop_uid).path).unlink()  # a transient error
    _taken_and_lost(ledger, job.id, 2)
    with celery_worker(app, settings):
        enqueue_job(app, ledger.job(job.id))  # re-sent: the message's retries start at 0
        wait_for(lambda: ledger.job(job.id).state == JobState.DEAD, 60, "job dead")
    row = ledger.job_row(job.id)
    assert row.attempts == 3 and row.last_error.startswith("retries exhausted: FileNotFoundError")


def test_job_lost_with_a_redis_restart_is_published_again(tmp_path: Path) -> None:
    redis_server = RedisProcess(free_port(), tmp_path / "redis").start()
    settings = make_settings(tmp_path, free_port(), **{"broker.url": redis_server.url, "broker.queued_timeout_s": 1.0})
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app), versions=VERSIONS)
    try:
        job, _ = _job(settings, ledger, completion)
        assert ledger.job(job.id).state == JobState.QUEUED
        redis_server.stop()  # no persistence: the message is gone
        redis_server.start()
        time.sleep(1.1)
        completion.tick()
        assert ledger.job(job.id).state == JobState.QUEUED  # published again
        with celery_worker(app, settings):
            wait_for(lambda: ledger.job(job.id).state == JobState.DONE, 60, "job done")
        states = [t.to_state for t in ledger.transitions(job.id)]
        assert states == ["received", "queued", "received", "queued", "running", "done"]
        assert "no worker took it" in (ledger.transitions(job.id)[2].error or "")
    finally:
        redis_server.stop()


def test_job_of_a_publisher_killed_mid_publish_is_published_again(tmp_path: Path, redis_url: str) -> None:
    settings = make_settings(tmp_path, free_port(), **{"broker.url": redis_url, "broker.queued_timeout_s": 1.0})
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app), versions=VERSIONS)
    with running_listener(settings, ledger) as lst:
        assert c_store(lst.port, [dx_dataset()]) == [0]
    time.sleep(settings.spool.quiet_period_s + 0.05)
    [study_id] = ledger.due_studies(settings.spool.quiet_period_s, settings.spool.max_wait_s)
    job = ledger.create_job(study_id, VERSIONS)
    assert job is not None and ledger.mark_queued(job.id)  # committed; the process died here
    with celery_worker(app, settings):
        time.sleep(1.1)
        completion.tick()
        wait_for(lambda: ledger.job(job.id).state == JobState.DONE, 60, "job done")
    # a duplicate message (the first publish did arrive after all) finds the job done
    enqueue_job(app, ledger.job(job.id))
    with celery_worker(app, settings):
        time.sleep(1.0)
    assert ledger.job(job.id).state == JobState.DONE and ledger.job_row(job.id).attempts == 1
