"""ribnode.phantom: physically based synthetic chest radiographs with exact ground truth.

``generate_chest`` (numpy only) renders a PA chest by Beer-Lambert line integrals through a
procedural thorax; ``write_dicom_study`` writes it as a DX For Presentation study.
"""

from ribnode.phantom.dicom import build_dataset, synthetic_uid, write_dicom_study
from ribnode.phantom.generator import SyntheticChest, generate_chest

__all__ = ["SyntheticChest", "build_dataset", "generate_chest", "synthetic_uid", "write_dicom_study"]
