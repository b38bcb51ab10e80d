"""The model step of a job: one spooled radiograph -> the rib pipeline -> the three DICOM objects.

``run_job`` (``ribnode.workers.jobs``) calls a :class:`ModelStep` for each routed instance of
a job and hands the objects it built to :meth:`ModelStep.deliver`, which stages them (ledger
``output_objects``, job "exporting") and makes the first delivery attempt
(:func:`deliver_outputs`); retries go to the export task on the CPU queue
(``ribnode.workers.tasks.export_job_task``).

The models are loaded once per worker process: :func:`model_step` keeps the step on the Celery
app object of that process (built after the prefork pool forked, on the first job), never in a
module global.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pydicom.errors
import pydicom.valuerep
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError

from ribnode.config.settings import ModelSettings, Settings
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import InstanceCheck, Ledger
from ribnode.node.export import ExportReport, OutputSetLike, export_job, stage_outputs
from ribnode.workers.jobs import InstanceOutcome, UnusableInputError, decode_for_models, describe_radiograph
from ribnode.workers.queue import schedule_export

if TYPE_CHECKING:
    from ribnode.dicom_sr import OutputSet, ResultSeries
    from ribnode.models.info import SegmentationResult, SuppressionResult
    from ribnode.models.pipeline import PipelineOutput, RibPipeline

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

APP_ATTRIBUTE = "ribnode_model_step"


def describe(output: PipelineOutput) -> InstanceCheck:
    """The ledger's record of what the models were given."""
    return describe_radiograph(output.radiograph)


class ModelStep:
    """The rib pipeline and ``dicom_sr.build_outputs`` for one worker process.

    ``app`` is the Celery app used to schedule export retries (None: retries are left to
    ``requeue_due_exports``, e.g. when called outside a worker).
    """

    def __init__(self, settings: Settings, app: Any = None, pipeline: RibPipeline | None = None) -> None:
        from ribnode.models.pipeline import RibPipeline

        start = time.perf_counter()
        self.models: ModelSettings = settings.models.model_copy(deep=True)
        self.pipeline = pipeline if pipeline is not None else RibPipeline(settings.models)
        self.app = app
        seg, sup = self.pipeline.models
        logger.info(
            "models loaded in %.2f s: %s %s (%s), %s %s (%s, %d steps)",
            time.perf_counter() - start,
            seg.name,
            seg.version,
            seg.weights_sha256[:12],
            sup.name,
            sup.version,
            sup.weights_sha256[:12],
            self.pipeline.suppressor.steps,
        )

    @staticmethod
    def result_series(paths: Sequence[Path]) -> ResultSeries:
        """The result series of a job: the views of all its instances (headers only), so that
        every source of the job lands in one SC, one SEG and one SR series."""
        from ribnode.dicom_sr import result_series

        headers = []
        for path in paths:
            try:
                headers.append(pydicom.dcmread(path, stop_before_pixels=True))
            except (OSError, pydicom.errors.InvalidDicomError) as exc:
                logger.warning("%s: header unreadable for the series description (%s)", path, exc)
        return result_series(headers)

    def __call__(
        self, path: Path, settings: Settings, series: ResultSeries | None = None, ledger: Ledger | None = None
    ) -> InstanceOutcome:
        """Run the models on one spooled instance and build its SC, SEG and SR.

        ``series``: the job's result series (:meth:`result_series`); ``ledger``: where the
        objects of earlier runs on this instance are looked up, so a re-run names what it
        replaces. The instance is decoded within bounds first (:func:`jobs.decode_for_models`:
        the compressed stream's header is checked before any decoder runs). An input the models
        cannot take is returned in ``check.error``: permanent, retrying cannot fix the file; an
        image that is not a frontal chest radiograph (the segmentation's input gate) ends as
        "ignored: not a frontal chest radiograph". A missing file raises ``OSError`` and a model
        error raises as it is (transient: retried with the attempt count kept in the ledger).
        """
        from ribnode.models.preprocess import NotAChestError

        start = time.perf_counter()
        try:
            source, radiograph = decode_for_models(path, settings)
        except UnusableInputError as exc:  # permanent: the job never retries for this file
            return InstanceOutcome(InstanceCheck(error=str(exc)))
        try:
            output = self.pipeline(radiograph)  # a model error is not the file's: retried
        except NotAChestError as exc:  # permanent, and nothing may be made of it
            return InstanceOutcome(InstanceCheck(error=f"ignored: {exc}"))
        try:
            outputs = build_job_outputs(source, output.segmentation, output.suppression, settings, series, ledger)
        except ValueError as exc:  # a source dicom_sr cannot derive from (named in the message)
            return InstanceOutcome(InstanceCheck(error=f"cannot build outputs for {path.name}: {exc}"))
        seconds = time.perf_counter() - start
        logger.info(
            "instance %s: models %.2f s (segmentation %.2f, suppression %.2f), objects %.2f s",
            source.SOPInstanceUID,
            output.seconds,
            output.segmentation_seconds,
            output.suppression_seconds,
            seconds - output.seconds,
        )
        seg, sup = self.pipeline.models
        timed = (
            ("segmentation", seg.version, output.segmentation_seconds),
            ("suppression", sup.version, output.suppression_seconds),
        )
        return InstanceOutcome(describe(output), outputs, seconds, timed)

    def deliver(self, job_id: int, output_sets: Sequence[OutputSet], settings: Settings, ledger: Ledger) -> str:
        """Stage the objects (job "exporting"), attempt delivery now, and schedule any retry on
        the CPU queue. Returns the job's state afterwards."""
        if self.app is not None:
            report = deliver_outputs(self.app, job_id, output_sets, settings, ledger)
            return report.state
        stage_outputs(job_id, output_sets, settings, ledger)
        return export_job(job_id, settings, ledger).state


