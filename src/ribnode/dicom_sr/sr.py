"""Comprehensive 3D SR, TID 1500 Measurement Report (highdicom ``sr.Comprehensive3DSR``).

One TID 1410 Planar ROI measurement group per SEG segment (ribs, clavicles, lung fields: those
present), referencing the segment's frame through "Referenced Segmentation Frame" (121214), with
the segment's tracking identifier and UID (the same as the SEG's), the algorithm (TID 4019) and
two measurements: the segmented area, with a Measurement Method that names the plane it is in,
and the mean bone signal the suppression removed inside the structure.
A device observer (TID 1004) whose UID is derived from the weights names the AI as the author.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ribnode.dicom_sr.geometry import (
    PLANE_DETECTOR,
    PLANE_MAGNIFICATION_CORRECTED,
    PLANE_SOURCE_CALIBRATED,
    Spacing,
    source_spacing,
)
from ribnode.dicom_sr.provenance import (
    IHE_SCHEME,
    ProcessingContext,
    contribution_description,
    equipment_kwargs,
    mark_synthetic_if_source_is,
    model_equipment,
    pin_times,
)
from ribnode.dicom_sr.seg import (
    SegmentSpec,
    algorithm_parameters,
    present_structures,
    segment_frames,
)
from ribnode.models.info import ModelInfo, SegmentationResult, SuppressionResult

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9903
SERIES_DESCRIPTION = "AI chest anatomy measurements (TID 1500)"
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
#: Measurement Method (TID 300) of an area: the plane its pixel spacing is in (no standard
#: concept exists; private codes, declared in the Coding Scheme Identification Sequence).
PLANE_METHODS = {
    PLANE_SOURCE_CALIBRATED: hd.sr.CodedConcept(
        "RN0002", PRIVATE_SCHEME, "Area from source Pixel Spacing (patient plane)"
    ),
    PLANE_MAGNIFICATION_CORRECTED: hd.sr.CodedConcept(
        "RN0003", PRIVATE_SCHEME, "Area at isocenter, corrected for magnification"
    ),
    PLANE_DETECTOR: hd.sr.CodedConcept("RN0004", PRIVATE_SCHEME, "Area at detector plane, not corrected"),
}


@dataclass(frozen=True)
class SrUids:
    """Series and SOP Instance UID of the SR, the tracking UID of each structure (shared with
    the SEG), the device observer UID, the series' description, and the SR this one replaces
    (Predecessor Documents Sequence), if any."""

    series_instance_uid: str
    sop_instance_uid: str
    tracking_uids: dict[str, str]
    device_observer_uid: str
    series_description: str = SERIES_DESCRIPTION
    predecessor: dict[str, str] | None = None  # study, series, sop_class, sop_instance UIDs


@dataclass(frozen=True)
class RibMeasurements:
    """The numbers the SR reports for one structure; also in the provenance record."""

    area: float
    area_unit: str  # "mm2" | "{pixels}"
    spacing_attribute: str | None
    bone_removed_mean: float | None  # None when the mask is empty
    plane: str | None = None  # geometry.PLANE_*, None without spacing
    structure: str = "ribs"


def measure_mask(
    source: Dataset,
    mask: np.ndarray,
    suppression: SuppressionResult,
    structure: str = "ribs",
) -> RibMeasurements:
    """Area and mean bone signal removed inside one structure's mask.

    Area: pixels in the mask times the pixel area (mm2) when the source has a non-zero spacing
    (in the plane ``geometry.source_spacing`` chose), else the pixel count. Bone signal removed:
    the mean, over the mask, of the bone layer the suppression subtracted, in ribnode's
    bone-bright display units (0 = the radiograph's robust black level, 1 = its white level; see
    ``ribnode.models.preprocess``). A ratio, so unit "1".
    """
    mask = mask.astype(bool)
    if suppression.bone.shape != mask.shape:
        raise ValueError(f"bone layer has shape {suppression.bone.shape}, expected the mask's {mask.shape}")
    count = int(mask.sum())
    spacing: Spacing | None = source_spacing(source)
    bone = float(np.mean(suppression.bone[mask], dtype=np.float64)) if count else None
    if spacing is None:
        return RibMeasurements(float(count), "{pixels}", None, bone, None, structure)
    return RibMeasurements(count * spacing.pixel_area_mm2, "mm2", spacing.attribute, bone, spacing.plane, structure)


def measure(source: Dataset, segmentation: SegmentationResult, suppression: SuppressionResult) -> RibMeasurements:
    """The ribs' measurements (see :func:`measure_mask`)."""
    return measure_mask(source, segmentation.mask, suppression, "ribs")


def measure_all(
    source: Dataset, segmentation: SegmentationResult, suppression: SuppressionResult
) -> list[RibMeasurements]:
    """Measurements of every structure the SEG carries, in segment order."""
    return [measure_mask(source, mask, suppression, spec.structure) for spec, mask in present_structures(segmentation)]


