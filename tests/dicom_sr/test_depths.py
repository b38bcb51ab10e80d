"""Bit depths and pixel representations other than the 12-bit DX: 8-bit, 16-bit, signed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import build_outputs
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, model_inputs, synthetic_dx
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid


def _with_depth(bits_allocated: int, bits_stored: int, signed: bool) -> pydicom.Dataset:
    source = synthetic_dx(rows=64, columns=48)
    rng = np.random.default_rng(1)
    if bits_allocated == 8:
        pixels = rng.integers(10, 250, size=(64, 48), dtype=np.uint8)
    elif signed:
        pixels = rng.integers(-2000, 2000, size=(64, 48), dtype=np.int16)
    else:
        pixels = rng.integers(0, (1 << bits_stored) - 1, size=(64, 48), dtype=np.uint16)
    source.BitsAllocated, source.BitsStored, source.HighBit = bits_allocated, bits_stored, bits_stored - 1
    source.PixelRepresentation = 1 if signed else 0
    source.PixelData = pixels.tobytes()
    return source


@pytest.mark.parametrize(("bits_allocated", "bits_stored", "signed"), [(8, 8, False), (16, 16, False), (16, 14, True)])
def test_depth_kept(tmp_path: Path, bits_allocated: int, bits_stored: int, signed: bool) -> None:
    source = _with_depth(bits_allocated, bits_stored, signed)
    segmentation, suppression = model_inputs(source, change=5)
    # label off: the pixels must be the suppressed image bit for bit (the label has its own tests)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(burned_in_label=False), created=CREATED)
    paths = write_outputs(outputs, tmp_path)
    for path in paths.values():
        assert_valid(path)
    sc = pydicom.dcmread(paths["sc"])
    assert (sc.BitsAllocated, sc.BitsStored, sc.PixelRepresentation) == (bits_allocated, bits_stored, int(signed))
    np.testing.assert_array_equal(sc.pixel_array, suppression.soft_stored)


def test_source_without_pixel_data_is_enough(tmp_path: Path) -> None:
    """The builders read only the source's header: a spool may hand over metadata only."""
    source = synthetic_dx(rows=64, columns=64)
    segmentation, suppression = model_inputs(source)
    path = tmp_path / "source.dcm"
    source.save_as(path, enforce_file_format=True)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    outputs = build_outputs(header, segmentation, suppression, OutputSettings(), created=CREATED)
    assert outputs.sc.Rows == 64 and outputs.seg.Rows == 64
