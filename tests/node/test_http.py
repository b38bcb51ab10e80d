"""The node's HTTP service in this process, on a free loopback port, with real clients:
dicomweb-client for STOW-RS, requests and raw sockets for the bad input, prometheus-client's
parser for /metrics. Every bad request must get its status and an audit record, and the
service must answer the next request."""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

from ribnode.config.settings import Settings
from ribnode.ledger.store import AuditEventName, Ledger
from ribnode.node.http import HttpService, HttpServiceError
from ribnode.node.http.app import make_app
from ribnode.node.http.multipart import MultipartError, MultipartParser, PartData, PartEnd, PartStart
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import Spool
from tests.node.helpers import c_store, dx_dataset, make_settings, running_listener
from tests.node.test_tls import pki  # noqa: F401  (pytest fixture)
from tests.peers.fixtures import echoscu, free_port

TOKEN = "s3cret-token-of-the-vna"
BOUNDARY = "ribnode-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
STUDY = "1.2.826.0.1.3680043.10.999.27"


@dataclass
class Http:
    """A running HTTP service and what it writes to."""

    settings: Settings
    ledger: Ledger
    service: HttpService
    broker_ok: list[bool]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.service.port}"

    def client(self, token: str = TOKEN) -> DICOMwebClient:
        return DICOMwebClient(f"{self.url}/dicom-web", headers={"Authorization": f"Bearer {token}"})

    def post(
        self, body: Any, path: str = "/dicom-web/studies", token: str | None = TOKEN, **headers: str
    ) -> requests.Response:
        sent = {"Content-Type": CONTENT_TYPE, **headers}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return requests.post(self.url + path, data=body, headers=sent, timeout=30)

    def audits(self, name: AuditEventName) -> list[Any]:
        return self.ledger.audit_events(name)

    def alive(self) -> bool:
        """/healthz answers and a good STOW-RS still stores."""
        ok = requests.get(self.url + "/healthz", timeout=10).status_code == 200
        return ok and self.post(body(part(dx_dataset()))).status_code == 200


def http_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "http.port": 0,
        "http.senders": [
            {"name": "VNA", "bearer_token": TOKEN},
            {"name": "ARCHIVE", "username": "archive", "password": "pw-archive"},
        ],
        "http.max_request_bytes": 400_000,
        "http.max_instance_bytes": 100_000,
        "http.read_timeout_s": 1.0,
        "http.min_spool_free_bytes": 1024,
    }
    base.update(overrides)
    return make_settings(tmp_path, free_port(), **base)


def start(settings: Settings, broker_ok: list[bool] | None = None) -> tuple[HttpService, list[bool]]:
    ledger = Ledger(settings.ledger.url)
    flag = broker_ok if broker_ok is not None else [True]

    def broker_check() -> None:
        if not flag[0]:
            raise ConnectionRefusedError("broker down (test)")

    app = make_app(settings, ledger, Spool(settings.spool.directory), RoutingRule(settings.routing.rules), broker_check)
    service = HttpService(app, settings.http)
    service.start()
    return service, flag


@pytest.fixture
def http(tmp_path: Path) -> Iterator[Http]:
    settings = http_settings(tmp_path)
    service, flag = start(settings)
    ledger = Ledger(settings.ledger.url)
    try:
        yield Http(settings, ledger, service, flag)
    finally:
        service.stop()
        ledger.dispose()


def encoded(ds: Dataset) -> bytes:
    out = DicomBytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def part(data: Dataset | bytes, content_type: str = "application/dicom") -> bytes:
    payload = encoded(data) if isinstance(data, Dataset) else data
    return f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + payload + b"\r\n"


