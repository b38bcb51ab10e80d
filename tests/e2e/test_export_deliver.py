"""One delivery attempt to each kind of destination, against real peers (Orthanc, the disk)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

from ribnode.demo.orthanc import OrthancServer
from ribnode.node.export import (
    PermanentDeliveryError,
    TransientDeliveryError,
    backoff_delay,
    deliver,
)
from tests.node.export_helpers import cstore, folder, make_output_set, stow
from tests.peers.fixtures import assert_dicom_valid, free_port


def _outputs():  # type: ignore[no-untyped-def]
    study = generate_uid()
    return study, make_output_set(study, generate_uid()).datasets()


def test_backoff_is_capped_exponential_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (9, 300.0), (200, 300.0)]:
        delays = [backoff_delay(attempt, 2.0, 300.0, rng) for _ in range(400)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) > 0.9 * ceiling  # spread over the upper half: jitter
        assert min(delays) < 0.6 * ceiling
    with pytest.raises(ValueError, match="attempt must be 1 or more"):
        backoff_delay(0, 2.0, 300.0)


def test_folder_delivery_is_atomic_and_replaces(tmp_path: Path) -> None:
    study, datasets = _outputs()
    root = tmp_path / "outbox"
    deliver(datasets, folder("local", root))
    files = sorted(root.rglob("*.dcm"))
    assert len(files) == 3
    for ds in datasets:
        path = root / study / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert path.is_file()
        assert_dicom_valid(path)
    deliver(datasets, folder("local", root))  # a re-send replaces
    assert len(list(root.rglob("*.dcm"))) == 3
    assert not [p for p in root.rglob(".tmp-*")]


def test_folder_that_is_a_file_is_permanent(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("not a folder")
    with pytest.raises(PermanentDeliveryError, match="folder destination 'local'"):
        deliver(_outputs()[1], folder("local", blocker))


def test_stow_delivery(orthanc: OrthancServer) -> None:
    study, datasets = _outputs()
    deliver(datasets, stow("pacs", orthanc.dicomweb_url))
    found = DICOMwebClient(orthanc.dicomweb_url).search_for_instances(study_instance_uid=study)
    assert sorted(i["00080018"]["Value"][0] for i in found) == sorted(d.SOPInstanceUID for d in datasets)
    deliver(datasets, stow("pacs", orthanc.dicomweb_url))  # same UIDs: replaced, not added
    assert len(orthanc.instances()) == 3


def test_stow_basic_auth(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(username="ribnode", password="s3cret")
    _, datasets = _outputs()
    with pytest.raises(PermanentDeliveryError, match="HTTP 401"):
        deliver(datasets, stow("pacs", pacs.dicomweb_url, username="ribnode", password="wrong"))
    assert pacs.instances() == []
    deliver(datasets, stow("pacs", pacs.dicomweb_url, username="ribnode", password="s3cret"))
    assert len(pacs.instances()) == 3


def test_stow_unreachable_is_transient() -> None:
    with pytest.raises(TransientDeliveryError, match="stow destination 'pacs'.*cannot reach"):
        deliver(_outputs()[1], stow("pacs", f"http://127.0.0.1:{free_port()}/dicom-web"))


def test_stow_http_404_is_permanent(orthanc: OrthancServer) -> None:
    with pytest.raises(PermanentDeliveryError, match="HTTP 404"):
        deliver(_outputs()[1], stow("pacs", f"{orthanc.url}/no-such-service"))


def test_cstore_delivery(orthanc: OrthancServer) -> None:
    study, datasets = _outputs()
    deliver(datasets, cstore("pacs", orthanc.dicom_port))
    series = orthanc.series_of_study(study)
    assert len(series) == 3
    assert {s["MainDicomTags"]["SeriesDescription"] for s in series} == {d.SeriesDescription for d in datasets}
    deliver(datasets, cstore("pacs", orthanc.dicom_port))
    assert len(orthanc.instances()) == 3


def test_cstore_unreachable_is_transient() -> None:
    with pytest.raises(TransientDeliveryError, match="cstore destination 'pacs'.*no association"):
        deliver(_outputs()[1], cstore("pacs", free_port()))


def test_cstore_wrong_called_ae_is_rejected_permanently(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(extra_config={"DicomCheckCalledAet": True})
    with pytest.raises(PermanentDeliveryError, match="association rejected"):
        deliver(_outputs()[1], cstore("pacs", pacs.dicom_port, ae_title="NOT-ORTHANC"))
    assert pacs.instances() == []


def test_cstore_unsupported_sop_class_is_permanent(orthanc_factory) -> None:  # type: ignore[no-untyped-def]
    pacs = orthanc_factory(extra_config={"UnknownSopClassAccepted": False})
    _, datasets = _outputs()
    odd = datasets[0]
    odd.SOPClassUID = "1.2.826.0.1.3680043.8.498.999.1"  # a private, unknown storage class
    odd.file_meta.MediaStorageSOPClassUID = odd.SOPClassUID
    with pytest.raises(PermanentDeliveryError, match="not accepted"):
        deliver([odd], cstore("pacs", pacs.dicom_port))


def test_stow_failed_sop_sequence_is_classified() -> None:
    from pydicom import Dataset

    from ribnode.node.senders import _stow_failures

    def answer(*reasons: int) -> Dataset:
        ds = Dataset()
        items = []
        for i, reason in enumerate(reasons):
            item = Dataset()
            item.ReferencedSOPInstanceUID = f"1.2.3.{i}"
            item.FailureReason = reason
            items.append(item)
        ds.FailedSOPSequence = items
        return ds

    _stow_failures("pacs", Dataset())  # nothing failed
    with pytest.raises(TransientDeliveryError, match=r"1\.2\.3\.0 \(0xA700\)"):
        _stow_failures("pacs", answer(0xA700))
    with pytest.raises(PermanentDeliveryError, match="refused 2 instance"):
        _stow_failures("pacs", answer(0xA700, 0xC000))


def test_destination_settings_are_checked() -> None:
    from pydantic import ValidationError

    from ribnode.config.settings import DestinationSettings, ExportSettings

    with pytest.raises(ValidationError, match="'pacs' of kind 'cstore' needs ae_title, port"):
        DestinationSettings(name="pacs", kind="cstore", host="10.0.0.5")
    with pytest.raises(ValidationError, match="either basic auth or a bearer token"):
        DestinationSettings(name="web", kind="stow", url="https://x", username="u", bearer_token="t")
    with pytest.raises(ValidationError, match="tls_cert and tls_key together"):
        DestinationSettings(name="web", kind="stow", url="https://x", tls_cert=Path("c.pem"))
    with pytest.raises(ValidationError, match=r"repeated: \['a'\]"):
        ExportSettings(destinations=[folder("a", Path("x")), folder("a", Path("y"))])


def test_folder_refuses_a_uid_that_is_not_a_uid(tmp_path: Path) -> None:
    _, datasets = _outputs()
    datasets[0].StudyInstanceUID = "../../escape"
    with pytest.raises(PermanentDeliveryError, match="StudyInstanceUID '../../escape' is not a valid"):
        deliver(datasets[:1], folder("local", tmp_path / "outbox"))
    assert not (tmp_path / "escape").exists()


def test_stow_session_auth_and_tls_settings(tmp_path: Path) -> None:
    from ribnode.node.senders import _stow_session

    bearer = _stow_session(stow("web", "https://pacs/dicom-web", bearer_token="t0k"))
    assert bearer.headers["Authorization"] == "Bearer t0k" and bearer.auth is None
    assert bearer.verify is True  # TLS verification on by default
    basic = _stow_session(stow("web", "https://pacs/dicom-web", username="u", password="p", tls_ca=tmp_path / "ca.pem"))
    assert basic.auth == ("u", "p") and basic.verify == str(tmp_path / "ca.pem")
    assert _stow_session(stow("web", "https://pacs/dicom-web", tls_verify=False)).verify is False


def test_stow_secrets_are_masked_but_survive_a_config_file() -> None:
    from ribnode.config.settings import Settings

    dest = stow("web", "https://pacs/dicom-web", username="u", password="s3cret")
    assert "s3cret" not in repr(dest) and "s3cret" not in str(dest)
    again = Settings.model_validate({"export": {"destinations": [dest.model_dump(mode="json")]}})
    password = again.export.destinations[0].password
    assert password is not None and password.get_secret_value() == "s3cret"
