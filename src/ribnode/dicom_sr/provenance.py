"""Provenance written into every output: Contributing Equipment, the private block, the record.

The standard attributes carry the provenance (PS3.3 C.12.1.1.7 Contributing Equipment Sequence,
IHE AI Results); the optional private block "RIBNODE 1" only repeats it for QA tools that look
for a private flag.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from ribnode import __version__ as RIBNODE_VERSION
from ribnode.dicom_sr.uids import model_device_uid
from ribnode.models.info import ModelInfo

logger = logging.getLogger(__name__)

MANUFACTURER = "ribnode"
MODEL_NAME = "ribnode"

#: Private block: creator, odd group and element offsets (PS3.5 7.8.1).
PRIVATE_CREATOR = "RIBNODE 1"
PRIVATE_GROUP = 0x0071
PRIVATE_AI_GENERATED = 0x01  # CS "YES"
PRIVATE_PROVENANCE = 0x02  # UT JSON, the object's provenance record

_LO_MAX = 64
_ST_MAX = 1024

#: IHE AIR (Rev 1.1, 6.5.3.1 General Result Encoding Requirements): the Purpose of Reference of
#: the Contributing Equipment item that describes each algorithm. "Newcode1" in IHE's private
#: scheme 99IHE is the profile's placeholder until DICOM assigns a code; declared in each
#: object's Coding Scheme Identification Sequence (:func:`declare_ihe_scheme`).
AIR_PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", "99IHE", "Processing Algorithm")
IHE_SCHEME = "99IHE"
#: Purposes of Reference of ribnode's model items, as ``describe_standard`` recognises them.
MODEL_PURPOSES = ("109100", "Newcode1")


@dataclass(frozen=True)
class ProcessingContext:
    """What every object of one run shares: when, where and by which software version."""

    created: datetime.datetime
    node_id: str
    content_qualification: str
    institution_name: str | None = None
    software_version: str = RIBNODE_VERSION


def _lo(value: str) -> str:
    """Clip to a Long String (LO, 64 characters) so a long model name cannot break the object."""
    if len(value) > _LO_MAX:
        logger.warning("value %r clipped to %d characters (LO)", value, _LO_MAX)
    return value[:_LO_MAX]


def contribution_description(
    model: ModelInfo,
    *,
    seed: int | None = None,
    steps: int | None = None,
    working_size: int | None = None,
) -> str:
    """Contribution Description (ST, 1024 chars): weights hash and the run's parameters."""
    parts = [f"{model.name} {model.version}", f"weights sha256:{model.weights_sha256}"]
    if steps is not None:
        parts.append(f"steps {steps}")
    if seed is not None:
        parts.append(f"seed {seed}")
    if working_size is not None:
        parts.append(f"working resolution {working_size}x{working_size}")
    # the run's own values above win over the model's parameters of the same meaning
    given = {"steps": steps, "seed": seed, "working_size": working_size}
    for key in sorted(model.parameters):
        if given.get(key) is None:
            parts.append(f"{key} {model.parameters[key]}")
    return "; ".join(parts)[:_ST_MAX]


def model_equipment(
    model: ModelInfo,
    purpose: str,
    context: ProcessingContext,
    description: str,
) -> hd.ContributingEquipment:
    """One Contributing Equipment item for a model, with the model's Device UID (0018,1002):
    IHE AIR identifies the algorithm by manufacturer, model name, software versions and Device
    UID in this item.

    ``purpose`` is ``"algorithm"`` (IHE AIR's "Processing Algorithm", every model on every
    object) or ``"synthesizing"`` (109100, DICOM's Synthesizing Equipment: the suppression
    model on the SC once more, so that the standard term for synthetic content is there too).
    """
    codes_by_purpose = {
        "synthesizing": codes.DCM.SynthesizingEquipment,
        "algorithm": AIR_PROCESSING_ALGORITHM,
    }
    if purpose not in codes_by_purpose:
        raise ValueError(f"purpose {purpose!r} is not one of {sorted(codes_by_purpose)}")
    # highdicom accepts only CID 7005 terms; AIR's code is set on the item afterwards.
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=_lo(model.name),
        software_versions=[_lo(model.version), _lo(context.software_version)],
        device_serial_number=_lo(context.node_id),
        institution_name=context.institution_name,
        contribution_datetime=context.created,
        contribution_description=description,
    )
    item.PurposeOfReferenceCodeSequence = [
        hd.sr.CodedConcept(
            codes_by_purpose[purpose].value,
            codes_by_purpose[purpose].scheme_designator,
            codes_by_purpose[purpose].meaning,
        )
    ]
    item.DeviceUID = model_device_uid(model.name, model.version, model.weights_sha256)
    return item


def declare_ihe_scheme(dataset: pydicom.Dataset) -> None:
    """Coding Scheme Identification Sequence (SOP Common, PS3.3 C.12.1.1.4) item for 99IHE,
    the scheme of AIR's Purpose of Reference code, unless already declared."""
    items = list(dataset.get("CodingSchemeIdentificationSequence", []))
    if any(item.get("CodingSchemeDesignator") == IHE_SCHEME for item in items):
        return
    item = pydicom.Dataset()
    item.CodingSchemeDesignator = IHE_SCHEME
    item.CodingSchemeName = "IHE placeholder codes"
    item.CodingSchemeResponsibleOrganization = "IHE Radiology (AI Results profile)"
    dataset.CodingSchemeIdentificationSequence = [*items, item]


