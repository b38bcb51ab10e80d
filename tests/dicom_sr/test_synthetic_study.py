"""The objects for the project's synthetic chest study, with the exact bone layer as the
"suppression": the same path the pipeline takes (read_radiograph, subtract_layer), no models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import build_outputs
from ribnode.models.info import SegmentationResult, SuppressionResult
from ribnode.models.preprocess import read_radiograph
from ribnode.phantom import generate_chest, write_dicom_study
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, SEG_MODEL, SUP_MODEL
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid


@pytest.mark.parametrize(("photometric", "pixel_spacing"), [("MONOCHROME2", False), ("MONOCHROME1", True)])
def test_synthetic_study_outputs(tmp_path: Path, photometric: str, pixel_spacing: bool) -> None:
    chest = generate_chest(seed=5, size=256, nodules=1)
    [path] = write_dicom_study(
        chest, tmp_path / "in", seed=5, photometric=photometric, bits_stored=12, pixel_spacing=pixel_spacing
    )
    source = pydicom.dcmread(path)
    radiograph = read_radiograph(source)
    bone = chest.radiograph - chest.soft_tissue
    region = chest.rib_mask
    soft_stored = radiograph.subtract_layer(bone, region)
    segmentation = SegmentationResult(region, region.astype(np.float32), SEG_MODEL)
    suppression = SuppressionResult(soft_stored, bone.astype(np.float32), region, 7, 4, 256, SUP_MODEL)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(burned_in_label=False), created=CREATED)
    paths = write_outputs(outputs, tmp_path / "out")
    for written in paths.values():
        assert_valid(written)
    sc = pydicom.dcmread(paths["sc"])
    assert sc.PhotometricInterpretation == photometric
    assert sc.BitsStored == 12
    np.testing.assert_array_equal(sc.pixel_array[~region], source.pixel_array[~region])
    np.testing.assert_array_equal(sc.pixel_array, soft_stored)
    # Bone removed means darker in display terms: lower values in MONOCHROME2, higher in 1.
    removed = sc.pixel_array[region].astype(np.int64) - source.pixel_array[region].astype(np.int64)
    assert np.sign(removed.mean()) == (1 if photometric == "MONOCHROME1" else -1)
    # The SC decodes through the same reader as any radiograph.
    assert read_radiograph(sc).stored.shape == source.pixel_array.shape
    if source.get("SyntheticData") == "YES":
        assert all(d.SyntheticData == "YES" for d in outputs.datasets())
    spacing = outputs.provenance["sr"]["measurements"]["spacing_attribute"]
    assert spacing == ("PixelSpacing" if pixel_spacing else "ImagerPixelSpacing")
    assert outputs.provenance["sr"]["measurements"]["area_unit"] == "mm2"
