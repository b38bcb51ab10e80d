"""The shipped rib-suppression weights: RG1 end to end, reproducibility, ORT/torch parity,
and a quality guard on held-out pairs (skipped where ``../shared`` data is absent).

Slower than ``test_suppression.py`` (a 1955x1841 radiograph, the real network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ribnode.models.info import ModelInfo, SegmentationResult
from ribnode.models.preprocess import read_radiograph
from ribnode.models.suppression.runtime import DEFAULT_ONNX, DEFAULT_TORCH, RibSuppressor, seed_from_uid

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DEFAULT_ONNX.is_file(), reason="shipped suppression weights not present"),
]
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def rg1() -> tuple[object, SegmentationResult]:
    """The real RG1 CR chest and a rib mask for it (the shipped segmenter if present)."""
    data_store = pytest.importorskip("data_store")
    radiograph = read_radiograph(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm")
    try:
        from ribnode.models.segmentation import RibSegmenter

        segmentation = RibSegmenter(device="cpu", threads=1)(radiograph)
    except FileNotFoundError:  # no shipped segmenter: a fixed band mask over the lungs
        mask = np.zeros(radiograph.shape, bool)
        for row in range(500, 1500, 90):
            mask[row:row + 30, 250:1600] = True
        segmentation = SegmentationResult(mask, mask.astype(np.float32), ModelInfo("band", "0", "0" * 64))
    return radiograph, segmentation


def test_rg1_end_to_end_is_reproducible_and_local(rg1: tuple) -> None:
    radiograph, segmentation = rg1
    sup = RibSuppressor(device="cpu", threads=1)
    result = sup(radiograph, segmentation)
    assert result.seed == seed_from_uid(radiograph.sop_instance_uid)
    assert result.soft_stored.shape == radiograph.shape and result.soft_stored.dtype == radiograph.stored.dtype
    np.testing.assert_array_equal(result.soft_stored[~result.mask], radiograph.stored[~result.mask])
    changed = result.soft_stored != radiograph.stored
    assert changed.any() and not (changed & ~result.mask).any()
    # bone is removed: MONOCHROME1 stored values rise (darker bone) where anything changed
    delta = result.soft_stored[changed].astype(np.int64) - radiograph.stored[changed]
    assert radiograph.photometric == "MONOCHROME1" and (delta > 0).all()
    again = sup(radiograph, segmentation)
    np.testing.assert_array_equal(again.soft_stored, result.soft_stored)


@pytest.mark.skipif(not DEFAULT_TORCH.is_file(), reason="shipped torch weights not present")
def test_shipped_onnx_and_torch_agree(rg1: tuple) -> None:
    pytest.importorskip("torch")
    radiograph, segmentation = rg1
    a = RibSuppressor(device="cpu", threads=1)(radiograph, segmentation)
    b = RibSuppressor(device="cpu", backend="torch", threads=1)(radiograph, segmentation)
    assert np.abs(a.bone - b.bone).max() < 1e-4
    assert np.abs(a.soft_stored.astype(np.int64) - b.soft_stored).max() <= 1


def test_held_out_quality_guard() -> None:
    """Mean BSR on three held-out pairs stays well above doing nothing (regression guard)."""
    from ribnode.models.metrics import bone_suppression_ratio
    from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs

    if not (DEFAULT_DATA / "source").is_dir():
        pytest.skip(f"{DEFAULT_DATA} not present")
    sup = RibSuppressor(device="cpu", threads=1)
    pairs = load_pairs(DEFAULT_DATA, sup.config.training["held_out_cases"][:3])
    values = []
    for pair in pairs:
        x = pair.radiograph.astype(np.float64)
        p = x - sup.bone_layer(pair.radiograph, pair.rib_mask, seed=0)
        values.append(bone_suppression_ratio(x, pair.soft_tissue.astype(np.float64), p))
    # measured (2.3.0, default 1 step, median along the ribs 31 px): 0.687 on these three, 0.725 mean
    # over all 25 (docs/models); without the median (2.2.0): 0.710 and 0.748; 2.4.0 (edge taper): 0.729
    assert np.mean(values) > 0.65


def test_shipped_default_is_the_whole_image_and_windows_remove_more_bone() -> None:
    """The shipped json runs the denoiser on the whole image (nodule safety first); 128-px
    windows, the training crop, remove more bone on held-out pairs (docs/models, "Denoiser windows")."""
    from ribnode.models.metrics import bone_suppression_ratio
    from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs

    whole = RibSuppressor(device="cpu", threads=1)
    assert whole.pipeline.tile == 0 and whole.info.parameters["tile_px"] == 0
    if not (DEFAULT_DATA / "source").is_dir():
        pytest.skip(f"{DEFAULT_DATA} not present")
    tiled = RibSuppressor(device="cpu", threads=1, tile_px=128)
    assert (tiled.info.parameters["tile_px"], tiled.info.parameters["tile_stride_px"]) == (128, 64)
    pairs = load_pairs(DEFAULT_DATA, whole.config.training["held_out_cases"][:3])
    gains = []
    for pair in pairs:
        x = pair.radiograph.astype(np.float64)
        y = pair.soft_tissue.astype(np.float64)
        bsr = [bone_suppression_ratio(x, y, x - sup.bone_layer(pair.radiograph, pair.rib_mask, seed=0))
               for sup in (whole, tiled)]
        gains.append(bsr[1] - bsr[0])
    # measured on all 25 held-out pairs: 0.748 -> 0.788, higher on 24 of 25
    assert np.mean(gains) > 0.01


def test_shipped_default_takes_the_median_along_the_ribs_and_keeps_more_of_a_rib_nodule() -> None:
    """The shipped json turns the median along the ribs on (31 px at 512). On held-out pairs it
    keeps more of a small nodule on a rib than the same model without it (docs/models,
    "Median along the ribs": 460 of 600 rib trials, every rib cell >= 0.972)."""
    from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs
    from ribnode.models.suppression.lesions import nodule, retention_and_spurious

    default = RibSuppressor(device="cpu", threads=1)
    assert default.rib_median_px == 31 and default.info.parameters["rib_median_line_px_512"] == 31
    assert default.info.version == "2.4.0"
    if not (DEFAULT_DATA / "source").is_dir():
        pytest.skip(f"{DEFAULT_DATA} not present")
    off = RibSuppressor(device="cpu", threads=1, rib_median_px_512=0)
    kept: dict[str, list[float]] = {"default": [], "off": []}
    for pair in load_pairs(DEFAULT_DATA, default.config.training["held_out_cases"][:2]):
        x = pair.radiograph.astype(np.float64)
        rng = np.random.default_rng(3)
        candidates = np.argwhere(pair.rib_mask[40:-40, 40:-40]) + 40
        centres = [(float(candidates[i][0]), float(candidates[i][1]))
                   for i in rng.choice(len(candidates), size=3, replace=False)]
        for name, sup in (("default", default), ("off", off)):
            p = x - sup.bone_layer(pair.radiograph, pair.rib_mask, seed=0)
            for centre in centres:
                n = nodule(x.shape, centre, 3.0, 0.04)
                p_n = x + n - sup.bone_layer((x + n).astype(np.float32), pair.rib_mask, seed=0)
                kept[name].append(retention_and_spurious(p, p_n, n, centre, 3.0)[0])
    assert np.mean(kept["default"]) > np.mean(kept["off"]) + 0.005
    assert np.mean(kept["default"]) > 0.95


def test_shipped_default_tapers_the_layer_off_the_ribs() -> None:
    """The shipped json weights the bone layer by the edge taper (5 px at 512, version 2.4.0): it
    never subtracts more than without, and the one pair's-mask trial in which 2.3.0's median made
    a spurious change over the 0.005 target (JPCLN126: an open-lung nodule of 3 px, c = 0.04,
    between close ribs; docs/benchmarks/suppression.md, "Version 2.4.0") stays under it."""
    from ribnode.models.suppression.data import DEFAULT_DATA, load_pairs
    from ribnode.models.suppression.lesions import nodule, retention_and_spurious

    default = RibSuppressor(device="cpu", threads=1)
    assert default.info.version == "2.4.0" and default.info.parameters["edge_taper_px_512"] == 5.0
    assert default.edge_taper_px == 5.0 and default.rib_median_px == 31
    if not (DEFAULT_DATA / "source").is_dir():
        pytest.skip(f"{DEFAULT_DATA} not present")
    untapered = RibSuppressor(device="cpu", threads=1, edge_taper_px_512=0)
    pair = load_pairs(DEFAULT_DATA, ["JPCLN126"])[0]
    x = pair.radiograph.astype(np.float64)
    centre = (153.0, 82.0)  # the placement eval-lesions draws there (seed 0), measured 0.0057 on 2.3.0
    n = nodule(x.shape, centre, 3.0, 0.04)
    spurious, layers = {}, {}
    for name, sup in (("default", default), ("untapered", untapered)):
        layers[name] = sup.bone_layer(pair.radiograph, pair.rib_mask, seed=0)
        with_nodule = sup.bone_layer((x + n).astype(np.float32), pair.rib_mask, seed=0)
        spurious[name] = retention_and_spurious(x - layers[name], x + n - with_nodule, n, centre, 3.0)[1]
    assert (layers["default"] <= layers["untapered"] + 1e-7).all()
    np.testing.assert_array_equal(layers["default"][pair.rib_mask], layers["untapered"][pair.rib_mask])
    assert spurious["untapered"] > 0.005 > spurious["default"]


def test_infer_writes_soft_png_of_the_input_size_and_depth(tmp_path: Path) -> None:
    """``ribnode infer`` writes <stem>-soft.png: DICOM -> 16-bit stored values, PNG -> its own depth."""
    from PIL import Image

    from ribnode.cli import main
    from ribnode.models.segmentation.runtime import DEFAULT_WEIGHTS as SEG_WEIGHTS

    if not SEG_WEIGHTS.is_file():
        pytest.skip("shipped segmentation weights not present")
    data_store = pytest.importorskip("data_store")
    dicom = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    png = tmp_path / "small.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((300, 280)) * 255).astype(np.uint8)).save(png)
    out = tmp_path / "out"
    assert main(["infer", str(dicom), str(png), "--output", str(out), "--threads", "1", "--steps", "2",
                 "--seed", "7", "--rib-median", "31"]) == 0
    soft = np.asarray(Image.open(out / "RG1_UNCR-soft.png"))
    source = read_radiograph(dicom)
    assert soft.shape == source.shape and soft.dtype == np.uint16
    ribs = np.asarray(Image.open(out / "RG1_UNCR-ribs.png")) > 0
    from scipy import ndimage

    far = ndimage.distance_transform_edt(~ribs) > 25  # beyond the 5 px-at-512 dilation (~19 px here)
    np.testing.assert_array_equal(soft[far], source.stored[far])
    assert (soft[~far] != source.stored[~far]).any()
    small = np.asarray(Image.open(out / "small-soft.png"))
    assert small.shape == (300, 280) and small.dtype == np.uint8


def test_node_settings_reach_the_suppressor() -> None:
    """``models.suppression_rib_median`` and ``models.suppression_edge_taper`` override the
    json's post-steps in the worker's pipeline; unset, the json's values stand."""
    from ribnode.config.settings import Settings
    from ribnode.models.pipeline import RibPipeline

    models = Settings().models.model_copy(update={"intra_op_threads": 1})
    shipped = RibPipeline(models).suppressor
    assert (shipped.rib_median_px, shipped.edge_taper_px) == (31, 5.0)
    overridden = RibPipeline(models.model_copy(update={"suppression_rib_median": 0,
                                                       "suppression_edge_taper": 0.0})).suppressor
    assert (overridden.rib_median_px, overridden.edge_taper_px) == (0, 0.0)
    assert overridden.info.parameters["edge_taper_px_512"] == 0.0
