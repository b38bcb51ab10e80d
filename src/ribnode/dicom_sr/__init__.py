"""ribnode.dicom_sr: the DICOM objects written back to the PACS (torch-free).

- :func:`build_outputs` -> :class:`OutputSet` (Secondary Capture, DICOM-SEG, TID 1500 SR)
- :func:`content_uid`: Series/SOP Instance UIDs that follow content
- :func:`result_series`: one result series per output kind for the source images of a run
"""

from ribnode.dicom_sr.outputs import OutputSet, ResultSeries, build_outputs, result_series
from ribnode.dicom_sr.uids import content_uid

__all__ = ["OutputSet", "ResultSeries", "build_outputs", "content_uid", "result_series"]