def pin_times(dataset: pydicom.Dataset, created: datetime.datetime) -> None:
    """Give Instance Creation and every Contributing Equipment item the run's time.

    highdicom stamps them with ``now()``; pinning them to ``created`` makes an object a pure
    function of its inputs, so a re-run with the same ``created`` writes identical bytes.
    """
    dataset.InstanceCreationDate = pydicom.valuerep.DA(created.date())
    dataset.InstanceCreationTime = pydicom.valuerep.TM(created.time().replace(tzinfo=None))
    for item in dataset.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = pydicom.valuerep.DT(created)


def mark_synthetic_if_source_is(dataset: pydicom.Dataset, source: pydicom.Dataset) -> None:
    """Synthetic Data (0008,001C) YES on a SEG or SR derived from a synthetic source.

    The SEG and SR describe the *acquired* image, so they are only synthetic when it is. The
    attribute is Type 3: it is left out otherwise (an explicit NO adds nothing and trips
    dictionaries that predate it).
    """
    if str(source.get("SyntheticData", "")).upper() == "YES":
        dataset.SyntheticData = "YES"


def equipment_kwargs(context: ProcessingContext) -> dict[str, Any]:
    """General Equipment and SOP Common keyword arguments for highdicom constructors."""
    kwargs: dict[str, Any] = {
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": MODEL_NAME,
        "software_versions": context.software_version,
        "device_serial_number": _lo(context.node_id),
        "content_qualification": context.content_qualification,
        "content_date": context.created.date(),
        "content_time": context.created.time().replace(tzinfo=None),
        "series_date": context.created.date(),
        "series_time": context.created.time().replace(tzinfo=None),
    }
    if context.institution_name:
        kwargs["institution_name"] = _lo(context.institution_name)
    return kwargs


def add_private_block(dataset: pydicom.Dataset, record: dict[str, Any]) -> None:
    """Private block "RIBNODE 1" in group 0071: AI-generated flag and the provenance JSON."""
    block = dataset.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(PRIVATE_AI_GENERATED, "CS", "YES")
    block.add_new(PRIVATE_PROVENANCE, "UT", json.dumps(record, sort_keys=True))


def read_private_block(dataset: pydicom.Dataset) -> dict[str, Any] | None:
    """The provenance JSON of the private block, or None when the object has none."""
    try:
        block = dataset.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None
    value = block[PRIVATE_PROVENANCE].value
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    result: dict[str, Any] = json.loads(text)
    return result


def model_record(model: ModelInfo) -> dict[str, Any]:
    """JSON-able description of one model for the provenance record."""
    return {
        "name": model.name,
        "version": model.version,
        "weights_sha256": model.weights_sha256,
        "parameters": {key: _jsonable(value) for key, value in model.parameters.items()},
    }


def _jsonable(value: Any) -> Any:
    """Parameters may hold numpy scalars or paths; keep the record JSON-able."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    return str(value)


def _source_uids(dataset: pydicom.Dataset) -> list[str]:
    """Instances an object was derived from: Source Image Sequence, else the SR's evidence."""
    uids = [str(item.ReferencedSOPInstanceUID) for item in dataset.get("SourceImageSequence", [])]
    if uids:
        return uids
    return [
        str(instance.ReferencedSOPInstanceUID)
        for study in dataset.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedSOPSequence", [])
    ]


def describe_standard(dataset: pydicom.Dataset) -> dict[str, Any]:
    """What QA can read from *standard* attributes alone (no private block): what the object
    is, whether it is synthetic, which AI made it (model, versions, weights in the
    Contribution Description), when, and from which instances."""
    equipment = []
    for item in dataset.get("ContributingEquipmentSequence", []):
        purpose = item.PurposeOfReferenceCodeSequence[0]
        if purpose.CodeValue not in MODEL_PURPOSES or item.get("Manufacturer") != MANUFACTURER:
            continue
        versions = item.get("SoftwareVersions")
        equipment.append(
            {
                "purpose": f'({purpose.CodeValue}, {purpose.CodingSchemeDesignator}, "{purpose.CodeMeaning}")',
                "model": str(item.get("ManufacturerModelName", "")),
                "device_uid": str(item.get("DeviceUID", "")) or None,
                "software_versions": [str(v) for v in versions] if versions is not None else [],
                "contribution_datetime": str(item.get("ContributionDateTime", "")),
                "contribution_description": str(item.get("ContributionDescription", "")),
            }
        )
    return {
        "sop_class": pydicom.uid.UID(dataset.SOPClassUID).name,
        "sop_instance_uid": str(dataset.SOPInstanceUID),
        "modality": str(dataset.get("Modality", "")),
        "series_description": str(dataset.get("SeriesDescription", "")),
        "synthetic_data": str(dataset.get("SyntheticData", "")) or None,
        "content_qualification": str(dataset.get("ContentQualification", "")) or None,
        "derivation_description": str(dataset.get("DerivationDescription", "")) or None,
        "ai_equipment": equipment,
        "derived_from": _source_uids(dataset),
    }
