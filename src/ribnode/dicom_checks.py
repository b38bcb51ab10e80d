"""Checks of a received DICOM dataset that both the node and the workers apply.

The listener and STOW-RS refuse a dataset that fails them (0xC210, PS3.4 Annex B.2.3); a
worker checks the spooled file again before any decoder reads it (``ribnode.workers.jobs``).
pydicom only: no networking, no ledger, no models.
"""

from __future__ import annotations

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset


class UndecodableError(ValueError):
    """The C-STORE dataset cannot be decoded or lacks what ribnode needs to file it."""


UNDEFINED_LENGTH = 0xFFFFFFFF


def check_declared_lengths(ds: Dataset, file_size: int | None = None) -> None:
    """Raise :class:`UndecodableError` when an element's length says more bytes than the data
    holds. pydicom reads a value cut short by the end of the data without a word, so a Pixel
    Data whose length claims 4 GB in an 8 MB instance passes for a complete image, and a later
    full read of the file asks for 4 GB (PS3.5 7.1: the length is the value's, exactly).
    ``file_size``: the size of the file a deferred value (``defer_size``) is read from."""
    for tag in ds.keys():
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH:
            continue
        if raw.value is not None:
            present = len(raw.value)
        elif file_size is not None:
            present = max(0, file_size - raw.value_tell)
        else:
            continue
        if present < raw.length:
            raise UndecodableError(
                f"element {raw.tag} declares {raw.length} bytes, the data holds {present} "
                "(truncated, or a lying length)"
            )
