"""The real RG1 CR chest of pydicom-data: MONOCHROME1, 15 bits, 1955x1841, zero Pixel Spacing."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from ribnode.config.settings import OutputSettings
from ribnode.dicom_sr import OutputSet, build_outputs
from tests.dicom_sr.conftest import write_outputs
from tests.dicom_sr.inputs import CREATED, model_inputs
from tests.dicom_sr.validation import assert_valid_and_explained as assert_valid
from tests.peers.fixtures import dsrdump


@pytest.fixture(scope="module", params=["RG1_UNCR", "RG1_J2KI"])
def rg1_outputs(
    request: pytest.FixtureRequest,
    rg1_files: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, pydicom.Dataset, OutputSet, dict[str, Path]]:
    name = request.param
    source = pydicom.dcmread(rg1_files[name])
    segmentation, suppression = model_inputs(source, change=800)
    outputs = build_outputs(source, segmentation, suppression, OutputSettings(burned_in_label=True), created=CREATED)
    return name, source, outputs, write_outputs(outputs, tmp_path_factory.mktemp(name))


def test_every_object_is_valid(rg1_outputs: tuple[str, pydicom.Dataset, OutputSet, dict[str, Path]]) -> None:
    _, _, _, paths = rg1_outputs
    for path in paths.values():
        assert_valid(path)
    assert "Imaging Measurement Report" in dsrdump(paths["sr"])


def test_sc_keeps_monochrome1_and_15_bits(
    rg1_outputs: tuple[str, pydicom.Dataset, OutputSet, dict[str, Path]],
) -> None:
    name, source, _, paths = rg1_outputs
    sc = pydicom.dcmread(paths["sc"])
    assert sc.PhotometricInterpretation == "MONOCHROME1"
    assert (sc.Rows, sc.Columns, sc.BitsStored, sc.HighBit) == (1955, 1841, 15, 14)
    assert "PixelSpacing" not in sc  # the source's Pixel Spacing is 0\0
    assert list(sc.PatientOrientation) == ["L", "F"]
    _, suppression = model_inputs(source, change=800)
    pixels = sc.pixel_array
    # The label is display-white (0 in MONOCHROME1) in the top-left corner; elsewhere the
    # pixels are exactly the suppressed image.
    np.testing.assert_array_equal(pixels[200:, :], suppression.soft_stored[200:, :])
    assert pixels[:200, :].min() == 0 and sc.BurnedInAnnotation == "YES"
    assert hd.Image.from_dataset(sc).get_frame(1).shape == (1955, 1841)
    lossy = name.endswith("I")
    assert sc.LossyImageCompression == ("01" if lossy else "00")
    if lossy:
        assert sc.LossyImageCompressionRatio == source.LossyImageCompressionRatio


def test_patient_and_study_modules_copied(
    rg1_outputs: tuple[str, pydicom.Dataset, OutputSet, dict[str, Path]],
) -> None:
    _, source, outputs, _ = rg1_outputs
    for dataset in outputs.datasets():
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "StudyID",
            "AccessionNumber",
            "StudyDescription",
            "ReferringPhysicianName",
        ):
            assert dataset.get(keyword) == source.get(keyword), (dataset.Modality, keyword)


def test_seg_mask_round_trip_on_the_source_matrix(
    rg1_outputs: tuple[str, pydicom.Dataset, OutputSet, dict[str, Path]],
) -> None:
    _, source, _, paths = rg1_outputs
    segmentation, _ = model_inputs(source, change=800)
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(paths["seg"]))
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), segmentation.mask)
    assert "PixelMeasuresSequence" not in seg.SharedFunctionalGroupsSequence[0]


def test_sr_area_in_pixels(rg1_outputs: tuple[str, pydicom.Dataset, OutputSet, dict[str, Path]]) -> None:
    _, source, outputs, _ = rg1_outputs
    segmentation, _ = model_inputs(source, change=800)
    measured = outputs.provenance["sr"]["measurements"]
    assert measured["area_unit"] == "{pixels}"
    assert measured["area"] == float(segmentation.mask.sum())
