"""Comprehensive 3D SR, TID 1500 Measurement Report (highdicom ``sr.Comprehensive3DSR``).

One TID 1410 Planar ROI measurement group per SEG segment (here: the ribs), referencing the
segment through "Referenced Segmentation Frame" (121214), with the algorithm (TID 4019) and two
measurements: the segmented rib area, and the mean bone signal the suppression removed.
A device observer (TID 1004) whose UID is derived from the weights names the AI as the author.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ribnode.dicom_sr.geometry import Spacing, source_spacing
from ribnode.dicom_sr.provenance import (
    ProcessingContext,
    mark_synthetic_if_source_is,
    contribution_description,
    equipment_kwargs,
    model_equipment,
    pin_times,
)
from ribnode.dicom_sr.seg import RIB, SEGMENT_LABEL, SEGMENT_NUMBER, algorithm_parameters
from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9903
SERIES_DESCRIPTION = "AI rib measurements (TID 1500)"
#: The analysed procedure, not the algorithm (TID 1500 row 4).
PROCEDURE_REPORTED = hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray")
AREA = hd.sr.CodedConcept("42798000", "SCT", "Area")
MM2 = hd.sr.CodedConcept("mm2", "UCUM", "mm2")
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
MEAN = hd.sr.CodedConcept("373098007", "SCT", "Mean")
#: ribnode's private coding scheme, declared in the Coding Scheme Identification Sequence.
PRIVATE_SCHEME = "99RIBNODE"
BONE_REMOVED = hd.sr.CodedConcept("RN0001", PRIVATE_SCHEME, "Bone signal removed")
AI_FAMILY = hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class SrUids:
    """Series and SOP Instance UID of the SR, the tracking UID and the device observer UID."""

    series_instance_uid: str
    sop_instance_uid: str
    tracking_uid: str
    device_observer_uid: str


@dataclass(frozen=True)
class RibMeasurements:
    """The numbers the SR reports; also returned in the provenance record."""

    area: float
    area_unit: str  # "mm2" | "{pixels}"
    spacing_attribute: str | None
    bone_removed_mean: float | None  # None when the mask is empty


def measure(
    source: Dataset, segmentation: SegmentationResult, suppression: SuppressionResult
) -> RibMeasurements:
    """Rib area and mean bone signal removed.

    Area: pixels in the mask times the pixel area (mm2) when the source has a non-zero spacing,
    else the pixel count. Bone signal removed: the mean, over the rib mask, of the bone layer
    the suppression subtracted, in ribnode's bone-bright display units (0 = the radiograph's
    robust black level, 1 = its white level; see ``ribnode.models.preprocess``). A ratio, so
    unit "1".
    """
    mask = segmentation.mask.astype(bool)
    if suppression.bone.shape != mask.shape:
        raise ValueError(
            f"bone layer has shape {suppression.bone.shape}, expected the mask's {mask.shape}"
        )
    count = int(mask.sum())
    spacing: Spacing | None = source_spacing(source)
    bone = float(np.mean(suppression.bone[mask], dtype=np.float64)) if count else None
    if spacing is None:
        return RibMeasurements(float(count), "{pixels}", None, bone)
    return RibMeasurements(count * spacing.pixel_area_mm2, "mm2", spacing.attribute, bone)


def algorithm_id(model: ModelInfo, parameters: list[str]) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of one model."""
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64], version=model.version[:64], parameters=parameters,
        family=AI_FAMILY, manufacturer="ribnode",
    )


def _measurements(
    values: RibMeasurements, segmentation: SegmentationResult, suppression: SuppressionResult,
    sc: Dataset,
) -> list[hd.sr.Measurement]:
    area = hd.sr.Measurement(
        name=AREA, value=values.area, unit=MM2 if values.area_unit == "mm2" else PIXELS,
        algorithm_id=algorithm_id(segmentation.model, algorithm_parameters(segmentation)),
    )
    if values.bone_removed_mean is None:
        return [area]
    model = suppression.model
    bone = hd.sr.Measurement(
        name=BONE_REMOVED, value=values.bone_removed_mean, unit=NO_UNITS, derivation=MEAN,
        algorithm_id=algorithm_id(model, [
            f"weights_sha256={model.weights_sha256}", f"steps={suppression.steps}",
            f"seed={suppression.seed}", f"working_size={suppression.working_size}",
        ]),
        referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(sc)],
    )
    return [area, bone]


def _observer(context: ProcessingContext, uids: SrUids, models: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_observer_uid, name="ribnode", manufacturer_name="ribnode",
            model_name=models[:64], serial_number=context.node_id[:64],
        ),
    )


def referenced_segment(source: Dataset, seg: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """Referenced Segmentation Frame (121214): frame 1, segment 1 of the SEG, and its source.

    Built by hand: highdicom's ``from_segmentation`` looks for the segment number in the
    per-frame groups, but a one-segment SEG carries it in the shared groups.
    """
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=1,
        segment_number=SEGMENT_NUMBER,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source),
    )
    # PS3.3 Table 10-3: Referenced Segment Number is only required when no Referenced Frame
    # Number is given, and dciodvfy rejects both together. Frame 1 of this one-segment SEG *is*
    # segment 1, so the frame alone is unambiguous.
    item = reference[0].ReferencedSOPSequence[0]
    if "ReferencedSegmentNumber" in item:
        del item.ReferencedSegmentNumber
    return reference


def measurement_report(
    source: Dataset, seg: Dataset, sc: Dataset, segmentation: SegmentationResult,
    suppression: SuppressionResult, context: ProcessingContext, uids: SrUids,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree."""
    values = measure(source, segmentation, suppression)
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking_uid, identifier=SEGMENT_LABEL),
        referenced_segment=referenced_segment(source, seg),
        finding_type=RIB,
        algorithm_id=algorithm_id(segmentation.model, algorithm_parameters(segmentation)),
        measurements=_measurements(values, segmentation, suppression, sc),
    )
    models = f"{segmentation.model.name} + {suppression.model.name}"
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=_observer(context, uids, models)
        ),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport,
    )


def build_sr(
    source: Dataset, seg: Dataset, sc: Dataset, segmentation: SegmentationResult,
    suppression: SuppressionResult, context: ProcessingContext, uids: SrUids,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report; evidence: the source, the SEG and the SC. UNVERIFIED, COMPLETE."""
    report = measurement_report(source, seg, sc, segmentation, suppression, context, uids)
    equipment = [
        model_equipment(segmentation.model, "processing", context,
                        contribution_description(segmentation.model)),
        model_equipment(suppression.model, "processing", context,
                        contribution_description(suppression.model, seed=suppression.seed,
                                                 steps=suppression.steps,
                                                 working_size=suppression.working_size)),
    ]
    kwargs = equipment_kwargs(context)
    institution = kwargs.pop("institution_name", None)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, seg, sc],
        content=report,
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        institution_name=institution,
        is_complete=True,
        is_verified=False,
        is_final=False,
        series_description=SERIES_DESCRIPTION,
        contributing_equipment=equipment,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="ribnode private codes",
            responsible_organization="ribnode project",
        )],
        **kwargs,
    )
    mark_synthetic_if_source_is(sr, source)
    pin_times(sr, context.created)
    return sr
