"""The export loop with the ledger: several destinations, a PACS outage, dead jobs, re-send."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from ribnode.config.settings import Settings
from ribnode.ledger.deliveries import DeliveryLedger, DeliveryState
from ribnode.ledger.store import AuditEventName, AuditOutcome, JobState, Ledger
from ribnode.node.export import ExportError, ExportReport, export_job, resend, stage_outputs
from tests.node.export_helpers import (
    cstore,
    export_settings,
    folder,
    make_output_set,
    make_running_job,
    stow,
)
from tests.peers.fixtures import free_port


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The flow runs on both ledger back ends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    return str(request.getfixturevalue("postgres_fresh_url"))


@pytest.fixture
def make_ledger() -> Iterator[Callable[[str], Ledger]]:
    opened: list[Ledger] = []

    def make(url: str) -> Ledger:
        opened.append(Ledger(url))
        return opened[-1]

    yield make
    for led in opened:
        led.dispose()


def _staged_job(settings: Settings, ledger: Ledger) -> tuple[int, str]:
    study, source = generate_uid(), generate_uid()
    job_id = make_running_job(ledger, study, source)
    stage_outputs(job_id, [make_output_set(study, source)], settings, ledger)
    return job_id, study


def _export_until_settled(job_id: int, settings: Settings, ledger: Ledger, limit_s: float = 30.0) -> ExportReport:
    """Call the export loop as the Celery task would: again when the report says so."""
    deadline = time.monotonic() + limit_s
    report = export_job(job_id, settings, ledger)
    while report.retry_in_s is not None and time.monotonic() < deadline:
        time.sleep(report.retry_in_s + 0.01)
        report = export_job(job_id, settings, ledger)
    return report


def test_delivered_to_every_destination(
    tmp_path: Path,
    orthanc_factory,
    ledger_url: str,
    make_ledger,  # type: ignore[no-untyped-def]
) -> None:
    web, dimse = orthanc_factory(ae_title="WEB"), orthanc_factory(ae_title="DIMSE")
    settings = export_settings(
        tmp_path,
        ledger_url,
        [
            folder("local", tmp_path / "outbox"),
            stow("web", web.dicomweb_url),
            cstore("dimse", dimse.dicom_port, ae_title="DIMSE"),
        ],
    )
    ledger = make_ledger(ledger_url)
    job_id, study = _staged_job(settings, ledger)
    assert ledger.job(job_id).state == JobState.EXPORTING

    report = export_job(job_id, settings, ledger)
    assert report.state == JobState.DONE
    assert sorted(report.delivered) == ["dimse", "local", "web"] and report.retry_in_s is None
    assert len(web.series_of_study(study)) == 3 and len(dimse.series_of_study(study)) == 3
    assert len(list((tmp_path / "outbox" / study).rglob("*.dcm"))) == 3

    outputs = DeliveryLedger(ledger).outputs(job_id)
    assert [o.kind for o in outputs] == ["sc", "seg", "sr"]
    assert {o.weights_sha256 for o in outputs} == {"ab" * 32}
    accessed = ledger.audit_events(AuditEventName.INSTANCES_ACCESSED)
    assert len(accessed) == 1 and accessed[0].instance_count == 3
    sent = ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED)
    assert sorted(e.destination_aet for e in sent) == ["DIMSE", "local", "web"]
    assert {(e.outcome, e.study_instance_uid, e.source_aet) for e in sent} == {(AuditOutcome.SUCCESS, study, "RIBNODE")}
    assert len(ledger.audit_events(AuditEventName.BEGIN_TRANSFERRING)) == 3
    # Nothing happens on a second call: the job is done.
    assert export_job(job_id, settings, ledger).state == JobState.DONE
    assert len(ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED)) == 3


def test_pacs_down_then_back_delivers_once(
    tmp_path: Path,
    orthanc_factory,
    ledger_url: str,
    make_ledger,  # type: ignore[no-untyped-def]
) -> None:
    pacs = orthanc_factory(start=False)  # the PACS is down when the export starts
    settings = export_settings(
        tmp_path,
        ledger_url,
        [stow("web", pacs.dicomweb_url), cstore("dimse", pacs.dicom_port)],
        max_attempts=50,
    )
    ledger = make_ledger(ledger_url)
    job_id, study = _staged_job(settings, ledger)

    for _ in range(3):
        report = export_job(job_id, settings, ledger)
        assert report.state == JobState.EXPORTING
        assert sorted(report.pending) == ["dimse", "web"] and report.retry_in_s is not None
        time.sleep(report.retry_in_s + 0.01)
    failures = ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED)
    assert failures and {e.outcome for e in failures} == {AuditOutcome.MINOR_FAILURE}
    rows = DeliveryLedger(ledger).deliveries(job_id)
    assert all(r.attempts >= 1 and r.state == DeliveryState.PENDING for r in rows)
    assert sum(r.attempts for r in rows) >= 3

    pacs.start()
    report = _export_until_settled(job_id, settings, ledger)
    assert report.state == JobState.DONE
    # Delivered by STOW and by C-STORE, yet one copy of each object in the PACS.
    assert len(pacs.instances()) == 3
    assert len(pacs.series_of_study(study)) == 3
    states = [t.to_state for t in ledger.transitions(job_id)]
    assert states[-2:] == [JobState.EXPORTING, JobState.DONE]


def test_dead_after_max_attempts_then_resend(
    tmp_path: Path,
    orthanc_factory,
    make_ledger,  # type: ignore[no-untyped-def]
) -> None:
    http_port, dicom_port = free_port(), free_port()
    settings = export_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [cstore("pacs", dicom_port), folder("local", tmp_path / "outbox")],
        max_attempts=3,
    )
    ledger = make_ledger(settings.ledger.url)
    job_id, study = _staged_job(settings, ledger)

    report = _export_until_settled(job_id, settings, ledger)
    assert report.state == JobState.DEAD
    assert report.dead == ["pacs"] and report.delivered == ["local"]
    job = ledger.job_row(job_id)
    assert "pacs" in (job.last_error or "") and "gave up after 3 attempts" in (job.last_error or "")
    rows = {r.destination: r for r in DeliveryLedger(ledger).deliveries(job_id)}
    assert rows["pacs"].attempts == 3 and rows["pacs"].state == DeliveryState.DEAD
    final = ledger.audit_events(AuditEventName.INSTANCES_TRANSFERRED)
    assert [e.outcome for e in final if e.destination_aet == "ORTHANC"] == [
        AuditOutcome.MINOR_FAILURE,
        AuditOutcome.MINOR_FAILURE,
        AuditOutcome.SERIOUS_FAILURE,
    ]

    pacs = orthanc_factory(http_port=http_port, dicom_port=dicom_port)  # the PACS is back
    rows_after = resend(job_id, settings, ledger)
    assert {r.state for r in rows_after} == {DeliveryState.PENDING}
    assert ledger.job(job_id).state == JobState.EXPORTING
    report = _export_until_settled(job_id, settings, ledger)
    assert report.state == JobState.DONE
    assert len(pacs.series_of_study(study)) == 3


def test_permanent_refusal_is_dead_at_once(
    tmp_path: Path,
    orthanc_factory,
    make_ledger,  # type: ignore[no-untyped-def]
) -> None:
    pacs = orthanc_factory(username="u", password="right")
    settings = export_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [stow("web", pacs.dicomweb_url, username="u", password="wrong")],
        max_attempts=5,
    )
    ledger = make_ledger(settings.ledger.url)
    job_id, _ = _staged_job(settings, ledger)
    report = export_job(job_id, settings, ledger)
    assert report.state == JobState.DEAD and report.retry_in_s is None
    assert "HTTP 401" in (ledger.job_row(job_id).last_error or "")
    assert DeliveryLedger(ledger).deliveries(job_id)[0].attempts == 1


def test_missing_staged_file_makes_the_job_dead(tmp_path: Path, make_ledger) -> None:  # type: ignore[no-untyped-def]
    settings = export_settings(tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [folder("local", tmp_path / "out")])
    ledger = make_ledger(settings.ledger.url)
    job_id, _ = _staged_job(settings, ledger)
    victim = next(Path(settings.export.staging_dir).rglob("*.dcm"))
    victim.unlink()
    report = export_job(job_id, settings, ledger)
    assert report.state == JobState.DEAD
    assert str(victim) in (ledger.job_row(job_id).last_error or "")


def test_resend_without_outputs_is_refused(tmp_path: Path, make_ledger) -> None:  # type: ignore[no-untyped-def]
    settings = export_settings(tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [folder("local", tmp_path / "out")])
    ledger = make_ledger(settings.ledger.url)
    job_id = make_running_job(ledger, generate_uid(), generate_uid())
    with pytest.raises(ExportError, match=f"job {job_id} has no output objects"):
        resend(job_id, settings, ledger)


def test_claim_is_exclusive_and_leases(tmp_path: Path, make_ledger) -> None:  # type: ignore[no-untyped-def]
    settings = export_settings(tmp_path, f"sqlite:///{tmp_path / 'ledger.sqlite'}", [folder("local", tmp_path / "out")])
    ledger = make_ledger(settings.ledger.url)
    job_id, _ = _staged_job(settings, ledger)
    deliveries = DeliveryLedger(ledger)
    (row,) = deliveries.deliveries(job_id)
    assert deliveries.claim(row.id, lease_s=0.3)
    assert not deliveries.claim(row.id, lease_s=0.3)  # a second exporter keeps off
    assert deliveries.jobs_due() == []
    time.sleep(0.35)  # the first exporter died: the lease runs out, the delivery is due again
    assert deliveries.jobs_due() == [job_id]
    assert deliveries.claim(row.id, lease_s=0.3)
    assert deliveries.deliveries(job_id)[0].attempts == 2


def test_two_exporters_at_once_send_once(
    tmp_path: Path,
    orthanc,
    ledger_url: str,
    make_ledger,  # type: ignore[no-untyped-def]
) -> None:
    """A task delivered twice (or a resend racing a retry): two exporters run the same job at
    the same moment; each delivery is attempted exactly once."""
    import threading

    settings = export_settings(
        tmp_path,
        ledger_url,
        [stow("web", orthanc.dicomweb_url), cstore("dimse", orthanc.dicom_port), folder("local", tmp_path / "outbox")],
    )
    first = make_ledger(ledger_url)
    job_id, study = _staged_job(settings, first)
    ledgers = [first, make_ledger(ledger_url)]  # two processes' worth of connections
    start = threading.Barrier(2)
    reports: list[ExportReport] = []

    def exporter(led: Ledger) -> None:
        start.wait()
        reports.append(export_job(job_id, settings, led))

    threads = [threading.Thread(target=exporter, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(reports) == 2
    assert ledgers[0].job(job_id).state == JobState.DONE
    rows = DeliveryLedger(first).deliveries(job_id)
    assert [r.attempts for r in rows] == [1, 1, 1]
    assert len(first.audit_events(AuditEventName.BEGIN_TRANSFERRING)) == 3
    assert len(orthanc.series_of_study(study)) == 3
