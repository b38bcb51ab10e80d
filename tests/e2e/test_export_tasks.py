"""The export task through a real broker and worker, and ``ribnode resend`` on the command line."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from celery import Celery
from celery.contrib.testing.worker import start_worker
from pydicom.uid import generate_uid

from ribnode.cli import main
from ribnode.config.settings import Settings
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.export import export_job, stage_outputs
from ribnode.workers.app import make_celery
from ribnode.workers.pipeline_step import deliver_outputs
from ribnode.workers.sweeps import requeue_due_exports
from tests.node.export_helpers import cstore, export_settings, make_output_set, make_running_job
from tests.peers.fixtures import free_port


@contextmanager
def export_worker(app: Celery, settings: Settings) -> Iterator[None]:
    """A real Celery worker on the CPU queue, in this process."""
    import ribnode.workers.tasks  # noqa: F401  (registers the task)

    with start_worker(
        app, pool="solo", perform_ping_check=False, shutdown_timeout=20, queues=[settings.broker.cpu_queue]
    ):
        yield


def _wait_state(ledger: Ledger, job_id: int, state: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while ledger.job(job_id).state != state:
        assert time.monotonic() < deadline, f"job {job_id} is {ledger.job(job_id).state}, not {state}"
        time.sleep(0.1)


def _job(settings: Settings, ledger: Ledger) -> tuple[int, str]:
    study, source = generate_uid(), generate_uid()
    job_id = make_running_job(ledger, study, source)
    stage_outputs(job_id, [make_output_set(study, source)], settings, ledger)
    return job_id, study


def test_export_task_waits_for_the_pacs(tmp_path: Path, orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(start=False)
    settings = export_settings(
        tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [cstore("pacs", pacs.dicom_port)], max_attempts=2000
    )
    # 2000 attempts at <= 0.2 s each: minutes of retrying, far longer than Orthanc takes to
    # start on a loaded machine (100 attempts, about 10-20 s, once ran out during a slow start).
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    study, source = generate_uid(), generate_uid()
    job_id = make_running_job(ledger, study, source)
    report = deliver_outputs(app, job_id, [make_output_set(study, source)], settings, ledger)
    assert report.state == JobState.EXPORTING and report.pending == ["pacs"]
    with export_worker(app, settings):
        time.sleep(1.0)  # several attempts against the stopped PACS
        assert ledger.job(job_id).state == JobState.EXPORTING
        threading.Thread(target=pacs.start).start()
        _wait_state(ledger, job_id, JobState.DONE, timeout_s=180.0)
    assert len(pacs.series_of_study(study)) == 3
    # Nothing is overdue once the job is done.
    assert requeue_due_exports(app, settings, ledger, overdue_s=0) == []
    ledger.dispose()


def test_resend_command(tmp_path: Path, orthanc_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    http_port, dicom_port = free_port(), free_port()
    settings = export_settings(
        tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [cstore("pacs", dicom_port)], max_attempts=1
    )
    config = tmp_path / "ribnode.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    # ``--config`` exports RIBNODE_CONFIG; monkeypatch restores the environment afterwards.
    monkeypatch.setenv("RIBNODE_CONFIG", str(config))
    ledger = Ledger(settings.ledger.url)
    job_id, study = _job(settings, ledger)
    assert export_job(job_id, settings, ledger).state == JobState.DEAD

    assert main(["--config", str(config), "resend", "999"]) == 2
    pacs = orthanc_factory(http_port=http_port, dicom_port=dicom_port)
    assert main(["--config", str(config), "resend", str(job_id), "--here"]) == 0
    assert ledger.job(job_id).state == JobState.DONE
    assert len(pacs.series_of_study(study)) == 3

    # Without --here the export is queued; a worker delivers it again: still one copy each.
    assert main(["--config", str(config), "resend", str(job_id)]) == 0
    assert ledger.job(job_id).state == JobState.EXPORTING
    with export_worker(make_celery(settings), settings):
        _wait_state(ledger, job_id, JobState.DONE)
    assert len(pacs.instances()) == 3
    ledger.dispose()


def test_deliver_outputs_fast_path_needs_no_worker(tmp_path: Path, orthanc) -> None:  # type: ignore[no-untyped-def]
    settings = export_settings(
        tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [cstore("pacs", orthanc.dicom_port)]
    )
    ledger = Ledger(settings.ledger.url)
    study, source = generate_uid(), generate_uid()
    job_id = make_running_job(ledger, study, source)
    report = deliver_outputs(make_celery(settings), job_id, [make_output_set(study, source)], settings, ledger)
    assert report.state == JobState.DONE and report.delivered == ["pacs"]
    assert len(orthanc.series_of_study(study)) == 3
    ledger.dispose()


def test_worker_killed_mid_export(tmp_path: Path, orthanc_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A `ribnode worker` process is SIGKILLed while it retries against a stopped PACS (the kill
    lands right after it claimed its third attempt, so its claim and its scheduled retry die
    with it). The next worker's start-up sweep schedules the export for when the dead worker's
    claim expires, and delivers it: the PACS holds exactly one copy of each object."""
    import os
    import signal
    import subprocess
    import sys

    pacs = orthanc_factory(start=False)
    # timeout 1 s: a send killed midway holds its claim (lease) for 5 s at most.
    settings = export_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [cstore("pacs", pacs.dicom_port, timeout_s=1)],
        max_attempts=1000,
    )
    config = tmp_path / "ribnode.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    monkeypatch.setenv("RIBNODE_CONFIG", str(config))
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    study, source = generate_uid(), generate_uid()
    job_id = make_running_job(ledger, study, source)
    report = deliver_outputs(app, job_id, [make_output_set(study, source)], settings, ledger)
    assert report.state == JobState.EXPORTING

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ribnode",
            "--config",
            str(config),
            "worker",
            "-Q",
            settings.broker.cpu_queue,
            "--pool",
            "solo",
            "--hostname",
            f"kill-{os.getpid()}@%h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while DeliveryLedger(ledger).deliveries(job_id)[0].attempts < 3:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        log.close()
    attempts = DeliveryLedger(ledger).deliveries(job_id)[0].attempts
    time.sleep(1.0)
    assert DeliveryLedger(ledger).deliveries(job_id)[0].attempts == attempts  # nobody left
    assert ledger.job(job_id).state == JobState.EXPORTING

    pacs.start()
    with export_worker(make_celery(settings), settings):
        _wait_state(ledger, job_id, JobState.DONE)
    assert len(pacs.instances()) == 3
    assert len(pacs.series_of_study(study)) == 3
    ledger.dispose()


def test_worker_start_sweep_recovers_a_lost_export_task(tmp_path: Path, orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(start=False)
    settings = export_settings(
        tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [cstore("pacs", pacs.dicom_port)], max_attempts=10
    )
    ledger = Ledger(settings.ledger.url)
    job_id, study = _job(settings, ledger)
    assert export_job(job_id, settings, ledger).state == JobState.EXPORTING  # no task queued
    pacs.start()
    time.sleep(0.3)  # the retry is due
    with export_worker(make_celery(settings), settings):
        _wait_state(ledger, job_id, JobState.DONE, timeout_s=30)
    assert len(pacs.series_of_study(study)) == 3
    ledger.dispose()
