"""Build the three objects written back for one source radiograph: SC, SEG and SR.

``build_outputs`` is the one entry point the worker calls. It is a pure function of its inputs
(and ``created``): the UIDs derive from the source SOP Instance UID, the weights hashes and the
object kind, so a re-run replaces its earlier results in the PACS instead of duplicating them.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

import pydicom
from highdicom._standard_utils import get_sop_class_iod_map

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import sc as sc_module
from ribnode.dicom_sr import seg as seg_module
from ribnode.dicom_sr import sr as sr_module
from ribnode.dicom_sr.provenance import (
    ProcessingContext,
    add_private_block,
    model_record,
)
from ribnode.dicom_sr.uids import combined_sha256, derived_uid, device_observer_uid
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


def _check_inputs(
    source: pydicom.Dataset, segmentation: SegmentationResult, suppression: SuppressionResult
) -> str:
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
                    "Rows", "Columns", "BitsAllocated", "BitsStored", "PhotometricInterpretation"):
        if keyword not in source:
            raise ValueError(f"source dataset has no {keyword}; it cannot be a radiograph")
    if str(source.SOPClassUID) not in get_sop_class_iod_map():
        raise ValueError(
            f"source SOP Class {source.SOPClassUID} is not a standard image storage class; "
            "expected CR or DX"
        )
    if segmentation.mask.shape != suppression.soft_stored.shape:
        raise ValueError(
            f"mask shape {segmentation.mask.shape} differs from the suppressed image's "
            f"{suppression.soft_stored.shape}"
        )
    return str(source.SOPInstanceUID)


def _record(
    kind: str, dataset: pydicom.Dataset, source_uid: str, segmentation: SegmentationResult,
    suppression: SuppressionResult, created: datetime.datetime,
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


def output_uids(
    source_uid: str, segmentation_sha256: str, suppression_sha256: str
) -> tuple[sc_module.ScUids, seg_module.SegUids, sr_module.SrUids]:
    """Every UID of the three objects (docs/dicom-conformance.md 2.1).

    The SEG depends on the segmentation weights only; the SC and SR on both models.
    """
    both = combined_sha256(segmentation_sha256, suppression_sha256)
    sc = sc_module.ScUids(
        derived_uid(source_uid, both, "sc.series"), derived_uid(source_uid, both, "sc")
    )
    seg = seg_module.SegUids(
        derived_uid(source_uid, segmentation_sha256, "seg.series"),
        derived_uid(source_uid, segmentation_sha256, "seg"),
        derived_uid(source_uid, segmentation_sha256, "seg.dimension"),
    )
    sr = sr_module.SrUids(
        derived_uid(source_uid, both, "sr.series"), derived_uid(source_uid, both, "sr"),
        derived_uid(source_uid, both, "sr.tracking"), device_observer_uid(both),
    )
    return sc, seg, sr


# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): a
# modality may leave them out, but every output must carry them (empty when unknown), and
# highdicom reads them from the source.
_PATIENT_STUDY_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
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
    created: datetime.datetime | None = None,
) -> OutputSet:
    """SC, SEG and SR for ``source``, with deterministic UIDs and provenance records."""
    source_uid = _check_inputs(source, segmentation, suppression)
    source = _source_header(source)
    created = created if created is not None else datetime.datetime.now().astimezone()
    context = ProcessingContext(
        created=created, node_id=settings.node_id,
        content_qualification=settings.content_qualification,
        institution_name=settings.institution_name,
    )
    sc_uids, seg_uids, sr_uids = output_uids(
        source_uid, segmentation.model.weights_sha256, suppression.model.weights_sha256
    )
    sc = sc_module.build_sc(source, suppression, segmentation, settings, context, sc_uids)
    seg = seg_module.build_seg(source, segmentation, context, seg_uids)
    sr = sr_module.build_sr(source, seg, sc, segmentation, suppression, context, sr_uids)
    provenance = {
        kind: _record(kind, dataset, source_uid, segmentation, suppression, created)
        for kind, dataset in (("sc", sc), ("seg", seg), ("sr", sr))
    }
    provenance["sr"]["measurements"] = dataclasses.asdict(
        sr_module.measure(source, segmentation, suppression)
    )
    if settings.private_block:
        for kind, dataset in (("sc", sc), ("seg", seg), ("sr", sr)):
            add_private_block(dataset, provenance[kind])
    logger.info("built SC %s, SEG %s, SR %s for source %s", sc.SOPInstanceUID,
                seg.SOPInstanceUID, sr.SOPInstanceUID, source_uid)
    return OutputSet(sc=sc, seg=seg, sr=sr, provenance=provenance)
