"""Study completion: quiet period, maximum wait, follow-up jobs, and the broker down at enqueue
time (a real redis-server stopped and started again)."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import redis
from pydicom.uid import generate_uid

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobRef, JobState, Ledger
from ribnode.models.fingerprint import model_versions
from ribnode.node.completion import StudyCompletion
from ribnode.node.listener import DicomListener
from ribnode.workers.app import make_celery
from ribnode.workers.queue import enqueue_job
from tests.node.helpers import RedisProcess, c_store, dx_dataset, make_settings, running_listener, wait_for
from tests.peers.fixtures import free_port

VERSIONS = {"segmentation": "test", "suppression": "test"}


class Recorder:
    """An enqueue function that records what it was given (the broker is tested below)."""

    def __init__(self) -> None:
        self.jobs: list[JobRef] = []

    def __call__(self, job: JobRef) -> str:
        self.jobs.append(job)
        return f"task-{job.id}"


def test_quiet_period_then_follow_up(node_settings: Settings, ledger: Ledger, listener: DicomListener) -> None:
    node_settings = node_settings.model_copy(
        update={"spool": node_settings.spool.model_copy(update={"quiet_period_s": 1.5})}
    )  # long enough that a loaded machine cannot outrun it
    sent = Recorder()
    completion = StudyCompletion(node_settings, ledger, sent, versions=VERSIONS)
    study = generate_uid()
    assert c_store(listener.port, [dx_dataset(study, seed=1), dx_dataset(study, seed=2)]) == [0, 0]
    assert completion.tick() == []  # quiet period not over yet
    time.sleep(node_settings.spool.quiet_period_s + 0.1)
    [job] = completion.tick()
    assert [j.id for j in sent.jobs] == [job.id]
    assert len(ledger.job_instances(job.id)) == 2
    assert ledger.job(job.id).state == JobState.QUEUED
    assert completion.tick() == []
    # An instance after dispatch: a follow-up job with only the new instance.
    late = dx_dataset(study, seed=3)
    assert c_store(listener.port, [late]) == [0]
    time.sleep(node_settings.spool.quiet_period_s + 0.1)
    [follow] = completion.tick()
    assert follow.kind == "follow-up"
    assert [i.sop_instance_uid for i in ledger.job_instances(follow.id)] == [late.SOPInstanceUID]
    assert ledger.job(job.id).state == JobState.QUEUED  # the first job is untouched


def test_max_wait_dispatches_a_study_that_never_goes_quiet(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port(), **{"spool.quiet_period_s": 60, "spool.max_wait_s": 1.0})
    ledger = Ledger(settings.ledger.url)
    completion = StudyCompletion(settings, ledger, Recorder(), versions=VERSIONS)
    study = generate_uid()
    with running_listener(settings, ledger) as lst:
        start = time.monotonic()
        jobs: list[JobRef] = []
        seed = 0
        while not jobs and time.monotonic() - start < 10:
            seed += 1
            assert c_store(lst.port, [dx_dataset(study, seed=seed)]) == [0]  # keeps arriving
            jobs = completion.tick()
            time.sleep(0.2)
    assert jobs and 1.0 <= time.monotonic() - start < 5


def test_completion_thread_dispatches_in_background(
    node_settings: Settings, ledger: Ledger, listener: DicomListener
) -> None:
    sent = Recorder()
    with StudyCompletion(node_settings, ledger, sent, versions=VERSIONS):
        assert c_store(listener.port, [dx_dataset()]) == [0]
        wait_for(lambda: sent.jobs, 10, "a job to be enqueued")
    assert ledger.summary().jobs == {"queued": 1}


def test_model_versions_change_the_idempotency_key(node_settings: Settings, tmp_path: Path) -> None:
    versions = model_versions(node_settings.models)
    assert set(versions) == {"segmentation", "segmentation_config", "suppression_config", "suppression_steps"}
    assert "absent" not in versions.values()  # the shipped weights and jsons
    weights = tmp_path / "seg.onnx"
    weights.write_bytes(b"weights-v1")
    other = node_settings.models.model_copy(update={"segmentation_weights": weights})
    assert model_versions(other)["segmentation"] != versions["segmentation"]
    assert model_versions(other)["segmentation_config"] == "absent"  # no json beside these weights
    weights.with_suffix(".json").write_text('{"threshold": 0.5}')
    first = model_versions(other)["segmentation_config"]
    weights.with_suffix(".json").write_text('{"threshold": 0.6}')
    assert model_versions(other)["segmentation_config"] != first  # a new json is a new model
    suppression = tmp_path / "rib-suppression.json"
    suppression.write_text('{"default_steps": 1}')
    moved = node_settings.models.model_copy(update={"suppression_weights": suppression})
    assert model_versions(moved)["suppression_config"] != versions["suppression_config"]
    stepped = node_settings.models.model_copy(update={"suppression_steps": 2})
    assert model_versions(stepped)["suppression_steps"] == "2" != versions["suppression_steps"]


def test_broker_down_at_enqueue_then_back(tmp_path: Path) -> None:
    redis_server = RedisProcess(free_port(), tmp_path / "redis").start()
    settings = make_settings(tmp_path, free_port(), **{"broker.url": redis_server.url})
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app), versions=VERSIONS)
    try:
        with running_listener(settings, ledger) as lst:
            redis_server.stop()
            assert c_store(lst.port, [dx_dataset()]) == [0]  # receiving does not need the broker
            time.sleep(settings.spool.quiet_period_s + 0.1)
            started = time.monotonic()
            [job] = completion.tick()
            assert time.monotonic() - started < 10  # a dead broker never blocks for long
            row = ledger.job_row(job.id)
            assert row.state == JobState.RECEIVED and "enqueue failed" in row.last_error
            assert ledger.summary().last_errors[0][0] == job.id
            redis_server.start()
            wait_for(
                lambda: completion.tick() is not None and ledger.job(job.id).state == JobState.QUEUED,
                20,
                "the job to be enqueued once Redis is back",
            )
        queued = redis.Redis.from_url(redis_server.url).llen(settings.broker.gpu_queue)
        assert queued == 1
        assert ledger.job_row(job.id).task_id == job.idempotency_key
    finally:
        redis_server.stop()


def test_completion_wakes_when_the_study_is_due(
    node_settings: Settings, ledger: Ledger, listener: DicomListener
) -> None:
    """With nothing pending the thread sleeps one poll interval; once a study is pending it
    sleeps only until the study's quiet period ends (so latency = quiet period + one pass,
    not + up to a poll interval; benchmarks/completion.py measures it)."""
    settings = node_settings.model_copy(
        update={"spool": node_settings.spool.model_copy(update={"quiet_period_s": 2.0, "completion_poll_s": 5.0})}
    )
    completion = StudyCompletion(settings, ledger, Recorder(), versions=VERSIONS)
    assert completion._next_wait() == 5.0
    assert c_store(listener.port, [dx_dataset()]) == [0]
    stored = time.monotonic()
    wait = completion._next_wait()
    elapsed = time.monotonic() - stored
    assert 2.0 - elapsed - 0.5 <= wait <= 2.0 + 0.01  # until the quiet period ends, not 5 s
    time.sleep(wait)
    assert len(completion.tick()) == 1  # due exactly then
    assert completion._next_wait() == 5.0


def test_dispatch_commits_queued_before_publishing(
    node_settings: Settings, ledger: Ledger, listener: DicomListener
) -> None:
    """The worker may take a task the instant it is published, so the job must already read
    "queued" in the ledger then; a refused publish puts it back to "received" for the retry."""
    seen: list[str] = []
    refuse = [True]

    def enqueue(job: JobRef) -> str:
        other = Ledger(ledger.url, migrate=False)  # what a worker process reads
        seen.append(other.job(job.id).state)
        other.dispose()
        if refuse[0]:
            raise ConnectionError("broker refused")
        return f"task-{job.id}"

    completion = StudyCompletion(node_settings, ledger, enqueue, versions=VERSIONS)
    completion.retry_s = 0.0
    assert c_store(listener.port, [dx_dataset()]) == [0]
    time.sleep(node_settings.spool.quiet_period_s + 0.1)
    [job] = completion.tick()
    row = ledger.job_row(job.id)
    assert row.state == JobState.RECEIVED and "broker refused" in row.last_error and row.task_id is None
    refuse[0] = False
    completion.tick()
    assert seen == ["queued", "queued"]
    row = ledger.job_row(job.id)
    assert row.state == JobState.QUEUED and row.task_id == f"task-{job.id}" and row.enqueue_attempts == 2
    states = [t.to_state for t in ledger.transitions(job.id)]
    assert states == ["received", "queued", "received", "queued"]
