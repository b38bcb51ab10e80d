"""Jobs: the plain functions a worker task calls (no Celery here).

``run_job`` claims a job, hands each of its spooled instances to ``process_instance`` and moves
the job to its final state. ``process_instance`` decodes and validates the image and records
what the models will be given (matrix, bits, photometric, transfer syntax). The worker task
passes a :class:`Step` (``ribnode.workers.pipeline_step.ModelStep``): then each instance goes
through the rib pipeline and ``dicom_sr.build_outputs``, and the objects are staged and
delivered (job "exporting", then "done"), without touching the task plumbing.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from ribnode.config.settings import ModelSettings, Settings
from ribnode.ledger.schema import TERMINAL_JOB_STATES
from ribnode.ledger.store import (
    InstanceCheck,
    JobRef,
    JobState,
    Ledger,
    SpooledInstance,
)
from ribnode.node.spool import Spool

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ribnode.dicom_sr import OutputSet, ResultSeries
    from ribnode.models.preprocess import Radiograph

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

CLAIMABLE = {JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING}
DEFER_BYTES = 64 * 1024  # values larger than this are read from the spool file when used


@dataclass(frozen=True)
class InstanceOutcome:
    """What a step made of one instance: the ledger check, and the objects (or None when the
    input cannot be used; ``check.error`` says why)."""

    check: InstanceCheck
    outputs: OutputSet | None = None
    seconds: float = 0.0
    # (model, version, seconds) of each model that ran: the ledger's ``model_runs``
    model_seconds: tuple[tuple[str, str, float], ...] = ()


class Step(Protocol):
    """What :func:`run_job` hands a job's instances to (the worker task passes
    ``ribnode.workers.pipeline_step.ModelStep``)."""

    def result_series(self, paths: Sequence[Path]) -> ResultSeries:
        """The job's result series, from the headers of all its instances."""
        ...

    def __call__(
        self, path: Path, settings: Settings, series: ResultSeries | None = None, ledger: Ledger | None = None
    ) -> InstanceOutcome:
        """One spooled instance: its check and the objects made of it."""
        ...

    def deliver(self, job_id: int, output_sets: Sequence[OutputSet], settings: Settings, ledger: Ledger) -> str:
        """Stage and deliver the job's objects; the job's state afterwards."""
        ...


