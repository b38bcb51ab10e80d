"""ribnode.phantom: determinism, exact ground truth, anatomy, DICOM DX round trip."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from ribnode.cli import main
from ribnode.models import preprocess as pp
from ribnode.phantom import generate_chest, synthetic_uid, write_dicom_study
from tests.peers.fixtures import dciodvfy

SIZE = 256  # small and fast; the physics is resolution independent (mm units)


@pytest.fixture(scope="module")
def chest():
    return generate_chest(seed=11, size=SIZE, nodules=3)


def test_deterministic_by_seed(chest) -> None:
    again = generate_chest(seed=11, size=SIZE, nodules=3)
    other = generate_chest(seed=12, size=SIZE, nodules=3)
    np.testing.assert_array_equal(again.radiograph, chest.radiograph)
    np.testing.assert_array_equal(again.soft_tissue, chest.soft_tissue)
    np.testing.assert_array_equal(again.rib_mask, chest.rib_mask)
    assert again.nodules == chest.nodules
    assert not np.array_equal(other.radiograph, chest.radiograph)


def test_exact_layers_and_mask(chest) -> None:
    """radiograph - soft is the bone layer: exactly 0 outside the rib mask, positive inside."""
    assert chest.radiograph.dtype == np.float32 and chest.soft_tissue.dtype == np.float32
    assert chest.rib_mask.dtype == bool and chest.rib_mask.shape == (SIZE, SIZE)
    for image in (chest.radiograph, chest.soft_tissue):
        assert 0.0 <= image.min() and image.max() <= 1.0
    bone = chest.radiograph - chest.soft_tissue
    np.testing.assert_array_equal(bone, chest.bone)
    assert np.count_nonzero(bone[~chest.rib_mask]) == 0
    assert (bone[chest.rib_mask] >= 0).mean() > 0.99
    assert bone[chest.rib_mask].mean() > 0.02
    assert 0.08 < chest.rib_mask.mean() < 0.4


def test_looks_like_a_pa_chest(chest) -> None:
    """Bone-bright: lungs dark, mediastinum bright, air outside the body darkest."""
    image, lungs = chest.radiograph, chest.lung_mask
    assert lungs is not None and 0.15 < lungs.mean() < 0.5
    rows, cols = np.nonzero(lungs)
    mediastinum = image[rows.min() + 30 : rows.max() - 10, SIZE // 2 - 4 : SIZE // 2 + 4].mean()
    assert image[lungs].mean() + 0.2 < mediastinum
    assert image[:, :4].mean() < image[lungs].mean()  # left edge: air beside the body
    # both lungs, one each side of the midline
    assert lungs[:, : SIZE // 2].sum() > 0.3 * lungs.sum() and lungs[:, SIZE // 2 :].sum() > 0.3 * lungs.sum()


def test_nodules_lie_inside_the_lungs(chest) -> None:
    assert len(chest.nodules) == 3
    for row, col, radius in chest.nodules:
        assert chest.lung_mask[int(round(row)), int(round(col))]
        assert 1.0 < radius < 0.1 * SIZE
    assert generate_chest(seed=11, size=SIZE, nodules=0).nodules == []


def test_non_square_size_and_bad_arguments() -> None:
    chest = generate_chest(seed=2, size=(300, 240), nodules=1)
    assert chest.radiograph.shape == chest.rib_mask.shape == (300, 240)
    assert chest.pixel_spacing_mm == pytest.approx(430.0 / 300)
    with pytest.raises(ValueError, match="64"):
        generate_chest(seed=0, size=32)


def _dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy errors, except its dictionary gap: Synthetic Data (0008,001C, DICOM 2024b)."""
    errors, _ = dciodvfy(path)
    return [e for e in errors if not ("(0008,001c)" in e.lower() and "not a recognized standard attribute" in e)]


@pytest.mark.parametrize(("photometric", "bits"), [("MONOCHROME2", 12), ("MONOCHROME1", 14)])
def test_dicom_dx_round_trip(tmp_path: Path, chest, photometric: str, bits: int) -> None:
    [path] = write_dicom_study(chest, tmp_path, seed=11, photometric=photometric, bits_stored=bits)
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.Modality == "DX"
    assert ds.PatientName == "SYNTHETIC^CHEST^11" and ds.ViewPosition == "PA"
    assert ds.Manufacturer == "ribnode synthetic phantom" and ds.BodyPartExamined == "CHEST"
    assert ds.StudyInstanceUID == synthetic_uid(11, "study")
    radiograph = pp.read_radiograph(path)
    assert radiograph.photometric == photometric and radiograph.bits_stored == bits
    assert radiograph.spacing_source == "ImagerPixelSpacing"
    assert radiograph.spacing_mm == pytest.approx((430.0 / SIZE, 430.0 / SIZE), abs=1e-5)
    top = (1 << bits) - 1
    linear = radiograph.stored / top
    if photometric == "MONOCHROME1":
        linear = 1.0 - linear
    np.testing.assert_allclose(linear, chest.radiograph, atol=0.5 / top + 1e-6)
    # read_radiograph's image is the same picture through a robust linear window
    inside = (radiograph.image > 0.01) & (radiograph.image < 0.99)
    fit = np.polyfit(chest.radiograph[inside], radiograph.image[inside], 1)
    residual = radiograph.image[inside] - np.polyval(fit, chest.radiograph[inside])
    assert fit[0] > 0 and np.abs(residual).max() < 2.0 / top * fit[0] + 1e-4


def test_dicom_pixel_spacing_and_compressed_syntax(tmp_path: Path, chest) -> None:
    [path] = write_dicom_study(chest, tmp_path, seed=11, pixel_spacing=True, transfer_syntax=uid.JPEGLSLossless)
    radiograph = pp.read_radiograph(path)
    assert radiograph.transfer_syntax == uid.JPEGLSLossless
    assert radiograph.spacing_source == "PixelSpacing"
    assert radiograph.spacing_mm[0] == pytest.approx(430.0 / SIZE / 1.1, abs=1e-5)
    np.testing.assert_array_equal(radiograph.stored, np.rint(chest.radiograph * 4095))
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(path) == []


def test_uids_are_deterministic_by_seed(tmp_path: Path, chest) -> None:
    first = pydicom.dcmread(write_dicom_study(chest, tmp_path / "a", seed=11)[0])
    second = pydicom.dcmread(write_dicom_study(chest, tmp_path / "b", seed=11)[0])
    other = pydicom.dcmread(write_dicom_study(chest, tmp_path / "c", seed=12)[0])
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert first[keyword].value == second[keyword].value != other[keyword].value
        assert uid.UID(first[keyword].value).is_valid


def test_synth_command_writes_studies_and_truth(tmp_path: Path) -> None:
    code = main(
        [
            "synth",
            "--seed",
            "5",
            "--count",
            "2",
            "--out",
            str(tmp_path),
            "--size",
            "160x128",
            "--photometric",
            "MONOCHROME1",
            "--bits",
            "14",
            "--truth",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "synthetic-chest-00005.dcm" in names and "synthetic-chest-00006-ribs.png" in names
    assert "synthetic-chest-00006.json" in names and "synthetic-chest-00005-soft.png" in names
    ds = pydicom.dcmread(tmp_path / "synthetic-chest-00006.dcm")
    assert (ds.Rows, ds.Columns, ds.PhotometricInterpretation) == (160, 128, "MONOCHROME1")
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path), "--size", "10"])
