"""The peer fixtures work against the real programs: Orthanc, dcmtk, dicom3tools, PostgreSQL, Redis."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ribnode.demo.orthanc import OrthancError, OrthancServer
from tests.peers.fixtures import (
    assert_dicom_valid,
    dciodvfy,
    dcmdump,
    dsrdump,
    echoscu,
    free_port,
    storescu,
)


def _secondary_capture(tmp_path: Path) -> Path:
    """A small, standard-conformant Secondary Capture written with highdicom."""
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).astype(np.uint16)
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
        series_number=1,
        instance_number=1,
        manufacturer="ribnode tests",
        patient_id="PEERS1",
        patient_name="Peers^Test",
        patient_sex="O",
        patient_birth_date="19700101",
        study_id="1",
        accession_number="A1",
        study_date="20260101",
        study_time="120000",
        referring_physician_name="Nobody^Dr",
        pixel_spacing=None,
    )
    # Without Body Part Examined dciodvfy asks for Laterality (General Series, type 2C).
    sc.BodyPartExamined = "CHEST"
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    return path


def test_free_port_is_bindable(free_port: int) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port))
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert 1024 <= free_port <= 65535 and not low <= free_port <= high


def test_orthanc_upload_and_qido(orthanc: OrthancServer, rg1_files: dict[str, Path]) -> None:
    source = pydicom.dcmread(rg1_files["RG1_UNCR"])
    oid = orthanc.upload(rg1_files["RG1_UNCR"])
    assert orthanc.instances() == [oid]
    series = orthanc.series_of_study(source.StudyInstanceUID)
    assert [s["MainDicomTags"]["SeriesInstanceUID"] for s in series] == [source.SeriesInstanceUID]
    assert orthanc.series_of_study("1.2.3.4.5.6.7") == []

    client = DICOMwebClient(orthanc.dicomweb_url)
    studies = client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [source.StudyInstanceUID]
    found = client.search_for_instances(study_instance_uid=source.StudyInstanceUID)
    assert found[0]["00080018"]["Value"][0] == source.SOPInstanceUID
    # Orthanc stores the bytes as received.
    stored = orthanc.rest("GET", f"/instances/{oid}/file").content
    assert stored == rg1_files["RG1_UNCR"].read_bytes()


def test_orthanc_overwrite_keeps_one_copy(orthanc: OrthancServer, rg1_files: dict[str, Path]) -> None:
    first = orthanc.upload(rg1_files["RG1_UNCR"])
    second = orthanc.upload(rg1_files["RG1_UNCR"])
    assert first == second
    assert len(orthanc.instances()) == 1


def test_orthanc_restart_keeps_ports_and_data(orthanc: OrthancServer, rg1_files: dict[str, Path]) -> None:
    oid = orthanc.upload(rg1_files["RG1_UNCR"])
    url = orthanc.url
    orthanc.stop()
    assert not orthanc.running
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/system", timeout=2)
    orthanc.start()
    assert orthanc.url == url
    assert orthanc.instances() == [oid]


def test_orthanc_auth(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(username="alice", password="secret")
    assert pacs.rest("GET", "/system").status_code == 200
    anonymous = requests.get(f"{pacs.url}/system", timeout=5)
    assert anonymous.status_code == 401


def test_orthanc_rest_error_names_the_call(orthanc: OrthancServer) -> None:
    with pytest.raises(OrthancError, match="GET /instances/nope answered HTTP 404"):
        orthanc.rest("GET", "/instances/nope")


def test_orthanc_sends_to_modality(orthanc_factory, rg1_files: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    receiver = orthanc_factory(ae_title="RECEIVER")
    sender = orthanc_factory(
        ae_title="SENDER",
        modalities={"receiver": ("RECEIVER", "127.0.0.1", receiver.dicom_port)},
    )
    ids = [sender.upload(rg1_files["RG1_UNCR"]), sender.upload(rg1_files["RG1_J2KR"])]
    sender.send_to_modality("receiver", ids)
    assert len(receiver.instances()) == 2
    with pytest.raises(OrthancError, match="not configured"):
        sender.send_to_modality("nowhere", ids)


def test_echoscu_reaches_orthanc(orthanc: OrthancServer) -> None:
    assert echoscu(orthanc.dicom_port, called_aet="ORTHANC").returncode == 0
    assert echoscu(free_port(), called_aet="ORTHANC").returncode != 0


def test_storescu_to_orthanc(orthanc: OrthancServer, rg1_files: dict[str, Path]) -> None:
    result = storescu([rg1_files["RG1_J2KR"]], orthanc.dicom_port, called_aet="ORTHANC", options=["-xv"])
    assert result.returncode == 0, result.stderr
    assert len(orthanc.instances()) == 1


def test_dciodvfy_finds_errors_and_passes_valid(tmp_path: Path, rg1_files: dict[str, Path]) -> None:
    # RG1 carries PixelSpacing 0\0, which dciodvfy rightly calls an error.
    errors, _ = dciodvfy(rg1_files["RG1_UNCR"])
    assert any("PixelSpacing" in line for line in errors)
    with pytest.raises(pytest.fail.Exception, match="PixelSpacing"):
        assert_dicom_valid(rg1_files["RG1_UNCR"])
    sc = _secondary_capture(tmp_path)
    assert dciodvfy(sc)[0] == []
    assert_dicom_valid(sc)
    # Synthetic Data (0008,001C) is newer than dicom3tools' dictionary: tolerated, nothing else.
    ds = pydicom.dcmread(sc)
    ds.add_new(0x0008001C, "CS", "YES")
    ds.save_as(sc)
    assert any("(0008,001c)" in line for line in dciodvfy(sc)[0])
    assert_dicom_valid(sc)
    del ds.PatientOrientation  # type 2C in the SC Image module here: a real error
    ds.save_as(sc)
    with pytest.raises(pytest.fail.Exception):
        assert_dicom_valid(sc)


def test_dcmdump_and_dsrdump(rg1_files: dict[str, Path]) -> None:
    assert "(0008,0060) CS [CR]" in dcmdump(rg1_files["RG1_UNCR"])
    sr = get_testdata_file("test-SR.dcm")
    assert sr is not None
    tree = dsrdump(sr)
    assert "CONTAINER" in tree
    with pytest.raises(AssertionError, match="dsrdump"):
        dsrdump(rg1_files["RG1_UNCR"])


def test_postgres(postgres_url: str, postgres_fresh_url: str) -> None:
    import sqlalchemy

    assert postgres_fresh_url != postgres_url
    engine = sqlalchemy.create_engine(postgres_fresh_url)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE t (x int)"))
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (42)"))
            assert conn.execute(sqlalchemy.text("SELECT x FROM t")).scalar_one() == 42
    finally:
        engine.dispose()


def test_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert not redis_url.endswith("/0")
        assert client.dbsize() == 1  # only the claim key
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()


def test_orthanc_factory_can_leave_it_down(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(start=False)
    assert not pacs.running
    assert echoscu(pacs.dicom_port, called_aet="ORTHANC").returncode != 0
    pacs.start()
    assert echoscu(pacs.dicom_port, called_aet="ORTHANC").returncode == 0
