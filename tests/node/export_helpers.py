"""Small synthetic DICOM outputs and ledger jobs for the export tests.

The objects proper (SC, SEG, SR) come from ``ribnode.dicom_sr``; the export only needs valid
DICOM instances in one study with provenance records, so these are small highdicom Secondary
Captures (one series each), standard-conformant (dciodvfy: no errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from ribnode.config.settings import DestinationSettings, Settings
from ribnode.ledger.store import JobState, Ledger, ReceivedInstance

KINDS = ("sc", "seg", "sr")


@dataclass
class SyntheticOutputSet:
    """Three instances in the source's study, shaped like ``ribnode.dicom_sr.OutputSet``."""

    items: list[pydicom.Dataset]
    provenance: dict[str, Any] = field(default_factory=dict)

    def datasets(self) -> list[pydicom.Dataset]:
        return list(self.items)


def _image(study_uid: str, series_number: int, seed: int) -> pydicom.Dataset:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(32, 32), dtype=np.uint16)
    sc = hd.sc.SCImage(
        pixel_array=pixels,
        photometric_interpretation="MONOCHROME2",
        bits_allocated=16,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(entropy_srcs=[study_uid, str(seed), "series"]),
        sop_instance_uid=generate_uid(entropy_srcs=[study_uid, str(seed), "sop"]),
        series_number=series_number,
        instance_number=1,
        manufacturer="ribnode tests",
        patient_id="EXPORT1",
        patient_name="Export^Test",
        patient_sex="O",
        patient_birth_date="19700101",
        study_id="1",
        accession_number="A1",
        study_date="20260101",
        study_time="120000",
        referring_physician_name="Nobody^Dr",
        series_description=f"AI SYNTHETIC test series {series_number}",
    )
    sc.BodyPartExamined = "CHEST"  # else dciodvfy asks for Laterality (type 2C)
    return sc


def make_output_set(study_uid: str, source_uid: str, seed: int = 0) -> SyntheticOutputSet:
    """Three small instances (deterministic UIDs from the study and seed) with provenance."""
    items = [_image(study_uid, 100 + i, seed * 10 + i) for i in range(3)]
    provenance = {
        kind: {
            "kind": kind,
            "sop_instance_uid": str(ds.SOPInstanceUID),
            "sop_class_uid": str(ds.SOPClassUID),
            "source_sop_instance_uid": source_uid,
            "models": [{"name": "test model", "version": "0.0.1", "weights_sha256": "ab" * 32}],
        }
        for kind, ds in zip(KINDS, items)
    }
    return SyntheticOutputSet(items=items, provenance=provenance)


def make_running_job(ledger: Ledger, study_uid: str, source_uid: str) -> int:
    """A job in state "running" with one received source instance, as a worker holds it."""
    ledger.record_instance(
        ReceivedInstance(
            study_instance_uid=study_uid,
            series_instance_uid=generate_uid(),
            sop_instance_uid=source_uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CR",
            path=f"{study_uid}/{source_uid}.dcm",
            size_bytes=1,
            calling_aet="ORTHANC",
            routed=True,
        )
    )
    study = ledger.study(study_uid)
    assert study is not None
    job = ledger.create_job(study.id, {"test": "1"})
    assert job is not None
    assert ledger.transition(job.id, JobState.QUEUED)
    assert ledger.transition(job.id, JobState.RUNNING)
    return job.id


def export_settings(
    tmp_path: Path,
    ledger_url: str,
    destinations: list[DestinationSettings],
    max_attempts: int = 4,
    backoff_s: float = 0.05,
) -> Settings:
    """Settings for an export test: staging in ``tmp_path``, tiny backoff."""
    return Settings.model_validate(
        {
            "var_dir": str(tmp_path / "var"),
            "ledger": {"url": ledger_url},
            "listener": {"ae_title": "RIBNODE"},
            "broker": {"url": "filesystem://", "folder": str(tmp_path / "broker")},
            "export": {
                "destinations": [d.model_dump() for d in destinations],
                "max_attempts": max_attempts,
                "backoff_s": backoff_s,
                "backoff_max_s": 0.2,
                "staging_dir": str(tmp_path / "var" / "outputs"),
            },
        }
    )


def stow(name: str, url: str, **kw: Any) -> DestinationSettings:
    return DestinationSettings(name=name, kind="stow", url=url, **{"timeout_s": 10, **kw})


def cstore(name: str, port: int, ae_title: str = "ORTHANC", **kw: Any) -> DestinationSettings:
    return DestinationSettings(
        name=name,
        kind="cstore",
        ae_title=ae_title,
        host="127.0.0.1",
        port=port,
        **{"timeout_s": 10, **kw},
    )


def folder(name: str, path: Path) -> DestinationSettings:
    return DestinationSettings(name=name, kind="folder", path=path)
