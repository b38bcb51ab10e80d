"""The Celery task through real brokers: the embedded filesystem transport and Redis, with a
real worker (in-process, solo pool); retries with backoff, then "dead"."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import pytest

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.workers.app import make_celery
from ribnode.workers.queue import enqueue_job
from ribnode.workers.tasks import retry_delay
from tests.node.helpers import c_store, dx_dataset, make_settings, running_listener, wait_for
from tests.node.helpers import celery_worker as worker
from tests.peers.fixtures import free_port

VERSIONS = {"segmentation": "test", "suppression": "test"}


@pytest.fixture(params=["filesystem", "redis"])
def broker_settings(request, tmp_path: Path) -> Settings:
    url = "filesystem://" if request.param == "filesystem" else request.getfixturevalue("redis_url")
    return make_settings(tmp_path, free_port(), **{"broker.url": url})


def test_job_done_through_broker_and_worker(broker_settings: Settings) -> None:
    settings = broker_settings
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app), versions=VERSIONS)
    with running_listener(settings, ledger) as lst, completion, worker(app, settings):
        ds = dx_dataset(rows=96, columns=80)
        assert c_store(lst.port, [ds]) == [0]
        job_id = wait_for(lambda: [j.id for j in ledger.jobs_in_state(JobState.DONE)], 60, "job done")[0]
    assert ledger.instance(ds.SOPInstanceUID).rows == 96
    assert [t.to_state for t in ledger.transitions(job_id)] == ["received", "queued", "running", "done"]


def test_retries_with_backoff_then_dead(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        free_port(),
        **{"broker.max_retries": 2, "broker.retry_backoff_s": 0.2, "broker.retry_backoff_max_s": 1.0},
    )
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app), versions=VERSIONS)
    with running_listener(settings, ledger) as lst:
        ds = dx_dataset()
        assert c_store(lst.port, [ds]) == [0]
        time.sleep(settings.spool.quiet_period_s + 0.05)
        [job] = completion.tick()
        lst.context.spool.path(ledger.instance(ds.SOPInstanceUID).path).unlink()  # spool lost
    with worker(app, settings):
        wait_for(lambda: ledger.job(job.id).state == JobState.DEAD, 60, "job dead")
    row = ledger.job_row(job.id)
    assert row.attempts == 3 and row.last_error.startswith("retries exhausted: FileNotFoundError")
    states = [t.to_state for t in ledger.transitions(job.id)]
    assert states == ["received", "queued", "running", "queued", "running", "queued", "running", "dead"]


def test_retry_delay_grows_exponentially_with_jitter(node_settings: Settings) -> None:
    broker = node_settings.broker
    delays = [retry_delay(n, broker) for n in range(12)]
    assert all(
        broker.retry_backoff_s * 2**n * 0.5 <= d <= broker.retry_backoff_s * 2**n for n, d in enumerate(delays[:5])
    )
    assert max(delays) <= broker.retry_backoff_max_s


def test_celery_reliability_settings(node_settings: Settings) -> None:
    conf = make_celery(node_settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_ignore_result
    assert conf.task_routes["ribnode.process_study"]["queue"] == "ribnode.gpu"


def test_lazy_app_for_celery_cli_reads_the_settings(tmp_path: Path) -> None:
    """``ribnode.workers.app:app`` (what ``celery -A`` loads) is built from load_settings()."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RIBNODE_BROKER__URL": "redis://127.0.0.1:6399/3", "RIBNODE_BROKER__GPU_QUEUE": "site.gpu"}
    env.pop("RIBNODE_CONFIG", None)
    code = (
        "from ribnode.workers.app import app; "
        "print(app.conf.broker_url, app.conf.task_routes['ribnode.process_study']['queue'])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["redis://127.0.0.1:6399/3", "site.gpu"]
