"""DICOM-SEG of the chest anatomy on the original radiograph (PS3.3 A.51, highdicom
``seg.Segmentation``).

One BINARY segment per structure the segmentation model outputs, in the order of
``ribnode.models.info.STRUCTURES``: Ribs (always), Clavicles, Lung fields, each with its SNOMED CT
type (:data:`SEGMENTS`), on the source's exact matrix; one frame per segment. A projection radiograph has no Frame of
Reference, so the SEG has one frame and no Plane Position/Orientation, and no Pixel Measures either
(see ``_drop_projection_pixel_measures``): the frame is pixel-aligned with the source (Spatial
Locations Preserved YES), whose spacing stays the reference. The frame references its source image
through the Derivation Image Sequence and the Referenced Series Sequence (OHIF and Weasis link SEG
to image by them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ribnode.dicom_sr.provenance import (
    ProcessingContext,
    contribution_description,
    declare_ihe_scheme,
    equipment_kwargs,
    mark_synthetic_if_source_is,
    model_equipment,
    pin_times,
)
from ribnode.models.info import SegmentationResult

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI chest anatomy segmentation"
SEGMENT_NUMBER = 1  # the ribs
SEGMENT_LABEL = "Ribs"
CATEGORY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
#: SNOMED CT types, as in pydicom's code dictionary (``codes.SCT.Rib``, ``.Clavicle``, ``.Lung``).
RIB = hd.sr.CodedConcept("113197003", "SCT", "Rib")
CLAVICLE = hd.sr.CodedConcept("51299004", "SCT", "Clavicle")
LUNG = hd.sr.CodedConcept("39607008", "SCT", "Lung")
#: Laterality modifier of a structure present on both sides (``codes.SCT.RightAndLeft``).
RIGHT_AND_LEFT = hd.sr.CodedConcept("51440002", "SCT", "Right and left")
AI_FAMILY = hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class SegmentSpec:
    """How one structure of ``STRUCTURES`` is written: label and SNOMED CT type."""

    structure: str
    label: str
    property_type: hd.sr.CodedConcept


#: Every structure the SEG can carry, in segment order.
SEGMENTS = (
    SegmentSpec("ribs", "Ribs", RIB),
    SegmentSpec("clavicles", "Clavicles", CLAVICLE),
    SegmentSpec("lungs", "Lung fields", LUNG),
)


@dataclass(frozen=True)
class SegUids:
    """Series and SOP Instance UID of the SEG, its dimension organization, its series'
    description, and the tracking UID of each structure (shared with the SR, IHE AIR)."""

    series_instance_uid: str
    sop_instance_uid: str
    dimension_organization_uid: str
    series_description: str = SERIES_DESCRIPTION
    tracking_uids: dict[str, str] | None = None


def present_structures(segmentation: SegmentationResult) -> list[tuple[SegmentSpec, np.ndarray]]:
    """The structures to write, in segment order, with their masks: the ribs always (from
    ``mask`` when ``structures`` lacks them), the others when the model gave them."""
    masks = dict(segmentation.structures)
    masks.setdefault("ribs", segmentation.mask)
    unknown = sorted(set(masks) - {spec.structure for spec in SEGMENTS})
    if unknown:
        raise ValueError(f"segmentation structures {unknown} are not among {[spec.structure for spec in SEGMENTS]}")
    return [(spec, masks[spec.structure]) for spec in SEGMENTS if spec.structure in masks]


def algorithm_parameters(segmentation: SegmentationResult) -> list[str]:
    """Algorithm parameters as "key=value": threshold, the weights hash, the rest sorted.

    Not clipped: SEG Algorithm Parameters is LT and TID 4019 parameters are TEXT.
    """
    params = dict(segmentation.model.parameters)
    threshold = params.pop("threshold", None)
    values = []
    if threshold is not None:
        values.append(f"threshold={threshold}")
    values.append(f"weights_sha256={segmentation.model.weights_sha256}")
    values.extend(f"{key}={params[key]}" for key in sorted(params))
    return values


def algorithm_identification(segmentation: SegmentationResult) -> hd.AlgorithmIdentificationSequence:
    """Segmentation Algorithm Identification (PS3.3 C.8.20.2.1): family, name, version, params."""
    return hd.AlgorithmIdentificationSequence(
        name=segmentation.model.name[:64],
        family=AI_FAMILY,
        version=segmentation.model.version[:64],
        parameters={item.split("=", 1)[0]: item.split("=", 1)[1] for item in algorithm_parameters(segmentation)},
    )


def segment_description(
    segmentation: SegmentationResult,
    number: int = SEGMENT_NUMBER,
    spec: SegmentSpec = SEGMENTS[0],
    tracking_uid: str | None = None,
) -> hd.seg.SegmentDescription:
    """One segment: the structure, automatic, with the algorithm that made it and its tracking
    identifier (the segment label) and UID, the same as the SR's measurement group."""
    code = spec.property_type  # a fresh copy: the modifier below must not reach the constant
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.label,
        segmented_property_category=CATEGORY,
        segmented_property_type=hd.sr.CodedConcept(code.value, code.scheme_designator, code.meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(segmentation),
        tracking_uid=tracking_uid,
        tracking_id=spec.label if tracking_uid is not None else None,
    )
    # Both sides are segmented as one region: laterality modifier of the type (PS3.3 C.8.20.2,
    # Segmented Property Type Modifier Code Sequence inside the type's item).
    description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [RIGHT_AND_LEFT]
    return description


