"""ribnode.models.preprocess: decoding every transfer syntax, the linear bone-bright map, errors,
the pixel-centre aligned resampling and the mask morphology.

Encoded copies are made with pydicom's encoders (RLE, JPEG-LS, JPEG 2000) and with dcmtk's
``dcmcjpeg``/``dcmcjpls``/``dcmcrle`` (JPEG baseline, extended, lossless have no pydicom encoder;
lossy ``dcmcjpeg`` gets ``+sr`` so it does not stretch the pixel values to min/max first).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

from ribnode.models import preprocess as pp

DATA = Path(pydicom.__file__).parents[1] / "data_store" / "data"


def _phantom(shape: tuple[int, int], bits: int, signed: bool = False, seed: int = 0) -> np.ndarray:
    """A smooth image with edges and a little noise over ~90 % of the ``bits`` range."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    value = 0.3 + 0.4 * rows / shape[0] + 0.1 * np.sin(cols / 9.0)
    value += 0.15 * (((rows - shape[0] / 2) ** 2 + (cols - shape[1] / 3) ** 2) < (shape[1] / 5) ** 2)
    value += rng.normal(0.0, 0.01, shape)
    top = (1 << bits) - 1
    stored = np.clip(value, 0.0, 1.0) * 0.9 * top
    if signed:
        stored -= 1 << (bits - 1)
        return np.rint(stored).astype(np.int8 if bits <= 8 else np.int16)
    return np.rint(stored).astype(np.uint8 if bits <= 8 else np.uint16)


