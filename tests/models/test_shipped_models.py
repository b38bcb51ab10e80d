"""The shipped weights on real radiographs: what the product promises, measured each run.

RG1 (a real CR chest, MONOCHROME1, 15 bits, 1955x1841), the synthetic phantom, a few held-out
JSRT / BSE-JSRT pairs and RG3 (an extremity: not a chest). The figures in docs/benchmarks.md
come from ``ribnode-lab``; these tests guard the same properties on a few cases, with floors
set below the measured figures so that a regression fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ribnode.models.preprocess import NotAChestError, Radiograph, read_radiograph
from ribnode.models.segmentation import RibSegmenter
from ribnode.models.suppression import RibSuppressor

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def segmenter() -> RibSegmenter:
    return RibSegmenter(threads=2)


@pytest.fixture(scope="module")
def suppressor() -> RibSuppressor:
    return RibSuppressor(threads=2)


@pytest.fixture(scope="module")
def rg1(rg1_files: dict[str, Path]) -> Radiograph:
    return read_radiograph(pydicom.dcmread(rg1_files["RG1_UNCR"]))


def test_rg1_masks_are_anatomy_and_the_gate_passes(segmenter: RibSegmenter, rg1: Radiograph) -> None:
    result = segmenter(rg1)
    segmenter.check_chest(result)
    lungs, ribs, clavicles = (result.structures[k] for k in ("lungs", "ribs", "clavicles"))
    assert 0.2 < lungs.mean() < 0.6
    half = lungs.shape[1] // 2
    assert lungs[:, :half].mean() > 0.1 and lungs[:, half:].mean() > 0.1  # two lungs
    assert clavicles.sum() > 0.002 * clavicles.size  # the clavicles are found
    rows = np.nonzero(clavicles)[0]
    assert np.median(rows) < 0.4 * clavicles.shape[0]  # ... in the upper chest
    assert ribs.mean() > 0.05


def test_rg1_output_equals_input_outside_the_region(
    segmenter: RibSegmenter, suppressor: RibSuppressor, rg1: Radiograph
) -> None:
    result = suppressor(rg1, segmenter(rg1))
    assert result.mask.mean() <= 0.65
    assert np.array_equal(result.soft_stored[~result.mask], rg1.stored[~result.mask])
    changed = result.soft_stored != rg1.stored
    assert changed[result.mask].mean() > 0.2  # bone is removed over much of the lungs
    # MONOCHROME1: bone is dark, so removing bone can only raise the stored values
    assert (result.soft_stored.astype(np.int64) >= rg1.stored.astype(np.int64)).all()


def test_the_gate_refuses_an_extremity_and_non_chest_images(
    segmenter: RibSegmenter, rg3_files: dict[str, Path]
) -> None:
    with pytest.raises(NotAChestError):
        segmenter.check_chest(segmenter(read_radiograph(pydicom.dcmread(rg3_files["RG3_UNCR"]))))
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:512, :512]
    for image in (
        rng.random((512, 512)),
        rng.random((1000, 900)),
        np.full((512, 512), 0.5),
        (rows / 511.0),
        np.clip(np.hypot(rows - 256, cols - 256) / 300, 0, 1),
    ):
        with pytest.raises(NotAChestError):
            segmenter.check_chest(segmenter.segment_image(np.asarray(image, np.float32)))


def test_the_gate_passes_the_phantom(segmenter: RibSegmenter) -> None:
    from ribnode.phantom import generate_chest

    for seed in (1, 2, 3):
        segmenter.check_chest(segmenter.segment_image(generate_chest(seed, 512).radiograph))


def _held_out_pairs(count: int) -> list:
    if not (DATA / "jsrt-bse-512").is_dir():
        pytest.fail(f"{DATA} is missing: these tests need ../shared/data beside the checkout")
    from ribnode_lab.data import load_cases

    _, held = load_cases(DATA)
    return [c for c in held if c.paired][:count]


def test_held_out_pairs_bone_removed(segmenter: RibSegmenter, suppressor: RibSuppressor) -> None:
    from ribnode_lab.evaluate import evaluate_suppression

    figures = evaluate_suppression(segmenter, suppressor, _held_out_pairs(4))
    refined = figures["refined"]
    # floors under 3.0.0's figures on these four pairs (BSR 0.668, amplitude gain 0.66): a
    # regression fails here; the targets (0.90, 0.9-1.1) are in docs/benchmarks.md, not met yet
    assert refined["bsr"]["mean"] > 0.64
    assert 0.6 < refined["amplitude_gain"]["mean"] < 1.15
    assert refined["region_coverage"]["worst"] > 0.99
    assert refined["outside_mask_change"]["worst"] == 0.0
    assert refined["bsr"]["mean"] >= figures["estimator"]["bsr"]["mean"] - 0.01  # the refiner costs no BSR
