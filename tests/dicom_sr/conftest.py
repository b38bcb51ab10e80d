"""Fixtures of the dicom_sr tests: write an OutputSet to disk once per source."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, build_outputs
from tests.dicom_sr.inputs import CREATED, model_inputs, synthetic_dx


def write_outputs(outputs: OutputSet, folder: Path) -> dict[str, Path]:
    """Write SC, SEG and SR as Part 10 files; return their paths by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, dataset in zip(("sc", "seg", "sr"), outputs.datasets()):
        paths[kind] = folder / f"{kind}.dcm"
        dataset.save_as(paths[kind], enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def dx_outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[pydicom.Dataset, OutputSet, dict[str, Path]]:
    """A synthetic 12-bit MONOCHROME2 DX (Imager Pixel Spacing only) and its written outputs."""
    source = synthetic_dx()
    segmentation, suppression = model_inputs(source)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(), created=CREATED)
    return source, outputs, write_outputs(outputs, tmp_path_factory.mktemp("dx"))
