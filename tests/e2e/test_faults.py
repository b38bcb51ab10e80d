"""Faults across the whole loop, with a real Orthanc as the PACS:

- the PACS is down when the results are ready, then comes back: delivered, once;
- the worker process running the job is SIGKILLed mid-job: the job runs again (acks_late +
  reject_on_worker_lost) and the PACS holds exactly one copy of each output;
- the whole worker (main process and pool) is SIGKILLed mid-job: after a restart the job's
  lease is reclaimed and the job runs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ribnode.demo.orthanc import OrthancServer, free_port
from ribnode.ledger.deliveries import DeliveryLedger, DeliveryState
from ribnode.ledger.store import AuditEventName, JobState, Ledger
from ribnode.phantom import generate_chest, write_dicom_study
from tests.e2e.helpers import (
    e2e_settings,
    job_of_study,
    require_weights,
    running_node,
    stow_destination,
    wait_for_series,
)
from tests.node.helpers import c_store, running_listener, wait_for


def _study(tmp: Path, seed: int, size: tuple[int, int] = (640, 560)) -> Path:
    [path] = write_dicom_study(generate_chest(seed, size), tmp / f"study-{seed}", seed)
    return path


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_pacs_down_during_export_then_back_delivers_once(tmp_path: Path) -> None:
    require_weights()
    pacs = OrthancServer(tmp_path / "orthanc", http_port=free_port(), dicom_port=free_port())
    settings = e2e_settings(
        tmp_path / "node", **{"export.destinations": [stow_destination(pacs)], "export.max_attempts": 40}
    )
    source = _study(tmp_path, 21)
    study_uid = _study_uid(source)
    with running_node(settings) as node:
        assert c_store(node.listener.port, [source]) == [0]
        deliveries = DeliveryLedger(node.ledger)
        job = wait_for(
            lambda: job_of_study(node.ledger, study_uid, JobState.EXPORTING), 120, "the job to wait in exporting"
        )
        wait_for(
            lambda: any(d.attempts >= 2 for d in deliveries.deliveries(job.id)), 60, "two failed delivery attempts"
        )
        with pacs:  # the PACS comes back
            wait_for(lambda: job_of_study(node.ledger, study_uid), 120, "the job to be done")
            series = wait_for_series(pacs, study_uid, 3)
            assert len(pacs.instances()) == 3  # SC, SEG, SR: each once
            assert sorted(len(s["Instances"]) for s in series) == [1, 1, 1]
    [delivery] = deliveries.deliveries(job.id)
    assert delivery.state == DeliveryState.DELIVERED and delivery.attempts >= 3
    transferred = [
        e
        for e in node.ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED)
        if e.outcome == 0 and e.destination_aet == "pacs"
    ]  # not the receipt
    assert len(transferred) == 1 and transferred[0].instance_count == 3


def _pool_children(pid: int) -> list[int]:
    """Child processes of the Celery main process (its prefork pool)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def test_worker_killed_mid_job_runs_again_and_pacs_holds_one_copy(tmp_path: Path) -> None:
    require_weights()
    with OrthancServer(tmp_path / "orthanc") as pacs:
        # A slow job through a real setting: many sampling steps (the re-run is as slow).
        settings = e2e_settings(
            tmp_path / "node", **{"export.destinations": [stow_destination(pacs)], "models.suppression_steps": 24}
        )
        config = tmp_path / "ribnode.yaml"
        config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
        Ledger(settings.ledger.url).dispose()  # created and migrated before the worker starts
        env = {k: v for k, v in os.environ.items() if not k.startswith("RIBNODE_")}
        log_path = tmp_path / "worker.log"
        with open(log_path, "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "ribnode", "--config", str(config), "worker", "-c", "1"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            _kill_mid_job_and_check(settings, pacs, worker, log_path, tmp_path)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)


def _kill_mid_job_and_check(
    settings,
    pacs: OrthancServer,
    worker: subprocess.Popen[bytes],  # type: ignore[no-untyped-def]
    log_path: Path,
    tmp: Path,
) -> None:
    import functools

    from ribnode.node.completion import StudyCompletion
    from ribnode.workers.app import make_celery
    from ribnode.workers.queue import enqueue_job

    ledger = Ledger(settings.ledger.url)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, make_celery(settings)))
    source = _study(tmp, 22)
    study_uid = _study_uid(source)
    with running_listener(settings, ledger) as listener, completion:
        assert c_store(listener.port, [source]) == [0]
        wait_for(lambda: b"models loaded" in log_path.read_bytes(), 120, "the worker to load the models")
        job = wait_for(lambda: job_of_study(ledger, study_uid, JobState.RUNNING), 30, "the job to run")
        time.sleep(1.0)  # inside the sampling loop (24 steps take several seconds)
        assert ledger.job(job.id).state == JobState.RUNNING, "the job finished before the kill"
        [child] = _pool_children(worker.pid)
        os.kill(child, signal.SIGKILL)  # the process running the job dies (OOM kill, crash...)
        done = wait_for(lambda: job_of_study(ledger, study_uid), 240, "the job to be done after the kill")
        assert worker.poll() is None, "the worker itself must survive and restart its pool process"
    states = [t.to_state for t in ledger.transitions(done.id)]
    assert states.count("running") == 2, states
    assert states[-2:] == ["exporting", "done"]
    assert ledger.job_row(done.id).attempts == 2
    assert b"WorkerLostError" in log_path.read_bytes() or b"SIGKILL" in log_path.read_bytes()
    series = wait_for_series(pacs, study_uid, 3)
    assert len(pacs.instances()) == 3 and sorted(len(s["Instances"]) for s in series) == [1, 1, 1]
    ledger.dispose()


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_whole_worker_killed_mid_job_runs_again_after_restart(tmp_path: Path, broker: str, request) -> None:
    """The killed worker's task message is gone (filesystem) or held unacknowledged until the
    Redis visibility timeout: the restarted worker reclaims the job's lease and sends it again."""
    require_weights()
    url = "filesystem://" if broker == "filesystem" else request.getfixturevalue("redis_url")
    # A short lease (a real setting) so that the expiry path is exercised quickly too.
    settings = e2e_settings(
        tmp_path / "node", **{"models.suppression_steps": 24, "broker.job_lease_s": 4.0, "broker.url": url}
    )
    config = tmp_path / "ribnode.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    ledger = Ledger(settings.ledger.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIBNODE_")}

    def start(name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "ribnode", "--config", str(config), "worker"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    import functools

    from ribnode.node.completion import StudyCompletion
    from ribnode.workers.app import make_celery
    from ribnode.workers.queue import enqueue_job

    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, make_celery(settings)))
    source = _study(tmp_path, 23)
    study_uid = _study_uid(source)
    first = start("worker-1")
    second = None
    try:
        with running_listener(settings, ledger) as listener, completion:
            assert c_store(listener.port, [source]) == [0]
            wait_for(lambda: b"models loaded" in (tmp_path / "worker-1.log").read_bytes(), 120, "models")
            job = wait_for(lambda: job_of_study(ledger, study_uid, JobState.RUNNING), 30, "the job to run")
            os.killpg(first.pid, signal.SIGKILL)  # the host or container dies
            first.wait(timeout=10)
            second = start("worker-2")
            done = wait_for(lambda: job_of_study(ledger, study_uid), 180, "the job to be done after the restart")
        states = [t.to_state for t in ledger.transitions(done.id)]
        assert states[:4] == ["received", "queued", "running", "received"], states
        assert states[4:6] == ["queued", "running"] and states[-1] == "done", states
        outbox = [p for p in (tmp_path / "node" / "outbox").rglob("*") if p.is_file()]
        assert len(outbox) == 3, outbox  # SC, SEG, SR: each once although the job ran twice
        assert ledger.job_row(job.id).attempts == 2
        recovered = [
            e
            for e in ledger.audit_events(AuditEventName.APPLICATION_ACTIVITY)
            if e.detail and e.detail.startswith(f"job {job.id}: worker ")
        ]
        assert len(recovered) == 1 and recovered[0].study_instance_uid == study_uid
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.terminate()  # the main process: a warm shutdown stops its pool itself
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        ledger.dispose()


