"""The model step of a job (``ribnode.workers.pipeline_step``) with the real models: a usable
instance becomes three staged and delivered objects, an unusable one is recorded with its
reason, a job with nothing usable fails, and the models are loaded once per worker process."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from ribnode.config.settings import Settings
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import JobRef, JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.phantom import generate_chest, write_dicom_study
from ribnode.workers.jobs import run_job
from ribnode.workers.pipeline_step import ModelStep, model_step
from tests.e2e.helpers import e2e_settings, require_weights
from tests.node.helpers import c_store, dx_dataset, running_listener


@pytest.fixture(scope="module")
def step(tmp_path_factory: pytest.TempPathFactory) -> ModelStep:
    """One model step (the models loaded once for the module)."""
    require_weights()
    return ModelStep(e2e_settings(tmp_path_factory.mktemp("models")))


def _job(settings: Settings, ledger: Ledger, sources: list[pydicom.Dataset | Path]) -> JobRef:
    """Receive ``sources`` and let the study complete into one job."""
    with running_listener(settings, ledger) as listener:
        assert c_store(listener.port, sources) == [0] * len(sources)
    time.sleep(settings.spool.quiet_period_s + 0.05)
    [job] = StudyCompletion(settings, ledger, lambda j: f"t{j.id}").tick()
    return job


def _synthetic(tmp: Path, seed: int) -> Path:
    [path] = write_dicom_study(generate_chest(seed, (320, 288)), tmp / f"s{seed}", seed)
    return path


def _settings(tmp: Path, step: ModelStep) -> Settings:
    settings = e2e_settings(tmp)
    return settings.model_copy(update={"models": step.models})


def test_usable_instance_is_delivered_and_unusable_one_recorded(step: ModelStep, tmp_path: Path) -> None:
    settings = _settings(tmp_path, step)
    ledger = Ledger(settings.ledger.url)
    good = _synthetic(tmp_path, 3)
    study_uid = str(pydicom.dcmread(good, stop_before_pixels=True).StudyInstanceUID)
    tiny = dx_dataset(study_uid=study_uid, rows=40, columns=50)  # below the models' 64 px
    job = _job(settings, ledger, [good, tiny])
    run_job(job.id, settings, ledger, step=step)

    assert [t.to_state for t in ledger.transitions(job.id)] == ["received", "queued", "running", "exporting", "done"]
    assert "ImageSizeError" in ledger.instance(tiny.SOPInstanceUID).error
    good_uid = str(pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    row = ledger.instance(good_uid)
    assert row.error is None and (row.rows, row.columns) == (320, 288)
    outputs = DeliveryLedger(ledger).outputs(job.id)
    assert sorted(o.kind for o in outputs) == ["sc", "seg", "sr"]
    assert {o.source_sop_instance_uid for o in outputs} == {good_uid}
    assert all(len(o.weights_sha256) == 64 and o.model_name.startswith("ribnode") for o in outputs)
    delivered = sorted((tmp_path / "outbox").rglob("*.dcm"))
    assert len(delivered) == 3
    # A duplicate delivery of the task changes nothing.
    run_job(job.id, settings, ledger, step=step)
    assert len(DeliveryLedger(ledger).outputs(job.id)) == 3
    ledger.dispose()


def test_job_with_nothing_usable_fails_with_the_reason(step: ModelStep, tmp_path: Path) -> None:
    settings = _settings(tmp_path, step)
    ledger = Ledger(settings.ledger.url)
    tiny = dx_dataset(rows=40, columns=50)
    job = _job(settings, ledger, [tiny])
    run_job(job.id, settings, ledger, step=step)
    row = ledger.job_row(job.id)
    assert row.state == JobState.FAILED
    assert "no usable instance" in row.last_error and "ImageSizeError" in row.last_error
    assert DeliveryLedger(ledger).outputs(job.id) == []
    ledger.dispose()


def test_models_are_loaded_once_per_process_and_rebuilt_on_new_settings(tmp_path: Path) -> None:
    require_weights()
    app = SimpleNamespace()  # stands for the Celery app object of one worker process
    settings = e2e_settings(tmp_path)
    first = model_step(app, settings)
    assert model_step(app, settings) is first
    changed = e2e_settings(tmp_path, **{"models.suppression_steps": 3})
    second = model_step(app, changed)
    assert second is not first and second.pipeline.suppressor.steps == 3
    assert model_step(app, changed) is second
