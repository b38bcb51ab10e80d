"""Helpers for the node and workers tests: settings on temporary folders, a running listener,
small synthetic DICOM instances, and waiting for ledger states."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

from ribnode.config.settings import Settings, load_settings
from ribnode.ledger.store import Ledger
from ribnode.node.listener import DicomListener

CALLING_AETS = ("STORESCU", "ECHOSCU", "ORTHANC", "PYNETDICOM", "BENCH")
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"

T = TypeVar("T")


def make_settings(tmp: Path, port: int, **overrides: Any) -> Settings:
    """Settings on folders under ``tmp``: SQLite ledger, filesystem broker, known senders."""
    base: dict[str, Any] = {
        "listener.port": port,
        "listener.allowed_senders": [{"ae_title": a} for a in CALLING_AETS],
        "spool.directory": str(tmp / "spool"),
        "spool.quiet_period_s": 0.5,
        "spool.completion_poll_s": 0.1,
        "ledger.url": f"sqlite:///{tmp / 'ledger.sqlite'}",
        "broker.folder": str(tmp / "broker"),
        "broker.enqueue_retry_s": 0.5,
        "var_dir": str(tmp),
        "export.destinations": [{"name": "local", "kind": "folder", "path": str(tmp / "outbox")}],
        "export.staging_dir": str(tmp / "outputs"),
    }
    base.update(overrides)
    return load_settings(overrides=base)


@contextmanager
def running_listener(settings: Settings, ledger: Ledger | None = None) -> Iterator[DicomListener]:
    """A started listener (and its ledger) for the duration of the block."""
    ledger = ledger or Ledger(settings.ledger.url)
    listener = DicomListener(settings, ledger)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()


def dx_dataset(
    study_uid: str | None = None,
    rows: int = 64,
    columns: int = 64,
    seed: int = 0,
    **attrs: Any,
) -> Dataset:
    """A small valid DX chest instance (MONOCHROME2, 12 bits in 16) with new UIDs."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "RIBNODE-TEST"
    ds.PatientName = "Test^Synthetic"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, (rows, columns), dtype=np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def chest_pixels(rows: int, columns: int, seed: int = 0) -> bytes:
    """Pixel Data of a synthetic chest (``ribnode.phantom``) for ``dx_dataset``'s 12 bits:
    an image the models' input gate takes for a frontal chest radiograph."""
    from ribnode.phantom import generate_chest

    image = generate_chest(seed, (rows, columns)).radiograph
    return np.round(np.clip(image, 0, 1) * 4095).astype(np.uint16).tobytes()


def write_dataset(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (with preamble and file meta)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def wait_for(predicate: Callable[[], T | None], timeout_s: float = 30.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def c_store(
    port: int,
    sources: list[Dataset | Path],
    calling_aet: str = "PYNETDICOM",
    called_aet: str = "RIBNODE",
    ssl_context: Any = None,
) -> list[int]:
    """Send instances with a pynetdicom SCU (files are sent as they are, undecoded); return
    the C-STORE status of each. Raises AssertionError when the association is refused."""
    from pydicom import dcmread
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    pairs = set()
    for source in sources:
        meta = source.file_meta if isinstance(source, Dataset) else dcmread(source, stop_before_pixels=True).file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(pairs):  # one context per pair: the data is sent as it is
        ae.add_requested_context(sop_class, [syntax])
    tls_args = (ssl_context, "localhost") if ssl_context is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet, tls_args=tls_args)
    if not assoc.is_established:
        raise AssertionError(f"association from {calling_aet} to port {port} not established")
    try:
        statuses = []
        for source in sources:
            status = assoc.send_c_store(source)
            statuses.append(int(status.Status) if "Status" in status else -1)
        return statuses
    finally:
        assoc.release()


class RedisProcess:
    """A private redis-server on a port of our own, to stop and start in a test."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.process: Any = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        import socket
        import subprocess

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        wait_for(ready, 20, f"redis-server on port {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


class ValidationStep:
    """The issue-2 step of a job (decode and describe each instance, build nothing), installed
    where the worker keeps its model step, so the plumbing tests do not depend on the model
    weights; the model step itself is tested by the pipeline and end-to-end tests."""

    def __init__(self, settings: Settings) -> None:
        self.models = settings.models.model_copy(deep=True)

    @staticmethod
    def result_series(paths: Any) -> None:
        return None

    def __call__(self, path: Path, settings: Settings, *args: Any) -> Any:
        from ribnode.workers.jobs import InstanceOutcome, process_instance

        return InstanceOutcome(process_instance(path, settings))

    def deliver(self, *args: Any) -> str:
        raise AssertionError("the validation step builds no objects to deliver")


@contextmanager
def celery_worker(app: Any, settings: Settings, models: bool = False) -> Iterator[None]:
    """A real Celery worker (solo pool) consuming ribnode's queues in this process; without
    ``models`` its jobs only validate (see :class:`ValidationStep`)."""
    from celery.contrib.testing.worker import start_worker

    import ribnode.workers.tasks  # noqa: F401  (registers the task with the app)
    from ribnode.workers.pipeline_step import APP_ATTRIBUTE

    if not models:
        setattr(app, APP_ATTRIBUTE, ValidationStep(settings))

    with start_worker(
        app,
        pool="solo",
        perform_ping_check=False,
        shutdown_timeout=20,
        queues=[settings.broker.gpu_queue, settings.broker.cpu_queue],
    ):
        yield
