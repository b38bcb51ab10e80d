"""The real ribnode objects (dicom_sr SC, SEG, SR) delivered to stock-configured Orthancs, by
STOW-RS and by C-STORE, in the clear and over DICOM TLS with certificates made in the test."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from dicomweb_client import DICOMwebClient

from ribnode.config.settings import OutputSettings
from ribnode.demo.orthanc import OrthancServer
from ribnode.dicom_sr import build_outputs
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.export import (
    PermanentDeliveryError,
    TransientDeliveryError,
    deliver,
    export_job,
    stage_outputs,
)
from tests.dicom_sr.inputs import model_inputs, synthetic_dx
from tests.node.export_helpers import cstore, export_settings, make_running_job, stow
from tests.node.test_tls import pki  # noqa: F401  (pytest fixture: CA, server and client certs)
from tests.peers.fixtures import assert_dicom_valid, free_port

# What a PACS administrator leaves on: unknown SOP classes refused.
STOCK = {"UnknownSopClassAccepted": False}


def _real_outputs():  # type: ignore[no-untyped-def]
    source = synthetic_dx()
    segmentation, suppression = model_inputs(source)
    return source, build_outputs(source, segmentation, suppression, OutputSettings())


def test_real_outputs_by_stow_and_cstore(tmp_path: Path, orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    web: OrthancServer = orthanc_factory(ae_title="WEB", extra_config=STOCK)
    dimse: OrthancServer = orthanc_factory(ae_title="DIMSE", extra_config=STOCK)
    source, outputs = _real_outputs()
    settings = export_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        [stow("web", web.dicomweb_url), cstore("dimse", dimse.dicom_port, ae_title="DIMSE")],
    )
    ledger = Ledger(settings.ledger.url)
    job_id = make_running_job(ledger, str(source.StudyInstanceUID), str(source.SOPInstanceUID))
    paths = stage_outputs(job_id, [outputs], settings, ledger)
    for path in paths:
        assert_dicom_valid(path)
    assert export_job(job_id, settings, ledger).state == JobState.DONE
    ledger.dispose()

    expected = {str(d.SOPClassUID) for d in outputs.datasets()}
    for pacs in (web, dimse):
        series = pacs.series_of_study(str(source.StudyInstanceUID))
        assert {s["MainDicomTags"]["Modality"] for s in series} == {"OT", "SEG", "SR"}
        stored = {pacs.rest("GET", f"/instances/{i}/simplified-tags").json()["SOPClassUID"] for i in pacs.instances()}
        assert stored == expected
    found = DICOMwebClient(web.dicomweb_url).search_for_series(study_instance_uid=str(source.StudyInstanceUID))
    descriptions = {s.get("0008103E", {}).get("Value", [""])[0] for s in found}
    assert any(d.startswith("AI SYNTHETIC") for d in descriptions)


def test_cstore_over_dicom_tls(tmp_path: Path, orthanc_factory, pki: dict[str, Path]) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    pacs: OrthancServer = orthanc_factory(
        extra_config={
            **STOCK,
            "DicomTlsEnabled": True,
            "DicomTlsCertificate": str(pki["server"]),
            "DicomTlsPrivateKey": str(pki["server_key"]),
            "DicomTlsTrustedCertificates": str(pki["ca"]),
            "DicomTlsRemoteCertificateRequired": True,
        }
    )
    source, outputs = _real_outputs()
    secure = cstore("pacs", pacs.dicom_port, tls_ca=pki["ca"], tls_cert=pki["client"], tls_key=pki["client_key"])
    with pytest.raises(TransientDeliveryError):  # plain DICOM to a TLS port: no association
        deliver(outputs.datasets(), cstore("pacs", pacs.dicom_port, timeout_s=3))
    assert pacs.instances() == []
    deliver(outputs.datasets(), secure)
    assert len(pacs.series_of_study(str(source.StudyInstanceUID))) == 3
    stored = pacs.rest("GET", f"/instances/{pacs.instances()[0]}/file").content
    assert pydicom.dcmread(__import__("io").BytesIO(stored)).StudyInstanceUID == source.StudyInstanceUID


def test_stow_over_https_verifies_the_server(tmp_path: Path, orthanc, pki: dict[str, Path], monkeypatch) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    """HTTPS in front of Orthanc (socat terminates TLS, as a reverse proxy would: Debian's
    Orthanc 1.10 crashes on its own HTTPS here). Verification is on by default, and the
    configured CA wins over a CA bundle named in the environment."""
    import subprocess

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")

    bundle = tmp_path / "server-with-key.pem"
    bundle.write_bytes(pki["server"].read_bytes() + pki["server_key"].read_bytes())
    port = free_port()
    proxy = subprocess.Popen(
        [
            "socat",
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={bundle},verify=0",
            f"TCP:127.0.0.1:{orthanc.http_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while _port_closed(port):
            assert time.monotonic() < deadline and proxy.poll() is None, "socat did not start"
            time.sleep(0.05)
        url = f"https://127.0.0.1:{port}/dicom-web"
        source, outputs = _real_outputs()
        with pytest.raises(PermanentDeliveryError, match="TLS failure"):
            deliver(outputs.datasets(), stow("web", url))  # unknown CA: refused
        assert orthanc.instances() == []
        deliver(outputs.datasets(), stow("web", url, tls_ca=pki["ca"]))
        assert len(orthanc.series_of_study(str(source.StudyInstanceUID))) == 3
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)


def _port_closed(port: int) -> bool:
    """True while nothing accepts TCP connections on 127.0.0.1:port."""
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) != 0
