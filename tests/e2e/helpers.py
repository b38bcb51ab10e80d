"""Helpers of the end-to-end tests: a whole ribnode (listener, completion, Celery worker, the
models) beside a real Orthanc, and the checks every delivered object must pass."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from ribnode.config.settings import Settings
from ribnode.demo.orthanc import OrthancServer
from ribnode.demo.run import demo_routing
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.node.listener import DicomListener
from ribnode.workers.app import make_celery
from ribnode.workers.queue import enqueue_job
from tests.node.helpers import celery_worker, make_settings, running_listener, wait_for
from tests.peers.fixtures import assert_dicom_valid, dsrdump, free_port

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "src/ribnode/models/weights"
SHIPPED = (WEIGHTS_DIR / "rib-segmentation.onnx", WEIGHTS_DIR / "rib-suppression.json")
WEIGHT_ENV = ("RIBNODE_MODELS__SEGMENTATION_WEIGHTS", "RIBNODE_MODELS__SUPPRESSION_WEIGHTS")
#: Series Description of each kind, before the source views it names (" PA", " LL, PA").
AI_DESCRIPTIONS = {
    "sc": "AI SYNTHETIC bone-suppressed (not original)",
    "seg": "AI chest anatomy segmentation",
    "sr": "AI chest anatomy measurements (TID 1500)",
}


def ai_kind(description: str) -> str | None:
    """The kind ("sc", "seg", "sr") of a result series by its description, or None."""
    for kind, base in AI_DESCRIPTIONS.items():
        if description == base or description.startswith(base + " "):
            return kind
    return None


STEPS = 2  # few sampling steps: the loop is under test here, not the model's quality


def require_weights() -> None:
    """Skip unless the shipped weights (or weights named in the environment) exist."""
    chosen = [Path(os.environ[env]) if env in os.environ else shipped for env, shipped in zip(WEIGHT_ENV, SHIPPED)]
    missing = [str(p) for p in chosen if not p.is_file()]
    if missing:
        pytest.skip(f"model weights not present: {', '.join(missing)}")


def e2e_settings(tmp: Path, **overrides: Any) -> Settings:
    """Settings for a whole node under ``tmp``: synthetic phantoms routed (as in the demo),
    quiet period 1 s, few steps, one thread per runtime."""
    base: dict[str, Any] = {
        "routing.rules": demo_routing(),
        "spool.quiet_period_s": 1.0,
        "models.suppression_steps": STEPS,
        "models.intra_op_threads": 1,
        "models.device": "cpu",
        "export.staging_dir": str(tmp / "outputs"),
        "export.destinations": [{"name": "outbox", "kind": "folder", "path": str(tmp / "outbox")}],
        "export.backoff_s": 0.5,
        "export.backoff_max_s": 2.0,
    }
    base.update(overrides)
    return make_settings(tmp, free_port(), **base)


def stow_destination(pacs: OrthancServer) -> dict[str, Any]:
    """An export destination: the Orthanc's DICOMweb STOW-RS."""
    return {"name": "pacs", "kind": "stow", "url": pacs.dicomweb_url, "timeout_s": 10.0}


@dataclass
class Node:
    """A running ribnode: settings, ledger and the listener."""

    settings: Settings
    ledger: Ledger
    listener: DicomListener
    app: Any


@contextmanager
def running_node(settings: Settings) -> Iterator[Node]:
    """Listener + completion thread + an in-process Celery worker (solo pool), on the
    embedded filesystem broker."""
    ledger = Ledger(settings.ledger.url)
    app = make_celery(settings)
    completion = StudyCompletion(settings, ledger, functools.partial(enqueue_job, app))
    with ExitStack() as stack:
        listener = stack.enter_context(running_listener(settings, ledger))
        stack.enter_context(completion)
        stack.enter_context(celery_worker(app, settings, models=True))
        yield Node(settings, ledger, listener, app)
    ledger.dispose()


def job_of_study(ledger: Ledger, study_uid: str, state: JobState = JobState.DONE) -> Any:
    """The study's job in ``state``, or None."""
    jobs = [j for j in ledger.jobs_in_state(state) if j.study_instance_uid == study_uid]
    return jobs[-1] if jobs else None


def wait_for_series(pacs: OrthancServer, study_uid: str, count: int, timeout_s: float = 180.0) -> list[dict[str, Any]]:
    """Until Orthanc holds ``count`` series in the study."""
    return wait_for(
        lambda: (s := pacs.series_of_study(study_uid)) and len(s) >= count and s,
        timeout_s,
        f"{count} series in study {study_uid} in Orthanc",
    )


def qido_series(pacs: OrthancServer, study_uid: str) -> list[dict[str, Any]]:
    """QIDO-RS: the study's series (DICOM JSON)."""
    answer = pacs.rest("GET", f"/dicom-web/studies/{study_uid}/series", headers={"Accept": "application/dicom+json"})
    result: list[dict[str, Any]] = answer.json()
    return result


def json_value(item: dict[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON attribute, or None."""
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def wado_metadata(pacs: OrthancServer, study_uid: str, series_uid: str) -> list[dict[str, Any]]:
    """WADO-RS metadata of a series (DICOM JSON, sequences included)."""
    answer = pacs.rest(
        "GET",
        f"/dicom-web/studies/{study_uid}/series/{series_uid}/metadata",
        headers={"Accept": "application/dicom+json"},
    )
    result: list[dict[str, Any]] = answer.json()
    return result


def referenced_uids(item: Any) -> set[str]:
    """Every Referenced SOP Instance UID (0008,1155) anywhere in a DICOM JSON object."""
    found: set[str] = set()
    if isinstance(item, dict):
        for tag, element in item.items():
            if tag == "00081155":
                found.update(element.get("Value", []))
            else:
                found |= referenced_uids(element)
    elif isinstance(item, list):
        for child in item:
            found |= referenced_uids(child)
    return found


def check_object(path: Path, kind: str) -> pydicom.Dataset:
    """dciodvfy clean, highdicom reads it back, dsrdump prints the SR tree."""
    import highdicom as hd

    assert_dicom_valid(path)
    ds = pydicom.dcmread(path)
    if kind == "seg":
        seg = hd.seg.segread(path)
        assert seg.number_of_segments >= 1
    elif kind == "sr":
        sr = hd.sr.srread(path)
        assert sr.SOPClassUID == pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.88.34")
        tree = dsrdump(path)
        assert "Imaging Measurement Report" in tree
    else:
        assert hd.Image.from_dataset(ds).get_frame(1).shape == (ds.Rows, ds.Columns)
        assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN"
    return ds
