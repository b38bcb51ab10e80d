"""UIDs that follow content: one UID per content, a new UID for any other content.

Every SOP Instance UID is a pure function of a *content key*: a SHA-256 over everything that
changes the object's bytes (the source's header, the models' names, versions, weights and
parameters, the run's seed, steps and working size, the result arrays themselves, the output
settings and the ribnode version; ``ribnode.dicom_sr.outputs.content_keys``). The same inputs and
settings give the same UIDs (a re-sent object is the same object); anything else gives new ones,
so a PACS that keeps the first copy of a UID can never hide a changed result behind it.

``pydicom.uid.generate_uid`` hashes the entropy sources (SHA-512) into a decimal suffix under
pydicom's root ``1.2.826.0.1.3680043.8.498.`` (PS3.5 9.1; 64 characters at most).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

logger = logging.getLogger(__name__)

#: Object kinds with a UID of their own. ``*.series`` kinds are Series Instance UIDs;
#: ``sr.tracking.<structure>`` (one per segment) is checked by prefix.
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


def _check_sha(value: str, what: str = "content key") -> None:
    if not _SHA256.match(value):
        raise ValueError(f"{what} {value!r} is not 64 lowercase hex digits")


def _check_kind(kind: str) -> None:
    base = kind if not kind.startswith("sr.tracking.") else "sr.tracking"
    if base not in KINDS:
        raise ValueError(f"UID kind {kind!r} is not one of {', '.join(KINDS)}")


def content_key(parts: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``parts`` as canonical JSON (sorted keys): the identity of a content."""
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    """SHA-256 (hex) of arrays: shape, dtype and every byte, so any changed pixel changes it."""
    digest = hashlib.sha256()
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.shape}|{contiguous.dtype.str}|".encode("ascii"))
        digest.update(contiguous.tobytes())
    return digest.hexdigest()


def content_uid(key: str, kind: str) -> str:
    """UID of one object (or series) of ``kind`` whose content key is ``key``.

    ``kind`` is one of :data:`KINDS`; the same key under two kinds gives two UIDs.
    """
    _check_sha(key)
    _check_kind(kind)
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[key, kind]))


def combined_sha256(*weights_sha256: str) -> str:
    """One hash for an output that depends on several models (SC and SR depend on both).

    The order matters and is fixed by the caller (segmentation first, then suppression).
    """
    for value in weights_sha256:
        _check_sha(value, "weights sha256")
    return hashlib.sha256(":".join(weights_sha256).encode("ascii")).hexdigest()


def device_observer_uid(weights_sha256: str) -> str:
    """Device Observer UID (TID 1004) of the models: it changes exactly when the weights change."""
    _check_sha(weights_sha256, "weights sha256")
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["device", weights_sha256]))


def model_device_uid(name: str, version: str, weights_sha256: str) -> str:
    """Device UID (0018,1002) of one model in Contributing Equipment: one UID per name, version
    and weights (IHE AIR identifies the algorithm by it)."""
    _check_sha(weights_sha256, "weights sha256")
    return str(generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["model-device", name, version, weights_sha256]))
