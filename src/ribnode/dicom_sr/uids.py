"""Deterministic UIDs for the objects ribnode writes back.

A re-run of the same models on the same source instance must *replace* its earlier results in
the PACS, never add a second copy, so every Series and SOP Instance UID is a pure function of
(source SOP Instance UID, weights sha256, object kind): ``pydicom.uid.generate_uid`` hashes the
entropy sources (SHA-512) into a decimal suffix under pydicom's root
``1.2.826.0.1.3680043.8.498.`` (PS3.5 9.1; 64 characters at most).
"""

from __future__ import annotations

import hashlib
import logging
import re

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

logger = logging.getLogger(__name__)

#: Object kinds with a UID of their own. ``*.series`` kinds are Series Instance UIDs.
KINDS = (
    "sc",
    "sc.series",
    "seg",
    "seg.series",
    "seg.dimension",
    "sr",
    "sr.series",
    "sr.tracking",
)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _check_uid(value: str) -> None:
    if not value or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"source SOP Instance UID {value!r} is not a valid DICOM UID")


def _check_sha(value: str) -> None:
    if not _SHA256.match(value):
        raise ValueError(f"weights sha256 {value!r} is not 64 lowercase hex digits")


def derived_uid(source_sop_instance_uid: str, weights_sha256: str, kind: str) -> str:
    """UID of one output object: the same inputs give the same UID, a new kind a new one.

    ``kind`` is one of :data:`KINDS` (``"sc"``, ``"seg.series"``, ...).
    """
    _check_uid(source_sop_instance_uid)
    _check_sha(weights_sha256)
    if kind not in KINDS:
        raise ValueError(f"UID kind {kind!r} is not one of {', '.join(KINDS)}")
    return str(
        generate_uid(
            prefix=PYDICOM_ROOT_UID,
            entropy_srcs=[source_sop_instance_uid, weights_sha256, kind],
        )
    )


def combined_sha256(*weights_sha256: str) -> str:
    """One hash for an output that depends on several models (SC and SR depend on both).

    The order matters and is fixed by the caller (segmentation first, then suppression).
    """
    for value in weights_sha256:
        _check_sha(value)
    return hashlib.sha256(":".join(weights_sha256).encode("ascii")).hexdigest()


def device_observer_uid(weights_sha256: str) -> str:
    """Device Observer UID (TID 1004) of the model: it changes exactly when the weights change."""
    _check_sha(weights_sha256)
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["device", weights_sha256]))
