"""ribnode.dicom_sr: the DICOM objects written back to the PACS (torch-free).

- :func:`build_outputs` -> :class:`OutputSet` (Secondary Capture, DICOM-SEG, TID 1500 SR)
- :func:`derived_uid`: deterministic Series/SOP Instance UIDs
"""

from ribnode.dicom_sr.outputs import OutputSet, build_outputs
from ribnode.dicom_sr.uids import derived_uid

__all__ = ["OutputSet", "build_outputs", "derived_uid"]