def check_mask(source: Dataset, mask: np.ndarray, name: str = "rib") -> np.ndarray:
    """The mask as bool on the source matrix, or a ValueError naming what is wrong."""
    expected = (int(source.Rows), int(source.Columns))
    if mask.shape != expected:
        raise ValueError(f"{name} mask has shape {mask.shape}, expected the source matrix {expected}")
    if mask.dtype != np.bool_:
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name} mask must be binary, found values {values[:8]}")
    return mask.astype(bool)


def build_seg(
    source: Dataset,
    segmentation: SegmentationResult,
    context: ProcessingContext,
    uids: SegUids,
) -> hd.seg.Segmentation:
    """The anatomy DICOM-SEG: one BINARY frame per structure on the source's exact matrix."""
    present = present_structures(segmentation)
    masks = [check_mask(source, mask, spec.structure) for spec, mask in present]
    tracking = uids.tracking_uids or {}
    descriptions = [
        segment_description(segmentation, number, spec, tracking.get(spec.structure))
        for number, (spec, _) in enumerate(present, start=1)
    ]
    equipment = model_equipment(segmentation.model, "algorithm", context, contribution_description(segmentation.model))
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=np.stack(masks, axis=-1)[np.newaxis],  # (frames, rows, columns, segments)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        omit_empty_frames=False,
        content_label="ANATOMY",
        content_description="AI segmentation: " + ", ".join(spec.label for spec, _ in present),
        series_description=uids.series_description,
        contributing_equipment=[equipment],
        **equipment_kwargs(context),
    )
    _finish_seg(seg, source, uids)
    declare_ihe_scheme(seg)
    pin_times(seg, context.created)
    return seg


def _finish_seg(seg: Dataset, source: Dataset, uids: SegUids) -> None:
    """Geometry and flags highdicom leaves to the caller on a projection radiograph."""
    mark_synthetic_if_source_is(seg, source)
    # General Image, Type 2C: required without Image Orientation/Position (PS3.3 C.7.6.1).
    seg.add_new("PatientOrientation", "CS", source.get("PatientOrientation") or None)
    _copy_body_part(seg, source)
    _drop_projection_pixel_measures(seg)
    # highdicom draws a random Dimension Organization UID; keep the object deterministic.
    dimension_uid = uids.dimension_organization_uid
    for item in seg.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = dimension_uid
    for item in seg.DimensionIndexSequence:
        item.DimensionOrganizationUID = dimension_uid


def segment_frames(seg: Dataset) -> dict[int, int]:
    """Frame number (1-based) of each segment number, read from the SEG's functional groups."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = seg.get("PerFrameFunctionalGroupsSequence") or []
    result: dict[int, int] = {}
    for index, frame in enumerate(frames, start=1):
        item = frame.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        result.setdefault(int(item[0].ReferencedSegmentNumber), index)
    return result


def _copy_body_part(seg: Dataset, source: Dataset) -> None:
    if source.get("BodyPartExamined"):
        seg.BodyPartExamined = source.BodyPartExamined


def _drop_projection_pixel_measures(seg: Dataset) -> None:
    """Remove the Pixel Measures functional group from a SEG with projection geometry.

    highdicom 0.28 copies a projection source's Pixel Spacing into a Pixel Measures item without
    Slice Thickness (there is none), and its own reader (``Segmentation.from_dataset``,
    ``segread``) rejects such an item. Slice Thickness is "nominal reconstructed slice thickness
    (tomographic) or depth of field (optical)" (PS3.3 C.7.6.16.2.1): any value for a projection
    radiograph would be invented. Without a Frame of Reference the Pixel Measures group is not
    required in a SEG (highdicom leaves it out for such sources when they lack Pixel Spacing), so
    it is dropped: the one frame is pixel-aligned with the referenced source, which keeps the
    spacing. Geometry with plane positions (a Frame of Reference) is left as highdicom made it.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    frames = seg.get("PerFrameFunctionalGroupsSequence") or []
    positioned = "PlanePositionSequence" in shared or any("PlanePositionSequence" in frame for frame in frames)
    if "PixelMeasuresSequence" in shared and not positioned:
        logger.debug("SEG %s: projection geometry, Pixel Measures left out", seg.SOPInstanceUID)
        del shared.PixelMeasuresSequence