def default_worker_id() -> str:
    """Who holds a job when no Celery node name is given: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseHeartbeat:
    """Renews ``worker``'s lease on a running job every third of ``lease_s`` in a daemon
    thread while the job runs (``with LeaseHeartbeat(...)``). If the worker process dies the
    renewals stop, the lease expires and a sweeper sends the job again
    (:meth:`Ledger.reclaim_running`). A failed renewal (ledger briefly unreachable) is logged
    and tried again at the next beat."""

    def __init__(self, ledger: Ledger, job_id: int, worker: str, lease_s: float) -> None:
        self.ledger, self.job_id, self.worker, self.lease_s = ledger, job_id, worker, lease_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-job-{job_id}", daemon=True)

    def _beat(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.ledger.renew_lease(self.job_id, self.worker, self.lease_s):
                    return  # no longer running for this worker: nothing left to hold
            except SQLAlchemyError as exc:
                logger.warning("job %d: lease renewal failed (%s); next beat tries again", self.job_id, exc)

    def __enter__(self) -> LeaseHeartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class UnusableInputError(ValueError):
    """An instance the models cannot be given: not DICOM, a malformed header, a pixel stream
    whose own header disagrees with the DICOM header (``decode_guard``), a decoder error or a
    decode warning, not a chest radiograph. Permanent: the file will not change, so the job is
    never retried for it."""


def decode_for_models(path: Path, settings: Settings | None) -> tuple[Dataset, Radiograph]:
    """Read and decode one spooled instance as the models get it, within bounds.

    Order: the file is parsed; the compressed stream's own header is checked against Rows,
    Columns, Bits Allocated and Samples per Pixel and the matrix against ``models.max_pixels``
    (:func:`ribnode.workers.decode_guard.check_pixel_stream`), *before* any decoder allocates;
    then ``preprocess.read_radiograph`` decodes it. Every error of the file is an
    :class:`UnusableInputError` (permanent). What is not the file's fault is raised as it is and
    retried: a missing or unreadable spool file (OSError with an errno: the share may not be
    mounted yet) and MemoryError (a worker short of memory)."""
    import pydicom
    from celery.exceptions import SoftTimeLimitExceeded

    from ribnode.dicom_checks import check_declared_lengths
    from ribnode.models.preprocess import read_radiograph
    from ribnode.workers.decode_guard import check_pixel_stream

    max_pixels = settings.models.max_pixels if settings is not None else ModelSettings().max_pixels
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "spool file missing (is the spool mounted here?)", str(path))
    try:
        # Large values stay on disk until the element lengths are checked against the file: a
        # Pixel Data whose length lies (4 GB in an 8 MB file) would make the read ask for it.
        source = pydicom.dcmread(path, defer_size=DEFER_BYTES)
        check_declared_lengths(source, path.stat().st_size)
        check_pixel_stream(source, max_pixels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            radiograph = read_radiograph(source, max_pixels=max_pixels)
        _refuse_decode_warnings(caught)
    except (MemoryError, UnusableInputError, SoftTimeLimitExceeded):
        raise  # memory and the task's time limit are not the file's fault
    except OSError as exc:
        if exc.errno is not None:
            raise  # the spool, not the file: transient
        raise UnusableInputError(f"cannot decode {path.name}: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # pydicom and the decoders raise many types; all mean "this file"
        raise UnusableInputError(f"cannot decode {path.name}: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise  # KeyboardInterrupt, SystemExit, a worker being terminated
        # a Rust decoder (pylibjpeg-rle) that panics on a corrupted stream raises
        # pyo3_runtime.PanicException, a BaseException that no `except Exception` catches
        raise UnusableInputError(f"cannot decode {path.name}: the decoder panicked: {exc}") from exc
    return source, radiograph


# pydicom's header value checks ("Invalid value for VR CS: 'Chest'") are not decode warnings.
_HEADER_WARNINGS = ("Invalid value for VR", "Invalid value '")


def _refuse_decode_warnings(caught: list[warnings.WarningMessage]) -> None:
    """A decoder's warning (a truncated or corrupted stream, a Pixel Data length that
    disagrees, padding removed) means the image is doubtful: refuse it rather than run the
    models on it."""
    doubts = [str(w.message) for w in caught if not str(w.message).startswith(_HEADER_WARNINGS)]
    if doubts:
        raise UnusableInputError("decode warning: " + "; ".join(doubts)[:1000])


def process_instance(path: Path, settings: Settings | None) -> InstanceCheck:
    """Decode one spooled instance exactly as the models will get it
    (:func:`decode_for_models`) and describe it. An input the models cannot take is returned
    in ``error`` (permanent: retrying cannot fix the file). A missing file raises OSError
    (transient: the spool may be on a share that is not mounted yet)."""
    try:
        _source, radiograph = decode_for_models(path, settings)
    except UnusableInputError as exc:
        return InstanceCheck(error=str(exc))
    return describe_radiograph(radiograph)


def describe_radiograph(radiograph: Radiograph) -> InstanceCheck:
    """The ledger's record of a decoded image: what the models are (or would be) given."""
    rows, columns = radiograph.stored.shape
    return InstanceCheck(
        rows=rows,
        columns=columns,
        bits_stored=radiograph.bits_stored,
        photometric=radiograph.photometric,
        transfer_syntax_uid=radiograph.transfer_syntax,
        number_of_frames=1,  # read_radiograph refuses multi-frame input
    )


