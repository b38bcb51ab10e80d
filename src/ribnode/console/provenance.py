"""An output's provenance as its standard DICOM attributes state it, beside the ledger's record.

The object is read from the node's own store (``export.staging_dir``) and described by
:func:`ribnode.dicom_sr.provenance.describe_standard` (Synthetic Data, Contributing Equipment
per PS3.3 C.12.1.1.7 with IHE AIR's algorithm identification, Source Image Sequence or the SR's
evidence). Each fact the ledger also records is compared; a disagreement is a mismatch that the
study page flags in words (never only by colour).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from ribnode.console.queries import OutputRow, split_models
from ribnode.dicom_sr.provenance import describe_standard

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_WEIGHTS = re.compile(r"weights sha256:([0-9a-f]{64})")


@dataclass(frozen=True)
class Fact:
    """One provenance fact: what the object's attributes say, what the ledger says."""

    name: str
    in_object: str
    in_ledger: str | None  # None: the ledger records nothing to compare with
    agrees: bool = True


@dataclass(frozen=True)
class Provenance:
    """An output object's provenance, compared with the ledger."""

    output: OutputRow
    facts: list[Fact] = field(default_factory=list)
    equipment: list[dict[str, Any]] = field(default_factory=list)  # Contributing Equipment items
    error: str | None = None  # the stored object could not be read

    @property
    def mismatches(self) -> list[Fact]:
        return [f for f in self.facts if not f.agrees]


def read_provenance(output: OutputRow, study_uid: str, source_synthetic: bool | None) -> Provenance:
    """Read the stored object of ``output`` and compare its standard attributes with the
    ledger's record. A missing or unreadable object is itself a mismatch."""
    try:
        dataset = pydicom.dcmread(output.path, stop_before_pixels=True)
        described = describe_standard(dataset)
    except (OSError, InvalidDicomError, AttributeError, IndexError, KeyError) as exc:
        logger.warning("cannot read stored object %s: %s", output.path, exc)
        error = f"stored object {output.path.name} cannot be read: {type(exc).__name__}: {exc}"
        fact = Fact("Stored object", "unreadable or missing", str(output.path), agrees=False)
        return Provenance(output, [fact], error=error)
    facts = compare(described, str(dataset.get("StudyInstanceUID", "")), output, study_uid, source_synthetic)
    return Provenance(output, facts, list(described["ai_equipment"]))


def compare(
    described: dict[str, Any],
    object_study: str,
    output: OutputRow,
    study_uid: str,
    source_synthetic: bool | None,
) -> list[Fact]:
    """The facts of ``described`` (``describe_standard``) beside the ledger's ``output``."""
    equipment = described["ai_equipment"]
    models_in_object = {(e["model"], (e["software_versions"] or [""])[0]) for e in equipment}
    models_in_ledger = set(split_models(output.model_name, output.model_version))
    weights_in_object = sorted({m for e in equipment for m in _WEIGHTS.findall(e["contribution_description"])})
    expected_synthetic = output.kind == "sc" or bool(source_synthetic)
    synthetic = described["synthetic_data"] or "(absent)"
    return [
        Fact(
            "SOP Instance UID",
            described["sop_instance_uid"],
            output.sop_instance_uid,
            described["sop_instance_uid"] == output.sop_instance_uid,
        ),
        Fact("Study Instance UID", object_study, study_uid, object_study == study_uid),
        Fact("SOP Class", described["sop_class"], output.kind.upper(), _kind_matches(output.kind, described)),
        Fact(
            "Synthetic Data (0008,001C)",
            synthetic,
            "YES" if expected_synthetic else "(absent)",
            (synthetic == "YES") == expected_synthetic,
        ),
        Fact(
            "Algorithms (Contributing Equipment)",
            _pairs(models_in_object),
            _pairs(models_in_ledger),
            models_in_object == models_in_ledger,
        ),
        Fact(
            "Weights sha256 (Contribution Description)",
            ", ".join(weights_in_object) or "(none)",
            output.weights_sha256,
            output.weights_sha256 in weights_in_object,
        ),
        Fact(
            "Source instances (Source Image / Evidence)",
            ", ".join(described["derived_from"]) or "(none)",
            output.source_sop_instance_uid,
            output.source_sop_instance_uid in described["derived_from"],
        ),
        Fact("Content Qualification", described["content_qualification"] or "(absent)", None),
        Fact("Derivation Description", described["derivation_description"] or "(absent)", None),
    ]


def _kind_matches(kind: str, described: dict[str, Any]) -> bool:
    sop_class = str(described["sop_class"]).lower()
    wanted = {"sc": "secondary capture", "seg": "segmentation", "sr": "sr"}.get(kind)
    return wanted is not None and wanted in sop_class


def _pairs(pairs: set[tuple[str, str]]) -> str:
    return "; ".join(f"{name} {version}" for name, version in sorted(pairs)) or "(none)"


def source_is_synthetic(path: Path) -> bool | None:
    """Synthetic Data of a source instance file (None when it cannot be read)."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SyntheticData"])
    except (OSError, InvalidDicomError) as exc:
        logger.warning("cannot read source instance %s: %s", path, exc)
        return None
    return str(dataset.get("SyntheticData", "")).upper() == "YES"
