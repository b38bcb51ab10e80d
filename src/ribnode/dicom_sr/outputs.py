"""Build the three objects written back for one source radiograph: SC, SEG and SR.

``build_outputs`` is the one entry point the worker calls. It is a pure function of its inputs
(and ``created``). Every UID derives from a content key over everything that changes the object's
bytes (:func:`content_keys`): the same inputs and settings give the same UIDs, so a re-sent object
is the same object; different content gives different UIDs, in a new series, so a PACS that keeps
the first copy of a UID never hides a changed result behind it.

Series (docs/dicom-conformance.md 2.1): one per output kind per study and configuration: every
source image of a job shares the SC series, the SEG series and the SR series, whose descriptions
name the source views (:class:`ResultSeries`).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydicom
from highdicom._standard_utils import get_sop_class_iod_map

from ribnode import __version__ as RIBNODE_VERSION
from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import sc as sc_module
from ribnode.dicom_sr import seg as seg_module
from ribnode.dicom_sr import sr as sr_module
from ribnode.dicom_sr.provenance import (
    ProcessingContext,
    add_private_block,
    model_record,
)
from ribnode.dicom_sr.uids import (
    array_digest,
    combined_sha256,
    content_key,
    content_uid,
    device_observer_uid,
)
from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputSet:
    """The three datasets for one source instance, and their provenance records.

    ``provenance`` maps the kind ("sc", "seg", "sr") to a JSON-able record; the node ledger
    stores it in ``output_objects`` and the private block of each object repeats it.
    """

    sc: pydicom.Dataset
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    provenance: dict[str, Any] = field(default_factory=dict)

    def datasets(self) -> list[pydicom.Dataset]:
        """SC, SEG, SR: the order to send them in (the SR references the other two)."""
        return [self.sc, self.seg, self.sr]


def _check_inputs(source: pydicom.Dataset, segmentation: SegmentationResult, suppression: SuppressionResult) -> str:
    for keyword in (
        "SOPInstanceUID",
        "SOPClassUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "PhotometricInterpretation",
    ):
        if keyword not in source:
            raise ValueError(f"source dataset has no {keyword}; it cannot be a radiograph")
    if str(source.SOPClassUID) not in get_sop_class_iod_map():
        raise ValueError(
            f"source SOP Class {source.SOPClassUID} is not a standard image storage class; expected CR or DX"
        )
    if segmentation.mask.shape != suppression.soft_stored.shape:
        raise ValueError(
            f"mask shape {segmentation.mask.shape} differs from the suppressed image's {suppression.soft_stored.shape}"
        )
    return str(source.SOPInstanceUID)


def _record(
    kind: str,
    dataset: pydicom.Dataset,
    source_uid: str,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    created: datetime.datetime,
) -> dict[str, Any]:
    models: dict[str, list[ModelInfo]] = {
        "sc": [suppression.model, segmentation.model],
        "seg": [segmentation.model],
        "sr": [segmentation.model, suppression.model],
    }
    return {
        "kind": kind,
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "series_instance_uid": str(dataset.SeriesInstanceUID),
        "study_instance_uid": str(dataset.StudyInstanceUID),
        "sop_class_uid": str(dataset.SOPClassUID),
        "source_sop_instance_uid": source_uid,
        "models": [model_record(model) for model in models[kind]],
        "seed": suppression.seed if kind != "seg" else None,
        "steps": suppression.steps if kind != "seg" else None,
        "working_size": suppression.working_size if kind != "seg" else None,
        "created": created.isoformat(),
    }


#: What a source's view is called in the series descriptions when it names none.
UNKNOWN_VIEW = "view n/a"


def source_view(source: pydicom.Dataset) -> str:
    """The source's view, as the series descriptions name it: View Position (PA, AP, LL...),
    with the Image Laterality when it has one, else :data:`UNKNOWN_VIEW`."""
    view = str(source.get("ViewPosition", "") or "").strip()
    laterality = str(source.get("ImageLaterality", "") or "").strip()
    if not view:
        return UNKNOWN_VIEW
    return f"{view} {laterality}" if laterality and laterality != "U" else view


@dataclass(frozen=True)
class ResultSeries:
    """What the result series of one run over a study share: the source views of the run.

    The worker builds one from every source image of the job (:func:`result_series`); then all
    of them land in one SC, one SEG and one SR series. Left out, it is the one source's view.
    """

    views: tuple[str, ...] = ()

    def describe(self, base: str) -> str:
        """Series Description (LO, 64 characters): ``base`` and the views, e.g. "... PA, LL"."""
        views = ", ".join(self.views) if self.views else UNKNOWN_VIEW
        text = f"{base} {views}"
        return text if len(text) <= 64 else text[:61] + "..."


def result_series(sources: Sequence[pydicom.Dataset]) -> ResultSeries:
    """The result series of a run over ``sources`` (headers suffice): their distinct views."""
    return ResultSeries(tuple(sorted({source_view(source) for source in sources})))


def _source_digest(source: pydicom.Dataset) -> str:
    """SHA-256 of the source's header (every element but Pixel Data, nested ones included, and
    its transfer syntax): what the outputs copy from it."""
    parts = [
        f"{element.tag}|{element.VR}|{element.value!r}" for element in source.iterall() if element.tag != 0x7FE00010
    ]
    file_meta = getattr(source, "file_meta", None)
    parts.append(str(getattr(file_meta, "TransferSyntaxUID", "")) if file_meta is not None else "")
    return content_key({"header": parts})


def content_keys(
    source: pydicom.Dataset,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    settings: OutputSettings,
    series: ResultSeries,
) -> dict[str, str]:
    """Content key of each series and object (docs/dicom-conformance.md 2.1).

    ``<kind>.series``: the study, the ribnode version, the output settings, the models of that
    kind (name, version, weights, parameters), the run's steps and working size, the views.
    ``<kind>``: its series key, the source's header and SOP Instance UID, the seed, and a digest
    of the arrays the object is written from (SEG: the structure masks; SC: the suppressed
    pixels; SR: the masks and the bone layer, and the SC and SEG keys).
    """
    seg_models = [model_record(segmentation.model)]
    both_models = [model_record(segmentation.model), model_record(suppression.model)]
    run = {"steps": suppression.steps, "working_size": suppression.working_size}
    common = {
        "study": str(source.StudyInstanceUID),
        "ribnode": RIBNODE_VERSION,
        "outputs": settings.model_dump(mode="json"),
        "views": list(series.views),
    }
    keys = {
        "seg.series": content_key({**common, "kind": "seg", "models": seg_models}),
        "sc.series": content_key({**common, "kind": "sc", "models": both_models, "run": run}),
        "sr.series": content_key({**common, "kind": "sr", "models": both_models, "run": run}),
    }
    instance = {"source_uid": str(source.SOPInstanceUID), "source": _source_digest(source)}
    masks = [mask for _, mask in seg_module.present_structures(segmentation)]
    names = [spec.structure for spec, _ in seg_module.present_structures(segmentation)]
    keys["seg"] = content_key(
        {
            **instance,
            "series": keys["seg.series"],
            "structures": names,
            "arrays": array_digest(*[m.astype(bool) for m in masks]),
        }
    )
    keys["sc"] = content_key(
        {
            **instance,
            "series": keys["sc.series"],
            "seed": suppression.seed,
            "arrays": array_digest(suppression.soft_stored),
        }
    )
    keys["sr"] = content_key(
        {
            **instance,
            "series": keys["sr.series"],
            "seed": suppression.seed,
            "seg": keys["seg"],
            "sc": keys["sc"],
            "arrays": array_digest(suppression.bone),
        }
    )
    return keys


def output_uids(
    keys: Mapping[str, str],
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    series: ResultSeries,
    predecessor: dict[str, str] | None = None,
) -> tuple[sc_module.ScUids, seg_module.SegUids, sr_module.SrUids]:
    """Every UID of the three objects from their content keys (:func:`content_keys`)."""
    structures = [spec.structure for spec, _ in seg_module.present_structures(segmentation)]
    tracking = {name: content_uid(keys["seg"], f"sr.tracking.{name}") for name in structures}
    sc = sc_module.ScUids(
        content_uid(keys["sc.series"], "sc.series"),
        content_uid(keys["sc"], "sc"),
        series.describe(sc_module.SERIES_DESCRIPTION),
    )
    seg = seg_module.SegUids(
        content_uid(keys["seg.series"], "seg.series"),
        content_uid(keys["seg"], "seg"),
        content_uid(keys["seg"], "seg.dimension"),
        series.describe(seg_module.SERIES_DESCRIPTION),
        tracking,
    )
    both = combined_sha256(segmentation.model.weights_sha256, suppression.model.weights_sha256)
    sr = sr_module.SrUids(
        content_uid(keys["sr.series"], "sr.series"),
        content_uid(keys["sr"], "sr"),
        tracking,
        device_observer_uid(both),
        series.describe(sr_module.SERIES_DESCRIPTION),
        predecessor,
    )
    return sc, seg, sr


def _predecessor(
    previous: Mapping[str, Sequence[Mapping[str, str]]] | None,
    kind: str,
    own_uid: str,
) -> dict[str, str] | None:
    """The newest earlier object of ``kind`` for this source that is not this one."""
    for record in (previous or {}).get(kind, ()):
        if record.get("sop_instance_uid") != own_uid:
            return dict(record)
    return None


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): a
# modality may leave them out, but every output must carry them (empty when unknown), and
# highdicom reads them from the source.
_PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _source_header(source: pydicom.Dataset) -> pydicom.Dataset:
    """The source's header without Pixel Data, with missing Type 2 patient/study attributes
    present and empty, so that copying them into the outputs never fails."""
    header = pydicom.Dataset()
    for element in source:
        if element.tag != 0x7FE00010:
            header.add(element)
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    for keyword in _PATIENT_STUDY_TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def build_outputs(
    source: pydicom.Dataset,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    settings: OutputSettings,
    created: datetime.datetime | Mapping[str, datetime.datetime] | None = None,
    series: ResultSeries | None = None,
    previous: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
) -> OutputSet:
    """SC, SEG and SR for ``source``, with UIDs that follow content, and provenance records.

    ``series``: the run's result series (default: this source's view alone). ``previous``: the
    objects earlier runs made from this source, by kind, newest first (each a mapping with
    ``sop_instance_uid``, ``series_instance_uid``, ``study_instance_uid``, ``sop_class_uid``);
    the new SR names the newest other SR in its Predecessor Documents Sequence, and every
    provenance record lists what it replaces.

    ``created`` (default: now) stamps the objects (Instance Creation, Content, Series and
    Contribution date/time); a mapping gives a time per kind ("sc", "seg", "sr"; missing: now),
    so that an object whose UID an earlier run already made is written with that run's time and
    is byte-identical to it (``workers.pipeline_step``).
    """
    source_uid = _check_inputs(source, segmentation, suppression)
    series = series if series is not None else result_series([source])
    keys = content_keys(source, segmentation, suppression, settings, series)
    source = _source_header(source)
    now = datetime.datetime.now().astimezone()
    times = dict(created) if isinstance(created, Mapping) else {}
    default = created if isinstance(created, datetime.datetime) else now
    context = {
        kind: ProcessingContext(
            created=times.get(kind, default),
            node_id=settings.node_id,
            content_qualification=settings.content_qualification,
            institution_name=settings.institution_name,
        )
        for kind in ("sc", "seg", "sr")
    }
    own_sr = content_uid(keys["sr"], "sr")
    sc_uids, seg_uids, sr_uids = output_uids(
        keys, segmentation, suppression, series, _predecessor(previous, "sr", own_sr)
    )
    sc = sc_module.build_sc(source, suppression, segmentation, settings, context["sc"], sc_uids)
    seg = seg_module.build_seg(source, segmentation, context["seg"], seg_uids)
    sr = sr_module.build_sr(source, seg, sc, segmentation, suppression, context["sr"], sr_uids)
    provenance = {
        kind: _record(kind, dataset, source_uid, segmentation, suppression, context[kind].created)
        for kind, dataset in (("sc", sc), ("seg", seg), ("sr", sr))
    }
    measurements = sr_module.measure_all(source, segmentation, suppression)
    provenance["sr"]["measurements"] = dataclasses.asdict(measurements[0])  # the ribs
    provenance["sr"]["structures"] = {m.structure: dataclasses.asdict(m) for m in measurements}
    for kind, dataset in (("sc", sc), ("seg", seg), ("sr", sr)):
        replaced = _predecessor(previous, kind, str(dataset.SOPInstanceUID))
        provenance[kind]["replaces"] = replaced["sop_instance_uid"] if replaced else None
    if settings.private_block:
        for kind, dataset in (("sc", sc), ("seg", seg), ("sr", sr)):
            add_private_block(dataset, provenance[kind])
    logger.info(
        "built SC %s, SEG %s, SR %s for source %s", sc.SOPInstanceUID, seg.SOPInstanceUID, sr.SOPInstanceUID, source_uid
    )
    return OutputSet(sc=sc, seg=seg, sr=sr, provenance=provenance)