def _check_all(
    instances: list[SpooledInstance], spool: Spool, settings: Settings, ledger: Ledger, step: Step | None = None
) -> tuple[list[str], list[OutputSet]]:
    """Process each instance (through ``step`` when given), record what was found; return the
    errors and the objects built."""
    errors: list[str] = []
    output_sets: list[OutputSet] = []
    # One SC, SEG and SR series for all the job's sources (docs/dicom-conformance.md 2.1).
    series = step.result_series([spool.path(i.path) for i in instances]) if step else None
    for inst in instances:
        if step is None:
            check = process_instance(spool.path(inst.path), settings)
        else:
            outcome = step(spool.path(inst.path), settings, series, ledger)
            check = outcome.check
            if outcome.outputs is not None:
                output_sets.append(outcome.outputs)
            ledger.record_model_runs(inst.id, outcome.model_seconds)
        ledger.record_check(inst.id, check)
        if check.error:
            logger.warning("instance %s: %s", inst.sop_instance_uid, check.error)
            errors.append(f"{inst.sop_instance_uid}: {check.error}")
    return errors, output_sets


def run_job(
    job_id: int, settings: Settings, ledger: Ledger, step: Step | None = None, worker: str | None = None
) -> None:
    """Run one job to "done" (or "failed" when no instance can be used). Idempotent: a job
    already finished is left alone, so a duplicate delivery does nothing.

    The job is claimed for ``worker`` (the Celery node name; default host:pid) with a lease of
    ``broker.job_lease_s`` that a heartbeat renews while it runs: if this process dies, the
    lease expires and the job is sent again.

    With ``step`` (the worker task always passes one) the usable instances go through the
    models and their objects are delivered: the job goes "exporting", then "done" (or stays
    "exporting" while a destination is retried). Without it, the instances are only decoded
    and validated."""
    job = ledger.job(job_id)
    if job.state in TERMINAL_JOB_STATES:
        logger.info("job %d already %s: nothing to do", job_id, job.state)
        return
    if _deliveries_spent(job, settings, ledger):
        return
    worker = worker or default_worker_id()
    lease_s = settings.broker.job_lease_s
    if not ledger.claim(job_id, worker, lease_s, CLAIMABLE):
        logger.info("job %d is %s, not claimable", job_id, ledger.job(job_id).state)
        return
    with LeaseHeartbeat(ledger, job_id, worker, lease_s):
        _run_claimed(job_id, settings, ledger, step)


def _deliveries_spent(job: JobRef, settings: Settings, ledger: Ledger) -> bool:
    """Fail a job that workers took ``broker.max_retries + 1`` times without finishing: each
    time its worker process died (killed for memory while decoding, or the time limit), so
    the task never reached its retry handler. The count is the ledger's, so a re-delivered or
    re-sent message cannot reset it."""
    limit = settings.broker.max_retries + 1
    if job.attempts < limit or job.state not in CLAIMABLE:
        return False  # an exporting job went past the models: its deliveries retry on their own
    error = (
        f"could not be decoded safely: taken {job.attempts} times and its worker never "
        "finished it (killed: out of memory or the time limit?)"
    )
    if ledger.transition(job.id, JobState.FAILED, error=error, from_states=set(CLAIMABLE)):
        logger.error("job %d: %s", job.id, error)
    return True


def _run_claimed(job_id: int, settings: Settings, ledger: Ledger, step: Step | None) -> None:
    """The work of a claimed job (see :func:`run_job`)."""
    instances = ledger.job_instances(job_id)
    errors, output_sets = _check_all(instances, Spool(settings.spool.directory), settings, ledger, step)
    if instances and len(errors) == len(instances):
        ledger.transition(job_id, JobState.FAILED, error="no usable instance: " + "; ".join(errors)[:4000])
        return
    if step is not None and output_sets:
        state = step.deliver(job_id, output_sets, settings, ledger)
        logger.info("job %d %s: %d instance(s) processed, %d unusable", job_id, state, len(output_sets), len(errors))
        return
    summary = f"{len(errors)} of {len(instances)} instances unusable: " + "; ".join(errors) if errors else None
    ledger.transition(job_id, JobState.DONE, error=summary[:4000] if summary else None)
    logger.info("job %d done (%d instances)", job_id, len(instances))
