"""Rib-mask derivations (reference and local), split and normalisation of the segmentation data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ribnode.models.segmentation.data import (
    case_ids, load_pair, local_open_rib_mask, local_rib_mask, reference_rib_mask, rib_mask, split_cases,
    stratum)
from ribnode.models.synthetic import generate_chest
from ribnode.models.segmentation.normalisation import normalise, resample

SHARED = Path(__file__).resolve().parents[3] / "shared"
TOOL = SHARED / "tools" / "derive_rib_masks.py"
PAIRS = SHARED / "data" / "jsrt-bse-512"


def _synthetic_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stored-inverted 8-bit source/target with rib-like bands added to the source."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:128, 0:128]
    soft = 0.4 + 0.2 * np.sin(cols / 20.0) + rng.normal(0, 0.005, (128, 128))
    bands = (np.sin(rows / 4.0 + cols / 30.0) > 0.6) & (cols > 20) & (cols < 108)
    radiograph = soft + 0.06 * bands
    to_u8 = lambda x: np.rint(np.clip(1 - x, 0, 1) * 255).astype(np.uint8)  # noqa: E731
    return to_u8(radiograph), to_u8(soft)


@pytest.mark.skipif(not TOOL.is_file(), reason="../shared/tools not beside the checkout")
def test_reference_mask_equals_the_shared_tool() -> None:
    spec = importlib.util.spec_from_file_location("derive_rib_masks", TOOL)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source, target = _synthetic_pair()
    expected = tool.bone_mask(source.astype(np.float64), target.astype(np.float64), 0.02)
    ours = reference_rib_mask(1 - source / 255.0, 1 - target / 255.0)
    assert expected.any() and np.array_equal(ours, expected)


def test_load_pair_derives_the_mask_and_honours_given_masks(tmp_path: Path) -> None:
    source, target = _synthetic_pair(1)
    for sub in ("source", "target"):
        (tmp_path / sub).mkdir()
    Image.fromarray(source).save(tmp_path / "source" / "CASE1.png")
    Image.fromarray(target).save(tmp_path / "target" / "CASE1.png")
    pair = load_pair(tmp_path, "CASE1", inverted=True, cache_dir=tmp_path / "cache", labels="reference")
    assert pair.radiograph.shape == pair.mask.shape == (128, 128)
    assert np.array_equal(pair.mask, reference_rib_mask(1 - source / 255.0, 1 - target / 255.0))
    local = load_pair(tmp_path, "CASE1", inverted=True, cache_dir=tmp_path / "cache", labels="local")
    assert np.array_equal(local.mask, local_rib_mask(1 - source / 255.0, 1 - target / 255.0))
    opened = load_pair(tmp_path, "CASE1", inverted=True, cache_dir=tmp_path / "cache")  # the default
    assert np.array_equal(opened.mask, local_open_rib_mask(1 - source / 255.0, 1 - target / 255.0))
    assert len(list((tmp_path / "cache").glob("CASE1-*.png"))) == 3  # one cache entry per definition
    with pytest.raises(ValueError, match="labels"):
        load_pair(tmp_path, "CASE1", cache_dir=None, labels="expert")
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.full((128, 128), 255, np.uint8)).save(tmp_path / "masks" / "CASE1.png")
    assert load_pair(tmp_path, "CASE1", cache_dir=None).mask.all()
    assert case_ids(tmp_path) == ["CASE1"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def test_local_labels_find_the_exact_ribs_of_synthetic_chests() -> None:
    """On chests with an exact rib mask, the local definition is at least as right as the reference."""
    local, reference = [], []
    for seed in range(3):
        chest = generate_chest(seed, 512, nodules=0)
        lung, truth = chest.lung_mask, chest.rib_mask & chest.lung_mask
        local.append(_dice(rib_mask(chest.radiograph, chest.soft_tissue, "local") & lung, truth))
        reference.append(_dice(rib_mask(chest.radiograph, chest.soft_tissue, "reference") & lung, truth))
    assert min(local) > 0.88
    assert np.mean(local) >= np.mean(reference) - 0.005


def test_local_labels_do_not_depend_on_the_strength_of_the_bone_layer() -> None:
    """Halving the bone layer (a fainter suppression) keeps the local mask; the reference loses ribs."""
    chest = generate_chest(4, 512, nodules=0)
    x, y = chest.radiograph.astype(np.float64), chest.soft_tissue.astype(np.float64)
    faint = y + 0.5 * (x - y)
    assert _dice(local_rib_mask(x, y), local_rib_mask(faint, y)) > 0.95
    assert _dice(reference_rib_mask(x, y), reference_rib_mask(faint, y)) < 0.9
    with pytest.raises(ValueError, match="labels"):
        rib_mask(x, y, "expert")


def test_local_open_labels_keep_the_lung_that_ribs_enclose_out() -> None:
    """A ring of bone around lung: local-open leaves the enclosed lung out, fills only pinholes."""
    soft = np.full((512, 512), 0.3)
    rows, cols = np.mgrid[0:512, 0:512]
    radius = np.hypot(rows - 256.0, cols - 256.0)
    ring = (radius > 60) & (radius < 90)  # bone around a lung hole of about 11000 px
    pinhole = (np.abs(rows - 181) <= 2) & (np.abs(cols - 256) <= 2)  # a 9-px hole once smoothed
    gap = (np.abs(rows - 331) <= 3) & (np.abs(cols - 256) <= 3)  # a 25-px hole: over the 20-px limit
    radiograph = soft + 0.05 * (ring & ~pinhole & ~gap)
    both = radiograph, soft
    lung = radius < 58
    filled = local_rib_mask(*both)
    assert filled[lung].all() and filled[pinhole].all() and filled[gap].all()  # hole filling: all rib
    opened = local_open_rib_mask(*both)
    assert not opened[lung].any() and opened[pinhole].all() and not opened[gap].all()
    assert opened[ring & ~pinhole & ~gap].mean() > 0.95
    assert np.array_equal(rib_mask(*both, "local-open"), opened)


def test_local_open_labels_are_closer_to_the_exact_ribs_of_synthetic_chests() -> None:
    """Synthetic ribs cross and enclose lung; not filling it brings the labels nearer the truth."""
    scores: dict[str, list[float]] = {"local": [], "local-open": []}
    for seed in range(2):
        chest = generate_chest(seed, 512, nodules=0)
        lung, truth = chest.lung_mask, chest.rib_mask & chest.lung_mask
        for name, values in scores.items():
            values.append(_dice(rib_mask(chest.radiograph, chest.soft_tissue, name) & lung, truth))
    assert min(scores["local-open"]) > 0.95
    assert np.mean(scores["local-open"]) > np.mean(scores["local"]) + 0.02


def test_split_is_fixed_stratified_and_disjoint() -> None:
    ids = [f"JPCLN{i:03d}" for i in range(36)] + [f"JPCNN{i:03d}" for i in range(92)]
    train, held = split_cases(ids, 24, seed=7)
    assert (train, held) == split_cases(list(reversed(ids)), 24, seed=7)
    assert len(held) == 24 and len(train) == 104 and not set(train) & set(held)
    assert sum(stratum(c) == "JPCLN" for c in held) == 7
    assert split_cases(ids, 24, seed=8)[1] != held
    with pytest.raises(ValueError, match="held_out"):
        split_cases(ids, 0, seed=7)


def test_normalise_windows_percentiles_to_unit_range() -> None:
    image = np.linspace(0.2, 0.6, 10000, dtype=np.float32).reshape(100, 100)
    out = normalise(image)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(normalise(image * 3 + 1), out, atol=1e-5)  # gain/offset invariant
    assert not normalise(np.ones((8, 8))).any()
    with pytest.raises(ValueError, match="2-D"):
        normalise(np.zeros((2, 2, 2)))


def test_resample_round_trip_keeps_geometry() -> None:
    mask = np.zeros((300, 217), dtype=np.float32)
    mask[100:200, 50:150] = 1
    small = resample(mask, (150, 150))
    back = resample(small, (300, 217)) > 0.5
    rows, cols = np.nonzero(back)
    assert back.shape == (300, 217)
    assert abs(rows.mean() - 149.5) < 0.6 and abs(cols.mean() - 99.5) < 0.6  # no half-pixel shift


@pytest.mark.skipif(not PAIRS.is_dir(), reason="../shared/data not beside the checkout")
def test_shared_pairs_give_plausible_rib_masks() -> None:
    ids = case_ids(PAIRS)
    assert len(ids) == 128
    pair = load_pair(PAIRS, ids[0])
    assert pair.mask.shape == (512, 512) and 0.02 < pair.mask.mean() < 0.3