def _dataset(
    stored: np.ndarray,
    bits: int,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    **extra: object,
) -> Dataset:
    """A DX For Presentation dataset holding ``stored`` natively (explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = uid.generate_uid(entropy_srcs=["pre-test", str(bits)])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if stored.dtype.itemsize == 1 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


# -- transfer syntaxes --------------------------------------------------------------------------

PYDICOM_ENCODINGS = [
    (uid.RLELossless, {}, True),
    (uid.JPEGLSLossless, {}, True),
    (uid.JPEGLSNearLossless, {"jls_error": 2}, False),
    (uid.JPEG2000Lossless, {}, True),
    (uid.JPEG2000, {"j2k_cr": [10]}, False),
]


@pytest.mark.parametrize("bits", [8, 12, 16])
@pytest.mark.parametrize(("syntax", "kwargs", "lossless"), PYDICOM_ENCODINGS)
def test_pydicom_encoded_syntaxes_decode(tmp_path: Path, syntax: str, kwargs: dict, lossless: bool, bits: int) -> None:
    stored = _phantom((96, 80), bits)
    ds = _dataset(stored, bits)
    ds.compress(syntax, **kwargs)
    radiograph = pp.read_radiograph(_save(ds, tmp_path / "x.dcm"))
    assert radiograph.transfer_syntax == syntax
    assert radiograph.stored.shape == stored.shape
    _assert_decoded(radiograph.stored, stored, lossless, bits)


def _assert_decoded(decoded: np.ndarray, stored: np.ndarray, lossless: bool, bits: int) -> None:
    if lossless:
        np.testing.assert_array_equal(decoded, stored)
    else:
        error = np.abs(decoded.astype(np.float64) - stored).mean() / ((1 << bits) - 1)
        assert error < 0.01, f"lossy mean error {error:.4f} of full scale"


def test_native_implicit_and_deflated_syntaxes(tmp_path: Path) -> None:
    stored = _phantom((100, 90), 12)
    for syntax in (uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
        ds = _dataset(stored, 12)
        ds.file_meta.TransferSyntaxUID = syntax
        path = tmp_path / f"{syntax}.dcm"
        ds.save_as(path, enforce_file_format=True)
        radiograph = pp.read_radiograph(path)
        assert radiograph.transfer_syntax == syntax
        np.testing.assert_array_equal(radiograph.stored, stored)


DCMTK_ENCODINGS = [
    ("dcmcjpeg", ["+eb", "+sr"], 8, uid.JPEGBaseline8Bit, False),
    ("dcmcjpeg", ["+ee", "+sr"], 12, uid.JPEGExtended12Bit, False),
    ("dcmcjpeg", ["+e1"], 12, uid.JPEGLosslessSV1, True),
    ("dcmcjpeg", ["+el"], 16, uid.JPEGLossless, True),
    ("dcmcjpls", ["+el"], 14, uid.JPEGLSLossless, True),
    ("dcmcjpls", ["+en"], 12, uid.JPEGLSNearLossless, False),
    ("dcmcrle", [], 16, uid.RLELossless, True),
]


@pytest.mark.parametrize(("tool", "flags", "bits", "syntax", "lossless"), DCMTK_ENCODINGS)
def test_dcmtk_encoded_syntaxes_decode(
    tmp_path: Path, tool: str, flags: list[str], bits: int, syntax: str, lossless: bool
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"dcmtk {tool} is not installed (make system)")
    stored = _phantom((128, 104), bits)
    source = _save(_dataset(stored, bits), tmp_path / "native.dcm")
    encoded = tmp_path / "encoded.dcm"
    subprocess.run([tool, *flags, str(source), str(encoded)], check=True, capture_output=True)
    radiograph = pp.read_radiograph(encoded)
    assert radiograph.transfer_syntax == syntax
    _assert_decoded(radiograph.stored, stored, lossless, bits)


def test_real_cr_chest_in_three_encodings() -> None:
    """RG1: Philips CR chest, MONOCHROME1, 15 bits, 1955x1841, Pixel Spacing 0\\0."""
    native = pp.read_radiograph(DATA / "RG1_UNCR.dcm")
    lossless = pp.read_radiograph(DATA / "RG1_J2KR.dcm")
    lossy = pp.read_radiograph(DATA / "RG1_J2KI.dcm")
    assert native.shape == (1955, 1841) and native.photometric == "MONOCHROME1"
    assert native.bits_stored == 15 and native.spacing_mm is None and native.spacing_source is None
    np.testing.assert_array_equal(lossless.stored, native.stored)
    assert np.abs(lossy.image - native.image).mean() < 0.01
    # Bone-bright: the spine (centre column) is brighter than both lungs at mid-height.
    image = pp.to_working(native.image, 256)
    spine = image[60:110, 120:136].mean()
    lungs = (image[60:110, 60:90].mean(), image[60:110, 166:196].mean())
    assert spine > max(lungs) + 0.1, (spine, lungs)


# -- the linear bone-bright map -------------------------------------------------------------------


def test_image_is_linear_in_stored_values_and_window_in_body() -> None:
    stored = _phantom((120, 100), 12)
    radiograph = pp.read_radiograph(_dataset(stored, 12))
    expected = np.clip((stored - radiograph.lo) / (radiograph.hi - radiograph.lo), 0, 1)
    np.testing.assert_allclose(radiograph.image, expected, atol=1e-6)
    assert radiograph.image.dtype == np.float32
    assert np.percentile(stored, 0.4) <= radiograph.lo <= np.percentile(stored, 1.0)
    assert np.percentile(stored, 99.0) <= radiograph.hi <= np.percentile(stored, 99.6)


def test_monochrome1_is_inverted() -> None:
    stored = _phantom((100, 100), 12)
    mono2 = pp.read_radiograph(_dataset(stored, 12, "MONOCHROME2"))
    mono1 = pp.read_radiograph(_dataset(stored, 12, "MONOCHROME1"))
    np.testing.assert_allclose(mono1.image, 1.0 - mono2.image, atol=1e-6)


def test_rescale_is_applied_and_window_is_only_a_hint() -> None:
    stored = _phantom((100, 100), 12)
    plain = pp.read_radiograph(_dataset(stored, 12))
    rescaled = pp.read_radiograph(
        _dataset(stored, 12, RescaleSlope=2.5, RescaleIntercept=-1000, WindowCenter=40, WindowWidth=80)
    )
    np.testing.assert_allclose(rescaled.image, plain.image, atol=1e-5)
    assert rescaled.lo == pytest.approx(plain.lo * 2.5 - 1000)
    assert rescaled.window == (40.0, 80.0)
    voi = Dataset()  # a non-linear VOI LUT (PS3.3 C.11.2): display only, must change nothing
    voi.LUTDescriptor = [4096, 0, 16]
    voi.LUTData = (np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.uint16).tolist()
    with_voi = pp.read_radiograph(_dataset(stored, 12, VOILUTSequence=[voi], VOILUTFunction="SIGMOID"))
    np.testing.assert_array_equal(with_voi.image, plain.image)
    constant = pp.read_radiograph(_dataset(np.full((80, 80), 100, np.uint16), 12, WindowCenter=100, WindowWidth=50))
    assert (constant.lo, constant.hi) == (75.0, 125.0)  # degenerate image: the window is used
    assert np.allclose(constant.image, 0.5)


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 15, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_bits_stored_8_to_16_signed_and_unsigned(bits: int, signed: bool) -> None:
    stored = _phantom((80, 72), bits, signed=signed)
    radiograph = pp.read_radiograph(_dataset(stored, bits, signed=signed))
    np.testing.assert_array_equal(radiograph.stored, stored)
    assert radiograph.signed is signed and radiograph.bits_stored == bits
    assert radiograph.stored_range[1] - radiograph.stored_range[0] == (1 << bits) - 1
    assert 0.0 <= radiograph.image.min() and radiograph.image.max() <= 1.0
    assert radiograph.image.std() > 0.1


def test_non_square_matrix_keeps_rows_by_columns() -> None:
    stored = _phantom((1955, 1841), 12)
    radiograph = pp.read_radiograph(_dataset(stored, 12))
    assert radiograph.image.shape == (1955, 1841) and radiograph.stored.shape == (1955, 1841)


@pytest.mark.parametrize(
    ("extra", "expected", "source"),
    [
        ({"PixelSpacing": [0.2, 0.15], "ImagerPixelSpacing": [0.3, 0.3]}, (0.2, 0.15), "PixelSpacing"),
        ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.143, 0.143]}, (0.143, 0.143), "ImagerPixelSpacing"),
        ({"ImagerPixelSpacing": [0.1, 0.1]}, (0.1, 0.1), "ImagerPixelSpacing"),
        ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0, 0]}, None, None),
        ({}, None, None),
    ],
)
def test_pixel_spacing_and_imager_pixel_spacing(extra: dict, expected: object, source: object) -> None:
    radiograph = pp.read_radiograph(_dataset(_phantom((64, 64), 12), 12, **extra))
    assert radiograph.spacing_mm == expected
    assert radiograph.spacing_source == source


# -- typed errors ---------------------------------------------------------------------------------


def test_colour_and_multiframe_are_rejected() -> None:
    with pytest.raises(pp.NotGrayscaleError, match="SamplesPerPixel 3"):
        pp.read_radiograph(DATA / "SC_rgb.dcm")
    with pytest.raises(pp.MultiFrameError, match="NumberOfFrames 10"):
        pp.read_radiograph(DATA / "emri_small_RLE.dcm")
    palette = _dataset(_phantom((64, 64), 8), 8, "PALETTE COLOR")
    with pytest.raises(pp.NotGrayscaleError, match="PALETTE COLOR"):
        pp.read_radiograph(palette)


def test_one_pixel_image_is_too_small() -> None:
    with pytest.raises(pp.ImageSizeError, match="1x1"):
        pp.read_radiograph(_dataset(np.zeros((1, 1), np.uint16), 12))


def test_size_limit_is_checked_before_pixel_data() -> None:
    """A 10,000 x 10,000 header with 16 bytes of pixel data: the limit fires, not the decoder."""
    ds = _dataset(np.zeros((2, 4), np.uint16), 12)
    ds.Rows, ds.Columns = 10_000, 10_000
    with pytest.raises(pp.ImageSizeError, match="over the limit"):
        pp.read_radiograph(ds)
    ds.Rows, ds.Columns = 300, 300
    with pytest.raises(pp.ImageSizeError, match="90000 px"):
        pp.read_radiograph(ds, max_pixels=256 * 256)


def test_undecodable_pixel_data_is_a_decode_error(tmp_path: Path) -> None:
    ds = _dataset(_phantom((64, 64), 12), 12)
    ds.file_meta.TransferSyntaxUID = uid.JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg stream \xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(pp.DecodeError, match="1.2.840.10008.1.2.4.70"):
        pp.read_radiograph(_save(ds, tmp_path / "bad.dcm"))
    truncated = _dataset(_phantom((64, 64), 12), 12)
    truncated.PixelData = truncated.PixelData[:1000]
    with pytest.raises(pp.DecodeError, match="cannot decode"):
        pp.read_radiograph(truncated)
    del ds.PixelData
    with pytest.raises(pp.DecodeError, match="no Pixel Data"):
        pp.read_radiograph(ds)
    text = tmp_path / "not.dcm"
    text.write_text("hello")
    with pytest.raises(pp.DecodeError):
        pp.read_radiograph(text)


def test_unsupported_bit_depth_and_errors_are_value_errors() -> None:
    ds = _dataset(np.zeros((64, 64), np.uint8), 4)
    with pytest.raises(pp.InputError, match="BitsStored 4"):
        pp.read_radiograph(ds)
    with pytest.raises(pp.InputError, match="RescaleSlope 0.0"):
        pp.read_radiograph(_dataset(_phantom((64, 64), 12), 12, RescaleSlope=0))
    assert issubclass(pp.DecodeError, ValueError)


# -- subtract_layer --------------------------------------------------------------------------------


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("signed", [False, True])
def test_subtract_layer_is_exact_outside_and_linear_inside(photometric: str, signed: bool) -> None:
    stored = _phantom((120, 100), 12, signed=signed)
    radiograph = pp.read_radiograph(
        _dataset(stored, 12, photometric, signed=signed, RescaleSlope=2.0, RescaleIntercept=5.0)
    )
    region = np.zeros(stored.shape, bool)
    region[30:90, 20:70] = True
    layer = np.zeros(stored.shape, np.float32)
    layer[region] = 0.1
    layer[~region] = 0.7  # must be ignored outside region
    result = radiograph.subtract_layer(layer, region)
    assert result.dtype == stored.dtype
    np.testing.assert_array_equal(result[~region], stored[~region])
    # Read back with the same linear map: image - layer, within half a stored unit.
    modality = result.astype(np.float64) * 2.0 + 5.0
    back = (modality - radiograph.lo) / (radiograph.hi - radiograph.lo)
    before = (stored.astype(np.float64) * 2.0 + 5.0 - radiograph.lo) / (radiograph.hi - radiograph.lo)
    if photometric == "MONOCHROME1":
        back, before = 1 - back, 1 - before
    unit = 2.0 / (radiograph.hi - radiograph.lo)
    np.testing.assert_allclose(back[region], before[region] - 0.1, atol=0.5 * unit + 1e-9)


def test_subtract_layer_clips_to_bits_stored_and_checks_shapes() -> None:
    stored = _phantom((80, 80), 12)
    radiograph = pp.read_radiograph(_dataset(stored, 12))
    everywhere = np.ones(stored.shape, bool)
    result = radiograph.subtract_layer(np.full(stored.shape, 10.0), everywhere)
    assert result.min() == 0
    result = radiograph.subtract_layer(np.full(stored.shape, -10.0), everywhere)
    assert result.max() == 4095
    with pytest.raises(ValueError, match="source shape"):
        radiograph.subtract_layer(np.zeros((10, 10)), everywhere)


# -- resampling --------------------------------------------------------------------------------


def test_constant_and_ramp_survive_resampling_without_shift() -> None:
    shape = (1955, 1841)
    constant = np.full(shape, 0.37, np.float32)
    assert np.allclose(pp.to_working(constant, 256), 0.37, atol=1e-5)
    assert np.allclose(pp.to_source(pp.to_working(constant, 256), shape), 0.37, atol=1e-5)
    ramp = np.broadcast_to(np.arange(shape[1], dtype=np.float32), shape)
    working = pp.to_working(ramp, 256)
    centres = (np.arange(256) + 0.5) * shape[1] / 256 - 0.5  # pixel-centre geometry
    interior = slice(16, 240)
    np.testing.assert_allclose(working[128, interior], centres[interior], atol=0.02)
    back = pp.to_source(working, shape)
    np.testing.assert_allclose(back[900, 100:1740], ramp[900, 100:1740], atol=0.05)


def test_mask_round_trip_1955x1841_to_256_and_back() -> None:
    shape = (1955, 1841)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    mask = ((rows - 800.3) / 300) ** 2 + ((cols - 1100.7) / 420) ** 2 < 1
    mask |= (np.abs(rows - 1500) < 25) & (np.abs(cols - 600) < 400)  # a rib-like band
    working = pp.to_working(mask.astype(np.float32), 256)
    back = pp.to_source(working, shape) >= 0.5
    iou = (mask & back).sum() / (mask | back).sum()
    assert back.shape == shape
    assert iou > 0.97, iou
    # Centroid of each structure (ellipse above row 1300, band below): no shift.
    for part in (slice(0, 1300), slice(1300, shape[0])):
        before, after = np.argwhere(mask[part]).mean(0), np.argwhere(back[part]).mean(0)
        assert np.hypot(*(after - before)) < 0.5, (part, before, after)
    nearest = pp.to_source(working >= 0.5, shape, interpolation="nearest")
    assert nearest.dtype == bool and nearest.shape == shape
    assert (mask & nearest).sum() / (mask | nearest).sum() > 0.9


def test_resampling_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        pp.to_source(np.zeros((8, 8)), (16, 16), interpolation="cubic")
    with pytest.raises(ValueError, match="working size"):
        pp.to_working(np.zeros((8, 8)), 0)


# -- morphology -----------------------------------------------------------------------------------


def test_dilate_mask_grows_by_a_disc() -> None:
    mask = np.zeros((65, 65), bool)
    mask[32, 32] = True
    dilated = pp.dilate_mask(mask, 10)
    assert dilated[32, 42] and dilated[22, 32] and not dilated[32, 43] and not dilated[24, 24]
    assert np.pi * 10**2 <= dilated.sum() <= np.pi * 10.6**2  # a discrete disc of radius 10
    np.testing.assert_array_equal(pp.dilate_mask(mask, 0), mask)


def test_clean_mask_drops_islands_and_fills_holes() -> None:
    mask = np.zeros((100, 100), bool)
    mask[10:50, 10:50] = True
    mask[25:30, 25:30] = False  # a hole
    mask[80:83, 80:83] = True  # a 9-pixel island
    cleaned = pp.clean_mask(mask, open_radius_px=1, min_size_px=30)
    assert cleaned[27, 27] and not cleaned[81, 81]
    assert cleaned[10:50, 10:50].all()


# -- PNG --------------------------------------------------------------------------------------------


def test_read_png_8_and_16_bit_and_colour(tmp_path: Path) -> None:
    eight = _phantom((90, 70), 8)
    Image.fromarray(eight).save(tmp_path / "a.png")
    radiograph = pp.read_png(tmp_path / "a.png")
    np.testing.assert_array_equal(radiograph.stored, eight)
    np.testing.assert_allclose(radiograph.image, eight / 255.0, atol=1e-6)
    sixteen = _phantom((90, 70), 16)
    Image.fromarray(sixteen).save(tmp_path / "b.png")
    radiograph = pp.read_png(tmp_path / "b.png")
    assert radiograph.stored.dtype == np.uint16 and radiograph.bits_stored == 16
    np.testing.assert_allclose(radiograph.image, sixteen / 65535.0, atol=1e-6)
    Image.fromarray(np.stack([eight] * 3, -1)).save(tmp_path / "gray-rgb.png")
    np.testing.assert_array_equal(pp.read_png(tmp_path / "gray-rgb.png").stored, eight)
    colour = np.stack([eight, eight[::-1], eight], -1)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(pp.NotGrayscaleError):
        pp.read_png(tmp_path / "c.png")
    Image.fromarray(eight[:10, :10]).save(tmp_path / "tiny.png")
    with pytest.raises(pp.ImageSizeError):
        pp.read_png(tmp_path / "tiny.png")


def test_preprocess_and_synthetic_import_no_ml_runtime() -> None:
    """The node and dicom_sr import these: no torch, onnxruntime or diffusers, no SimpleITK yet."""
    code = (
        "import sys, ribnode.models.preprocess, ribnode.phantom; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'diffusers', 'SimpleITK') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