def body(*parts: bytes, close: bool = True) -> bytes:
    return b"".join(parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def failed_reasons(response: requests.Response) -> list[int]:
    items = response.json().get("00081198", {}).get("Value", [])
    return [item["00081197"]["Value"][0] for item in items]


def stored_uids(response: requests.Response) -> list[str]:
    items = response.json().get("00081199", {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


# -- the multipart parser ---------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 5, 37, 4096, 1 << 20])
def test_multipart_parser_same_parts_whatever_the_chunking(chunk: int) -> None:
    payloads = [b"first\r\n--not-the-boundary", bytes(range(256)) * 40, b""]
    data = b"preamble to ignore\r\n" + body(*(part(p) for p in payloads)) + b"epilogue"
    parser, got, current = MultipartParser(BOUNDARY), [], b""
    for i in range(0, len(data), chunk):
        for event in parser.feed(data[i : i + chunk]):
            if isinstance(event, PartStart):
                assert event.headers.get_content_type() == "application/dicom"
            elif isinstance(event, PartData):
                current += event.data
            elif isinstance(event, PartEnd):
                got.append(current)
                current = b""
    assert parser.done and got == payloads


def test_multipart_parser_refuses_garbage_after_a_boundary() -> None:
    with pytest.raises(MultipartError, match="after a boundary"):
        MultipartParser(BOUNDARY).feed(f"--{BOUNDARY}xyz\r\n".encode())


# -- STOW-RS: the good path -------------------------------------------------------------------


def test_dicomweb_client_stores_on_the_c_store_path(http: Http) -> None:
    datasets = [dx_dataset(study_uid=STUDY, seed=i) for i in range(3)]
    answer = http.client().store_instances(datasets)
    stored = [str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence]
    assert stored == [str(ds.SOPInstanceUID) for ds in datasets]
    assert "FailedSOPSequence" not in answer
    spool = Spool(http.settings.spool.directory)
    for ds in datasets:
        row = http.ledger.instance(str(ds.SOPInstanceUID))
        assert row is not None and row.state == "pending" and row.calling_aet == "VNA"
        on_disk = pydicom.dcmread(spool.path(row.path))  # a PS3.10 file, as C-STORE leaves it
        assert on_disk.SOPInstanceUID == ds.SOPInstanceUID and on_disk.PixelData == ds.PixelData
        assert row.size_bytes == spool.path(row.path).stat().st_size
    assert not list((spool.directory / ".incoming").iterdir())  # no temporary file left
    transferred = http.audits(AuditEventName.INSTANCES_TRANSFERRED)
    assert [(e.source_aet, e.study_instance_uid, e.instance_count, e.outcome) for e in transferred] == [
        ("VNA", STUDY, 3, 0)
    ]
    assert transferred[0].detail.startswith("STOW-RS")
    # The same instances again: duplicates, counted and acknowledged, not stored again.
    again = http.post(body(*(part(ds) for ds in datasets)), path=f"/dicom-web/studies/{STUDY}")
    assert again.status_code == 200 and stored_uids(again) == stored
    assert http.ledger.study(STUDY).duplicate_count == 3  # type: ignore[union-attr]
    assert len(http.audits(AuditEventName.INSTANCES_TRANSFERRED)) == 1  # nothing new transferred


def test_http_basic_credentials_map_to_their_sender(http: Http) -> None:
    ds = dx_dataset()
    auth = "Basic " + base64.b64encode(b"archive:pw-archive").decode()
    answer = requests.post(
        http.url + "/dicom-web/studies",
        data=body(part(ds)),
        headers={"Content-Type": CONTENT_TYPE, "Authorization": auth},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert http.ledger.instance(str(ds.SOPInstanceUID)).calling_aet == "ARCHIVE"  # type: ignore[union-attr]


def test_chunked_body_without_content_length(http: Http) -> None:
    datasets = [dx_dataset(seed=i) for i in range(2)]
    data = body(*(part(ds) for ds in datasets))
    answer = http.post(iter([data[i : i + 1000] for i in range(0, len(data), 1000)]))
    assert answer.status_code == 200 and len(stored_uids(answer)) == 2


# -- STOW-RS: bad input -----------------------------------------------------------------------


def test_study_uid_in_the_path_is_enforced(http: Http) -> None:
    mine, other = dx_dataset(study_uid=STUDY), dx_dataset(study_uid=STUDY + ".2")
    answer = http.post(body(part(mine), part(other)), path=f"/dicom-web/studies/{STUDY}")
    assert answer.status_code == 202 and failed_reasons(answer) == [0xA900]
    assert stored_uids(answer) == [str(mine.SOPInstanceUID)]
    assert http.ledger.instance(str(other.SOPInstanceUID)) is None
    only_other = http.post(body(part(dx_dataset(study_uid=STUDY + ".3"))), path=f"/dicom-web/studies/{STUDY}")
    assert only_other.status_code == 409 and failed_reasons(only_other) == [0xA900]
    details = [e.detail for e in http.audits(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert sum(d.startswith("STOW-RS 0xA900") for d in details) == 2
    assert http.alive()


def test_non_dicom_and_truncated_parts_are_0xc210(http: Http) -> None:
    good = dx_dataset()
    truncated = encoded(dx_dataset())[:-2000]  # Pixel Data cut short
    answer = http.post(body(part(b"hello", "text/plain"), part(b"not dicom at all" * 10), part(truncated), part(good)))
    assert answer.status_code == 202, answer.text
    assert failed_reasons(answer) == [0xC210, 0xC210, 0xC210]
    assert stored_uids(answer) == [str(good.SOPInstanceUID)]
    only_bad = http.post(body(part(b"garbage")))
    assert only_bad.status_code == 400 and failed_reasons(only_bad) == [0xC210]
    details = [e.detail for e in http.audits(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert sum(d.startswith("STOW-RS 0xC210") for d in details) == 4
    assert http.alive()


def test_large_pixel_data_checked_without_reading_it(http: Http) -> None:
    """Pixel Data over 64 KiB is deferred while a part is checked: a whole one is stored
    intact, a truncated one is 0xC210."""
    whole, cut = dx_dataset(rows=200, columns=200, seed=1), dx_dataset(rows=200, columns=200, seed=2)
    answer = http.post(body(part(whole), part(encoded(cut)[:-100])))
    assert answer.status_code == 202 and failed_reasons(answer) == [0xC210]
    row = http.ledger.instance(str(whole.SOPInstanceUID))
    assert row is not None
    assert pydicom.dcmread(Spool(http.settings.spool.directory).path(row.path)).PixelData == whole.PixelData
    assert http.ledger.instance(str(cut.SOPInstanceUID)) is None


def test_truncated_body_and_wrong_media_type(http: Http) -> None:
    truncated = http.post(body(part(dx_dataset()), close=False)[:-100])
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    wrong = http.post(b"{}", **{"Content-Type": "application/json"})
    assert wrong.status_code == 415
    wrong_type = http.post(
        body(part(dx_dataset())),
        **{"Content-Type": f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'},
    )
    assert wrong_type.status_code == 415
    details = [e.detail for e in http.audits(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert [d[:16] for d in details] == ["STOW-RS HTTP 400", "STOW-RS HTTP 415", "STOW-RS HTTP 415"]
    assert http.alive()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_token_is_401_and_a_security_alert(http: Http, token: str | None) -> None:
    ds = dx_dataset()
    answer = http.post(body(part(ds)), token=token)
    assert answer.status_code == 401 and "Bearer" in answer.headers["WWW-Authenticate"]
    assert http.ledger.instance(str(ds.SOPInstanceUID)) is None
    alerts = http.audits(AuditEventName.SECURITY_ALERT)
    assert len(alerts) == 1 and alerts[0].source_host == "127.0.0.1"
    assert alerts[0].detail.startswith(
        "STOW-RS HTTP 401 " + ("no credential" if token is None else "unknown credential")
    )
    bad_basic = requests.post(
        http.url + "/dicom-web/studies",
        data=body(part(ds)),
        timeout=30,
        headers={"Content-Type": CONTENT_TYPE, "Authorization": "Basic " + base64.b64encode(b"archive:wrong").decode()},
    )
    assert bad_basic.status_code == 401 and len(http.audits(AuditEventName.SECURITY_ALERT)) == 2
    assert http.alive()


def test_oversize_request_and_instance_are_413(http: Http) -> None:
    declared = http.post(body(part(b"x" * 500_000)))  # Content-Length over max_request_bytes
    assert declared.status_code == 413
    small, big = dx_dataset(), dx_dataset(rows=256, columns=256)  # 128 KiB of pixels > 100_000
    data = body(part(small), part(big))
    streamed = http.post(iter([data[i : i + 8192] for i in range(0, len(data), 8192)]))  # chunked
    assert streamed.status_code == 413 and "max_instance_bytes" in streamed.json()["error"]
    assert stored_uids(streamed) == [str(small.SOPInstanceUID)]  # stored before the limit: listed
    assert http.ledger.instance(str(big.SOPInstanceUID)) is None
    assert not list((Path(http.settings.spool.directory) / ".incoming").iterdir())
    details = [e.detail for e in http.audits(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert [d[:16] for d in details] == ["STOW-RS HTTP 413"] * 2
    assert http.alive()


def test_slow_client_gets_408_and_the_service_stays_up(http: Http) -> None:
    data = body(part(dx_dataset()))
    with socket.create_connection(("127.0.0.1", http.service.port), timeout=60) as sock:
        head = (
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data[:3000])
        started = time.monotonic()
        answer = sock.recv(65536).decode(errors="replace")  # we send nothing more
        waited = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert 0.9 <= waited < 30  # read_timeout_s is 1 s; slack for a loaded machine
    details = [e.detail for e in http.audits(AuditEventName.INSTANCES_TRANSFERRED) if e.outcome]
    assert [d[:16] for d in details] == ["STOW-RS HTTP 408"]
    assert http.alive()


# -- health -----------------------------------------------------------------------------------


def test_healthz_and_readyz(tmp_path: Path) -> None:
    settings = http_settings(tmp_path)
    service, broker = start(settings)
    url = f"http://127.0.0.1:{service.port}"
    try:
        assert requests.get(url + "/healthz", timeout=10).json() == {"status": "ok"}
        ready = requests.get(url + "/readyz", timeout=10)
        assert ready.status_code == 200
        checks = ready.json()["checks"]
        assert {k: v["ok"] for k, v in checks.items()} == {"ledger": True, "broker": True, "spool": True}
        assert checks["spool"]["free_bytes"] > 0
        broker[0] = False
        down = requests.get(url + "/readyz", timeout=10)
        assert down.status_code == 503 and "broker down" in down.json()["checks"]["broker"]["error"]
        assert down.json()["checks"]["ledger"]["ok"] is True
    finally:
        service.stop()
    full = http_settings(tmp_path, **{"http.min_spool_free_bytes": 1 << 62})  # "spool nearly full"
    service, _ = start(full)
    try:
        answer = requests.get(f"http://127.0.0.1:{service.port}/readyz", timeout=10)
        assert answer.status_code == 503 and answer.json()["checks"]["spool"]["ok"] is False
    finally:
        service.stop()


def test_readyz_fails_when_the_ledger_is_unreachable(tmp_path: Path) -> None:
    settings = http_settings(tmp_path, **{"ledger.url": "postgresql+psycopg://nobody:x@127.0.0.1:1/none"})
    ledger = Ledger(settings.ledger.url, migrate=False)  # the database is not there
    from ribnode.node.http.app import Readiness

    checks = Readiness(ledger, lambda: None, tmp_path, 0).run()
    assert checks["ledger"]["ok"] is False and "OperationalError" in checks["ledger"]["error"]


# -- metrics ----------------------------------------------------------------------------------


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_by_what_the_test_did(http: Http, node_settings: Settings) -> None:
    before = scrape(http.url)
    good = [dx_dataset(seed=i) for i in range(4)]
    assert http.post(body(*(part(ds) for ds in good), part(b"junk"))).status_code == 202
    assert http.post(body(part(good[0]))).status_code == 200  # a duplicate
    assert http.post(body(part(dx_dataset())), token="nope").status_code == 401
    assert http.post(body(part(dx_dataset())), token=None).status_code == 401
    assert http.post(body(part(b"x" * 500_000))).status_code == 413
    # Two instances by C-STORE into a DIMSE listener on the same ledger.
    dimse = make_settings(
        Path(http.settings.spool.directory).parent,
        free_port(),
        **{"ledger.url": http.settings.ledger.url, "spool.directory": http.settings.spool.directory},
    )
    with running_listener(dimse, http.ledger) as listener:
        assert c_store(listener.port, [dx_dataset(seed=9), dx_dataset(seed=10)]) == [0, 0]
        cut = Path(http.settings.spool.directory).parent / "cut.dcm"
        cut.write_bytes(encoded(dx_dataset(seed=11))[:-1000])
        assert c_store(listener.port, [cut]) == [0xC210]
        assert echoscu(listener.port, called_aet="RIBNODE", calling_aet="STRANGER").returncode != 0
        time.sleep(0.5)  # the audit record is written when the association ends
    after = scrape(http.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("ribnode_instances_received_total", protocol="stow-rs", outcome="stored") == 4
    assert moved("ribnode_instances_received_total", protocol="stow-rs", outcome="0xC210") == 1
    assert moved("ribnode_instances_received_total", protocol="dimse", outcome="stored") == 2
    assert moved("ribnode_instances_received_total", protocol="dimse", outcome="0xC210") == 1
    assert moved("ribnode_requests_rejected_total", protocol="dimse", reason="unknown_caller") == 1
    assert moved("ribnode_instances_duplicate_total") == 1
    assert moved("ribnode_requests_rejected_total", protocol="stow-rs", reason="unauthorized") == 2
    assert moved("ribnode_requests_rejected_total", protocol="stow-rs", reason="http_413") == 1
    assert value(after, "ribnode_spool_free_bytes") > 0
    assert value(after, "ribnode_jobs", state="received") == 0
    assert ("ribnode_job_stage_duration_seconds_count", (("stage", "queued_to_running"),)) in after


def test_metrics_of_jobs_stages_and_exports(http: Http) -> None:
    """Jobs, stage durations and deliveries as the ledger holds them (written here through
    the ledger's own API, as completion, workers and export write them)."""
    from ribnode.ledger.deliveries import DeliveryLedger
    from ribnode.ledger.store import JobState, utcnow

    for seed in range(2):
        assert http.post(body(part(dx_dataset(seed=seed)))).status_code == 200
    with http.ledger.session() as s:
        from sqlalchemy import select

        from ribnode.ledger.schema import Study

        study_ids = list(s.scalars(select(Study.id)))
    jobs = [http.ledger.create_job(sid, {"m": "1"}) for sid in study_ids]
    assert all(jobs)
    first, second = jobs[0].id, jobs[1].id  # type: ignore[union-attr]
    http.ledger.mark_queued(first)
    http.ledger.mark_queued(second)
    assert http.ledger.claim(first, "w1", 60, {JobState.QUEUED})
    http.ledger.transition(first, JobState.EXPORTING)
    deliveries = DeliveryLedger(http.ledger)
    delivery = deliveries.ensure(first, ["pacs"])[0]
    assert deliveries.claim(delivery.id, 0.0)  # first attempt fails, the second delivers
    deliveries.mark_failed(delivery.id, "refused (test)", utcnow())
    assert deliveries.claim(delivery.id, 0.0, now=utcnow() + timedelta(seconds=1))
    deliveries.mark_delivered(delivery.id)
    http.ledger.transition(first, JobState.DONE)
    samples = scrape(http.url)
    assert value(samples, "ribnode_jobs", state="done") == 1
    assert value(samples, "ribnode_jobs", state="queued") == 1
    assert value(samples, "ribnode_studies_completed_total") == 2
    assert value(samples, "ribnode_oldest_waiting_job_seconds") > 0  # the second job waits
    assert value(samples, "ribnode_export_attempts_total", destination="pacs") == 2
    assert value(samples, "ribnode_export_failures_total", destination="pacs") == 1
    for stage in ("queued_to_running", "running_to_exporting", "exporting_to_done"):
        assert value(samples, "ribnode_job_stage_duration_seconds_count", stage=stage) == 1, stage
    assert value(samples, "ribnode_job_stage_duration_seconds_count", stage="queued_to_running") == 1
    again = scrape(http.url)  # folded incrementally: nothing counted twice
    assert value(again, "ribnode_job_stage_duration_seconds_count", stage="exporting_to_done") == 1


# -- TLS and start-up -------------------------------------------------------------------------


def test_https_with_client_certificate(tmp_path: Path, pki: dict[str, Path]) -> None:  # noqa: F811
    settings = http_settings(
        tmp_path,
        **{
            "http.tls_cert": str(pki["server"]),
            "http.tls_key": str(pki["server_key"]),
            "http.tls_ca": str(pki["ca"]),
            "http.tls_verify_client": True,
        },
    )
    service, _ = start(settings)
    url = f"https://127.0.0.1:{service.port}"
    try:
        answer = requests.post(
            url + "/dicom-web/studies",
            data=body(part(dx_dataset())),
            timeout=30,
            headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {TOKEN}"},
            verify=str(pki["ca"]),
            cert=(str(pki["client"]), str(pki["client_key"])),
        )
        assert answer.status_code == 200
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(url + "/healthz", verify=str(pki["ca"]), timeout=10)  # no client certificate
    finally:
        service.stop()


def test_port_in_use_and_bad_tls_files_fail_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = http_settings(tmp_path, **{"http.port": taken.getsockname()[1]})
        with pytest.raises(HttpServiceError, match="cannot listen"):
            start(settings)
    bad = http_settings(
        tmp_path, **{"http.tls_cert": str(tmp_path / "none.crt"), "http.tls_key": str(tmp_path / "none.key")}
    )
    with pytest.raises(HttpServiceError, match="TLS"):
        start(bad)


def test_service_starts_fast(tmp_path: Path) -> None:
    """From the app to accepting connections: well under a second (the ledger, opened and
    migrated before, is not counted)."""
    settings = http_settings(tmp_path)
    ledger = Ledger(settings.ledger.url)
    app = make_app(settings, ledger, Spool(settings.spool.directory), RoutingRule(None), lambda: None)
    started = time.monotonic()
    with HttpService(app, settings.http) as service:
        elapsed = time.monotonic() - started
        assert requests.get(f"http://127.0.0.1:{service.port}/healthz", timeout=10).status_code == 200
    assert elapsed < 0.5, elapsed


def test_serve_with_a_taken_http_port_exits_2_naming_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "ribnode.yaml"
        config.write_text(http_settings(tmp_path).model_dump_json())  # JSON is YAML
        out = subprocess.run(
            [sys.executable, "-m", "ribnode", "--config", str(config), "serve", "--no-dimse", "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} (HTTP)" in out.stderr


def test_broker_probe_against_real_brokers(tmp_path: Path, redis_url: str) -> None:
    """The probe ``ribnode serve`` gives /readyz: the filesystem broker and a live Redis pass,
    a Redis port where nothing listens fails within seconds."""
    from ribnode.node.http.app import broker_probe
    from ribnode.workers.app import make_celery

    broker_probe(make_celery(make_settings(tmp_path, free_port())))()
    broker_probe(make_celery(make_settings(tmp_path, free_port(), **{"broker.url": redis_url})))()
    dead = make_celery(make_settings(tmp_path, free_port(), **{"broker.url": f"redis://127.0.0.1:{free_port()}/0"}))
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        broker_probe(dead, timeout_s=2.0)()
    assert "Connection" in type(caught.value).__name__ or "refused" in str(caught.value).lower()
    assert time.monotonic() - started < 10


def test_spool_recovery_removes_parts_left_by_a_crash(tmp_path: Path) -> None:
    """A part being received when the process died stays in ``<spool>/.incoming``; the
    recovery at the next start removes it and registers nothing."""
    from ribnode.node.recovery import recover_spool

    settings = http_settings(tmp_path)
    spool, ledger = Spool(settings.spool.directory), Ledger(settings.ledger.url)
    file, left = spool.incoming()
    file.write(encoded(dx_dataset()))
    file.close()
    report = recover_spool(spool, ledger, RoutingRule(None))
    assert not left.exists() and report.temporary_removed == 1 and report.registered == 0


def test_metrics_on_a_postgresql_ledger(tmp_path: Path, postgres_fresh_url: str) -> None:
    """PostgreSQL's SUM is a numeric (Decimal): the counters must still add up."""
    settings = http_settings(tmp_path, **{"ledger.url": postgres_fresh_url})
    service, _ = start(settings)
    url = f"http://127.0.0.1:{service.port}"
    try:
        answer = requests.post(
            url + "/dicom-web/studies",
            data=body(part(dx_dataset(seed=1)), part(dx_dataset(seed=2))),
            headers={"Content-Type": CONTENT_TYPE, "Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert answer.status_code == 200
        samples = scrape(url)
        assert value(samples, "ribnode_instances_received_total", protocol="stow-rs", outcome="stored") == 2
    finally:
        service.stop()