def deliver_outputs(
    app: Celery,
    job_id: int,
    output_sets: Sequence[OutputSetLike],
    settings: Settings,
    ledger: Ledger,
) -> ExportReport:
    """What the model job calls once its objects are built: stage them, deliver now (no broker
    round trip on the fast path), and leave any retry to the export task.

    The job ends "done" or "dead" here, or stays "exporting" with the export task scheduled for
    the next due attempt. A broker that is down at that moment loses nothing: the deliveries
    are due in the ledger and :func:`ribnode.workers.sweeps.requeue_due_exports` finds them.
    """
    stage_outputs(job_id, output_sets, settings, ledger)
    report = export_job(job_id, settings, ledger)
    if report.retry_in_s is not None:
        try:
            schedule_export(app, settings, job_id, countdown_s=max(0.05, report.retry_in_s))
        except BrokerError as exc:
            logger.error(
                "job %d: cannot schedule the export retry (%s); it stays exporting until a sweep re-enqueues it",
                job_id,
                exc,
            )
    return report


def build_job_outputs(
    source: pydicom.Dataset,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    settings: Settings,
    series: ResultSeries | None = None,
    ledger: Ledger | None = None,
) -> OutputSet:
    """``dicom_sr.build_outputs`` as a job calls it: in the job's result series, naming what
    earlier runs on this source made (from the ledger), and with an earlier run's time for
    each object it already made, so the same content is the same object, byte for byte."""
    from ribnode.dicom_sr import build_outputs

    previous = DeliveryLedger(ledger).earlier_outputs(str(source.SOPInstanceUID)) if ledger is not None else {}
    outputs = build_outputs(source, segmentation, suppression, settings.outputs, series=series, previous=previous)
    earlier = earlier_times(outputs, previous, Path(settings.export.staging_dir))
    if earlier:
        outputs = build_outputs(
            source, segmentation, suppression, settings.outputs, created=earlier, series=series, previous=previous
        )
    return outputs


def earlier_times(
    outputs: OutputSet,
    previous: Mapping[str, Sequence[Mapping[str, str]]],
    staging: Path,
) -> dict[str, datetime.datetime]:
    """For each object an earlier run already made (same SOP Instance UID: same content), the
    time it was made, read back from its staged copy (Contribution DateTime, which
    ``dicom_sr`` pins to the run's time). Rebuilt with these times the objects are
    byte-identical to the earlier ones, as a PACS that already holds them expects."""
    times: dict[str, datetime.datetime] = {}
    for kind, dataset in zip(("sc", "seg", "sr"), outputs.datasets()):
        for record in previous.get(kind, ()):
            if record.get("sop_instance_uid") != str(dataset.SOPInstanceUID):
                continue
            try:
                staged = pydicom.dcmread(staging / record["path"], stop_before_pixels=True)
                value = next(
                    item.ContributionDateTime
                    for item in staged.ContributingEquipmentSequence
                    if "ContributionDateTime" in item
                )
                times[kind] = pydicom.valuerep.DT(str(value))
            except (
                OSError,
                KeyError,
                AttributeError,
                StopIteration,
                ValueError,
                pydicom.errors.InvalidDicomError,
            ) as exc:
                logger.warning(
                    "earlier %s %s: its time is unreadable (%s); written anew", kind, dataset.SOPInstanceUID, exc
                )
            break
    return times


def model_step(app: Any, settings: Settings) -> ModelStep:
    """The model step of this worker process, built on first use and kept on ``app``.

    Rebuilt when the model settings changed (another weights file, steps or device), so a
    process never runs models that its settings do not name.
    """
    step: ModelStep | None = getattr(app, APP_ATTRIBUTE, None)
    if step is None or step.models != settings.models:
        step = ModelStep(settings, app)
        setattr(app, APP_ATTRIBUTE, step)
    return step
