"""End to end over DICOMweb: studies come in by STOW-RS instead of C-STORE.

* ``ribnode serve --http-port --no-dimse`` and ``ribnode worker`` as their own processes:
  dicomweb-client stores the RG1 files of pydicom-data, the worker runs the shipped models and
  takes the job to done, and /metrics and /readyz of the serve process show it;
* a real Orthanc, configured with ribnode as a DICOMweb server, sends a study with its
  ``/dicom-web/servers/{name}/stow`` call (HTTP basic credentials); the job ends done.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
import requests
import yaml
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families

from ribnode.config.settings import load_settings
from ribnode.demo.orthanc import OrthancServer
from ribnode.ledger.store import AuditEventName, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.node.http import HttpService
from ribnode.node.http.app import make_app
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import Spool
from ribnode.workers.app import make_celery
from ribnode.workers.queue import enqueue_job
from tests.e2e.helpers import job_of_study
from tests.node.helpers import celery_worker, make_settings, wait_for
from tests.peers.fixtures import free_port

RIBNODE = [sys.executable, "-m", "ribnode"]
TOKEN = "token-of-the-e2e-vna"


def _status(config: Path) -> dict:
    out = subprocess.run(
        [*RIBNODE, "--config", str(config), "status", "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url + "/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_dicomweb_client_stow_to_a_serve_process(tmp_path: Path, rg1_files: dict[str, Path]) -> None:
    """``ribnode serve --no-dimse --http-port`` and ``ribnode worker`` as their own processes on
    one settings file; the worker runs the shipped models and takes the job to done."""
    http_port = free_port()
    config = tmp_path / "ribnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http": {"senders": [{"name": "E2E-VNA", "bearer_token": TOKEN}], "min_spool_free_bytes": 0},
                "spool": {"directory": str(tmp_path / "spool"), "quiet_period_s": 1.0},
                "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"},
                "broker": {"url": "filesystem://", "folder": str(tmp_path / "broker")},
                "export": {
                    "destinations": [{"name": "local", "kind": "folder", "path": str(tmp_path / "outbox")}],
                    "staging_dir": str(tmp_path / "outputs"),
                },
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RIBNODE_CONFIG", None)
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [*RIBNODE, "--config", str(config), "serve", "--no-dimse", "--http-port", str(http_port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    settings = load_settings(overrides=_flat(yaml.safe_load(config.read_text())))
    ledger = Ledger(settings.ledger.url)
    url = f"http://127.0.0.1:{http_port}"
    datasets = [pydicom.dcmread(p) for p in rg1_files.values()]  # UNCI and J2KI share a SOP UID
    study = str(datasets[0].StudyInstanceUID)
    work_log = (tmp_path / "worker.log").open("w")
    work = subprocess.Popen(
        [*RIBNODE, "--config", str(config), "worker", "--pool", "solo"],
        stdout=work_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for(lambda: _get_ok(url + "/healthz"), 60, "the HTTP service of ribnode serve")
        client = DICOMwebClient(f"{url}/dicom-web", headers={"Authorization": f"Bearer {TOKEN}"})
        answer = client.store_instances(datasets, study_instance_uid=study)
        assert len(answer.ReferencedSOPSequence) == 4 and "FailedSOPSequence" not in answer
        wait_for(lambda: job_of_study(ledger, study, JobState.DONE), 300, "the job to be done")
        summary = ledger.summary()
        assert summary.instances == {"dispatched": 3} and summary.duplicates == 1
        samples = _metrics(url)
        assert samples[("ribnode_instances_received_total", (("outcome", "stored"), ("protocol", "stow-rs")))] == 3
        assert samples[("ribnode_jobs", (("state", "done"),))] == 1
        assert samples[("ribnode_job_stage_duration_seconds_count", (("stage", "queued_to_running"),))] == 1
        ready = requests.get(url + "/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
    finally:
        for proc in (serve, work):
            proc.send_signal(signal.SIGTERM)
        for proc in (serve, work):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        work_log.close()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert any(p.name.endswith(".dcm") for p in (tmp_path / "outbox").rglob("*")), "nothing delivered"
    rows = [ledger.instance(str(ds.SOPInstanceUID)) for ds in datasets]
    assert {r.calling_aet for r in rows if r is not None} == {"E2E-VNA"}
    ledger.dispose()


def _flat(tree: dict, prefix: str = "") -> dict:
    """A nested settings mapping as the dotted overrides of ``load_settings``."""
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("rules",):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def test_orthanc_stows_a_study_to_ribnode(
    tmp_path: Path, rg1_files: dict[str, Path], orthanc_factory: Callable[..., OrthancServer]
) -> None:
    settings = make_settings(
        tmp_path,
        free_port(),
        **{
            "http.port": free_port(),
            "http.senders": [{"name": "ORTHANC-WEB", "username": "orthanc", "password": "pw-of-orthanc"}],
            "http.min_spool_free_bytes": 0,
        },
    )
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app))
    http = HttpService(
        make_app(settings, ledger, Spool(settings.spool.directory), RoutingRule(settings.routing.rules), lambda: None),
        settings.http,
    )
    with http, completion, celery_worker(app, settings):
        pacs = orthanc_factory(
            extra_config={
                "DicomWeb": {
                    "Enable": True,
                    "Root": "/dicom-web/",
                    "Servers": {
                        "ribnode": {
                            "Url": f"http://127.0.0.1:{http.port}/dicom-web/",
                            "Username": "orthanc",
                            "Password": "pw-of-orthanc",
                        }
                    },
                }
            }
        )
        oid = pacs.upload(rg1_files["RG1_UNCR"])
        study_oid = pacs.rest("GET", f"/instances/{oid}/study").json()["ID"]
        answer = pacs.rest("POST", "/dicom-web/servers/ribnode/stow", json={"Resources": [study_oid]})
        assert answer.status_code == 200, answer.text
        source = pydicom.dcmread(rg1_files["RG1_UNCR"], stop_before_pixels=True)
        row = wait_for(lambda: ledger.instance(str(source.SOPInstanceUID)), 30, "the instance in the ledger")
        assert row.calling_aet == "ORTHANC-WEB"
        job = wait_for(lambda: job_of_study(ledger, str(source.StudyInstanceUID), JobState.DONE), 120, "the job done")
        assert job.state == JobState.DONE
    transferred = [
        e for e in ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED) if e.source_aet == "ORTHANC-WEB"
    ]
    assert [(e.instance_count, e.outcome) for e in transferred] == [(1, 0)]
    ledger.dispose()
