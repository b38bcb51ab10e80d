"""DICOM-SEG of the ribs on the original radiograph (PS3.3 A.51, highdicom ``seg.Segmentation``).

One BINARY segment "Ribs" on the source's exact matrix. A projection radiograph has no Frame of
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
    mark_synthetic_if_source_is,
    contribution_description,
    equipment_kwargs,
    model_equipment,
    pin_times,
)
from ribnode.models.info import SegmentationResult

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9902
SERIES_DESCRIPTION = "AI rib segmentation"
SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Ribs"
CATEGORY = hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure")
RIB = hd.sr.CodedConcept("113197003", "SCT", "Rib")
AI_FAMILY = hd.sr.CodedConcept("123110", "DCM", "Artificial Intelligence")


@dataclass(frozen=True)
class SegUids:
    """Series and SOP Instance UID of the SEG."""

    series_instance_uid: str
    sop_instance_uid: str
    dimension_organization_uid: str


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
        parameters={
            item.split("=", 1)[0]: item.split("=", 1)[1] for item in algorithm_parameters(segmentation)
        },
    )


def segment_description(segmentation: SegmentationResult) -> hd.seg.SegmentDescription:
    """The one segment: ribs, automatic, with the algorithm that made it."""
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=CATEGORY,
        segmented_property_type=RIB,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(segmentation),
        tracking_uid=None,
        tracking_id=None,
    )


def check_mask(source: Dataset, mask: np.ndarray) -> np.ndarray:
    """The mask as bool on the source matrix, or a ValueError naming what is wrong."""
    expected = (int(source.Rows), int(source.Columns))
    if mask.shape != expected:
        raise ValueError(f"rib mask has shape {mask.shape}, expected the source matrix {expected}")
    if mask.dtype != np.bool_:
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"rib mask must be binary, found values {values[:8]}")
    return mask.astype(bool)


def build_seg(
    source: Dataset,
    segmentation: SegmentationResult,
    context: ProcessingContext,
    uids: SegUids,
) -> hd.seg.Segmentation:
    """The rib DICOM-SEG, one BINARY frame on the source's exact matrix."""
    mask = check_mask(source, segmentation.mask)
    equipment = model_equipment(
        segmentation.model, "processing", context, contribution_description(segmentation.model)
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(segmentation)],
        series_instance_uid=uids.series_instance_uid,
        series_number=SERIES_NUMBER,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=int(source.get("InstanceNumber", 1) or 1),
        omit_empty_frames=False,
        content_label="RIBS",
        content_description="AI rib segmentation",
        series_description=SERIES_DESCRIPTION,
        contributing_equipment=[equipment],
        **equipment_kwargs(context),
    )
    _finish_seg(seg, source, uids)
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
    positioned = "PlanePositionSequence" in shared or any(
        "PlanePositionSequence" in frame for frame in frames
    )
    if "PixelMeasuresSequence" in shared and not positioned:
        logger.debug("SEG %s: projection geometry, Pixel Measures left out", seg.SOPInstanceUID)
        del shared.PixelMeasuresSequence
