"""Jobs: the plain functions a worker task calls (no Celery here).

``run_job`` claims a job, hands each of its spooled instances to ``process_instance`` and moves
the job to its final state. In issue 2 ``process_instance`` decodes and validates the image and
records what the models will be given (matrix, bits, photometric, transfer syntax). The worker
task passes a model step (``ribnode.workers.pipeline_step.ModelStep``): then each instance goes
through the rib pipeline and ``dicom_sr.build_outputs``, and the objects are staged and
delivered (job "exporting", then "done"), without touching the task plumbing.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ribnode.config.settings import Settings
from ribnode.node.ledger import (
    InstanceCheck,
    JobState,
    Ledger,
    SpooledInstance,
)
from ribnode.node.schema import TERMINAL_JOB_STATES
from ribnode.node.spool import Spool

if TYPE_CHECKING:
    from ribnode.models.preprocess import Radiograph
    from ribnode.dicom_sr import OutputSet
    from ribnode.workers.pipeline_step import ModelStep

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

CLAIMABLE = {JobState.RECEIVED, JobState.QUEUED, JobState.RUNNING}


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

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def process_instance(path: Path, settings: Settings) -> InstanceCheck:
    """Decode one spooled instance exactly as the models will get it
    (``ribnode.models.preprocess.read_radiograph``) and describe it. An input the models cannot
    take is returned in ``error`` (permanent: retrying cannot fix the file). A missing file
    raises OSError (transient: the spool may be on a share that is not mounted yet)."""
    from ribnode.models.preprocess import InputError, read_radiograph

    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "spool file missing (is the spool mounted here?)", str(path))
    try:
        radiograph = read_radiograph(path)
    except InputError as exc:
        return InstanceCheck(error=f"cannot decode {path.name}: {type(exc).__name__}: {exc}")
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


def _check_all(instances: list[SpooledInstance], spool: Spool, settings: Settings, ledger: Ledger,
               step: ModelStep | None = None) -> tuple[list[str], list[OutputSet]]:
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
        ledger.record_check(inst.id, check)
        if check.error:
            logger.warning("instance %s: %s", inst.sop_instance_uid, check.error)
            errors.append(f"{inst.sop_instance_uid}: {check.error}")
    return errors, output_sets


def run_job(job_id: int, settings: Settings, ledger: Ledger, step: ModelStep | None = None,
            worker: str | None = None) -> None:
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
    worker = worker or default_worker_id()
    lease_s = settings.broker.job_lease_s
    if not ledger.claim(job_id, worker, lease_s, CLAIMABLE):
        logger.info("job %d is %s, not claimable", job_id, ledger.job(job_id).state)
        return
    with LeaseHeartbeat(ledger, job_id, worker, lease_s):
        _run_claimed(job_id, settings, ledger, step)


def _run_claimed(job_id: int, settings: Settings, ledger: Ledger, step: ModelStep | None) -> None:
    """The work of a claimed job (see :func:`run_job`)."""
    instances = ledger.job_instances(job_id)
    errors, output_sets = _check_all(instances, Spool(settings.spool.directory), settings, ledger, step)
    if instances and len(errors) == len(instances):
        ledger.transition(job_id, JobState.FAILED, error="no usable instance: " + "; ".join(errors)[:4000])
        return
    if step is not None and output_sets:
        state = step.deliver(job_id, output_sets, settings, ledger)
        logger.info("job %d %s: %d instance(s) processed, %d unusable", job_id, state,
                    len(output_sets), len(errors))
        return
    summary = f"{len(errors)} of {len(instances)} instances unusable: " + "; ".join(errors) if errors else None
    ledger.transition(job_id, JobState.DONE, error=summary[:4000] if summary else None)
    logger.info("job %d done (%d instances)", job_id, len(instances))