def test_a_job_over_its_time_limit_is_stopped_retried_then_dead(tmp_path: Path) -> None:
    """A stuck job (here: far too many sampling steps, a real setting) is stopped by the task
    time limit, retried with backoff, then "dead" with the reason; the worker stays up and a
    warm shutdown (SIGTERM) afterwards is prompt."""
    require_weights()
    settings = e2e_settings(
        tmp_path / "node",
        **{
            "models.suppression_steps": 1000,
            "broker.task_time_limit_s": 4.0,
            "broker.max_retries": 1,
            "broker.retry_backoff_s": 0.2,
            "broker.retry_backoff_max_s": 0.5,
        },
    )
    config = tmp_path / "ribnode.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    ledger = Ledger(settings.ledger.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIBNODE_")}
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "ribnode", "--config", str(config), "worker"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    import functools

    from ribnode.node.completion import StudyCompletion
    from ribnode.workers.app import make_celery
    from ribnode.workers.queue import enqueue_job

    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, make_celery(settings)))
    source = _study(tmp_path, 24)
    study_uid = _study_uid(source)
    try:
        with running_listener(settings, ledger) as listener, completion:
            assert c_store(listener.port, [source]) == [0]
            dead = wait_for(lambda: job_of_study(ledger, study_uid, JobState.DEAD), 180, "the job to be dead")
        row = ledger.job_row(dead.id)
        assert row.attempts == 2 and "SoftTimeLimitExceeded" in row.last_error, row.last_error
        states = [t.to_state for t in ledger.transitions(dead.id)]
        assert states == ["received", "queued", "running", "queued", "running", "dead"], states
        assert worker.poll() is None, "the worker must stay up"
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
        assert time.monotonic() - started < 30
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(timeout=10)
        ledger.dispose()