def algorithm_id(model: ModelInfo, parameters: list[str]) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification of one model."""
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64],
        version=model.version[:64],
        parameters=parameters,
        family=AI_FAMILY,
        manufacturer="ribnode",
    )


def _measurements(
    values: RibMeasurements,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    sc: Dataset,
) -> list[hd.sr.Measurement]:
    area = hd.sr.Measurement(
        name=AREA,
        value=values.area,
        unit=MM2 if values.area_unit == "mm2" else PIXELS,
        method=PLANE_METHODS[values.plane] if values.plane is not None else None,
        algorithm_id=algorithm_id(segmentation.model, algorithm_parameters(segmentation)),
    )
    if values.bone_removed_mean is None:
        return [area]
    model = suppression.model
    bone = hd.sr.Measurement(
        name=BONE_REMOVED,
        value=values.bone_removed_mean,
        unit=NO_UNITS,
        derivation=MEAN,
        algorithm_id=algorithm_id(
            model,
            [
                f"weights_sha256={model.weights_sha256}",
                f"steps={suppression.steps}",
                f"seed={suppression.seed}",
                f"working_size={suppression.working_size}",
            ],
        ),
        referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(sc)],
    )
    return [area, bone]


def _observer(context: ProcessingContext, uids: SrUids, models: str) -> hd.sr.ObserverContext:
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_observer_uid,
            name="ribnode",
            manufacturer_name="ribnode",
            model_name=models[:64],
            serial_number=context.node_id[:64],
        ),
    )


def referenced_segment(
    source: Dataset,
    seg: Dataset,
    segment_number: int = 1,
) -> hd.sr.ReferencedSegmentationFrame:
    """Referenced Segmentation Frame (121214): the frame of ``segment_number`` in the SEG, and
    its source.

    Built by hand: highdicom's ``from_segmentation`` looks for the segment number in the
    per-frame groups, but a one-segment SEG carries it in the shared groups.
    """
    frame = segment_frames(seg)[segment_number]
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=frame,
        segment_number=segment_number,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source),
    )
    # PS3.3 Table 10-3: Referenced Segment Number is only required when no Referenced Frame
    # Number is given, and dciodvfy rejects both together. The SEG has one frame per segment
    # (one source frame), so the frame alone is unambiguous.
    item = reference[0].ReferencedSOPSequence[0]
    if "ReferencedSegmentNumber" in item:
        del item.ReferencedSegmentNumber
    return reference


def _group(
    number: int,
    spec: SegmentSpec,
    mask: np.ndarray,
    source: Dataset,
    seg: Dataset,
    sc: Dataset,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    uids: SrUids,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 group of one segment, with the SEG segment's tracking identifier and UID."""
    values = measure_mask(source, mask, suppression, spec.structure)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking_uids[spec.structure], identifier=spec.label),
        referenced_segment=referenced_segment(source, seg, number),
        finding_type=spec.property_type,
        algorithm_id=algorithm_id(segmentation.model, algorithm_parameters(segmentation)),
        measurements=_measurements(values, segmentation, suppression, sc),
    )


def measurement_report(
    source: Dataset,
    seg: Dataset,
    sc: Dataset,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    context: ProcessingContext,
    uids: SrUids,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree: one measurement group per SEG segment."""
    groups = [
        _group(number, spec, mask, source, seg, sc, segmentation, suppression, uids)
        for number, (spec, mask) in enumerate(present_structures(segmentation), start=1)
    ]
    models = f"{segmentation.model.name} + {suppression.model.name}"
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=_observer(context, uids, models)),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )


def build_sr(
    source: Dataset,
    seg: Dataset,
    sc: Dataset,
    segmentation: SegmentationResult,
    suppression: SuppressionResult,
    context: ProcessingContext,
    uids: SrUids,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report; evidence: the source, the SEG and the SC. UNVERIFIED, COMPLETE."""
    report = measurement_report(source, seg, sc, segmentation, suppression, context, uids)
    equipment = [
        model_equipment(segmentation.model, "algorithm", context, contribution_description(segmentation.model)),
        model_equipment(
            suppression.model,
            "algorithm",
            context,
            contribution_description(
                suppression.model, seed=suppression.seed, steps=suppression.steps, working_size=suppression.working_size
            ),
        ),
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
        series_description=uids.series_description,
        contributing_equipment=equipment,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="ribnode private codes",
                responsible_organization="ribnode project",
            ),
            CodingSchemeIdentificationItem(
                designator=IHE_SCHEME,
                name="IHE placeholder codes",
                responsible_organization="IHE Radiology (AI Results profile)",
            ),
        ],
        **kwargs,
    )
    mark_synthetic_if_source_is(sr, source)
    if uids.predecessor is not None:
        sr.PredecessorDocumentsSequence = [_predecessor(uids.predecessor)]
    pin_times(sr, context.created)
    return sr


def _predecessor(previous: dict[str, str]) -> Dataset:
    """Predecessor Documents Sequence item (PS3.3 C.17.2.3): the SR of the run this one
    replaces, as a Hierarchical SOP Instance Reference (study, series, instance)."""
    instance = Dataset()
    instance.ReferencedSOPClassUID = previous["sop_class_uid"]
    instance.ReferencedSOPInstanceUID = previous["sop_instance_uid"]
    series = Dataset()
    series.SeriesInstanceUID = previous["series_instance_uid"]
    series.ReferencedSOPSequence = [instance]
    study = Dataset()
    study.StudyInstanceUID = previous["study_instance_uid"]
    study.ReferencedSeriesSequence = [series]
    return study
