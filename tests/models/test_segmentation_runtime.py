"""The anatomy segmenter's runtime: three independent sigmoid outputs on the source matrix, and
the input gate that keeps AI outputs to frontal chest radiographs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ribnode.models.info import STRUCTURES
from ribnode.models.preprocess import NotAChestError, read_png
from ribnode.models.segmentation import RibSegmenter
from ribnode.models.segmentation.runtime import chest_gate, select_providers


def test_one_mask_per_structure_on_the_source_matrix(tiny_models: dict, tmp_path: Path) -> None:
    from PIL import Image

    image = (np.random.default_rng(0).random((150, 130)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    segmenter = RibSegmenter(tiny_models["segmentation"], threads=1)
    result = segmenter(read_png(tmp_path / "x.png"))
    assert segmenter.outputs == STRUCTURES
    assert set(result.structures) == set(STRUCTURES)
    for mask in result.structures.values():
        assert mask.shape == (150, 130) and mask.dtype == bool
    assert result.mask is result.structures["ribs"]
    for probability in result.working_probabilities.values():
        assert probability.shape == (64, 64) and 0 <= probability.min() <= probability.max() <= 1
    assert result.model.parameters["outputs"] == list(STRUCTURES)


def test_weights_that_do_not_match_their_json_are_refused(tiny_models: dict, tmp_path: Path) -> None:
    folder = tmp_path / "w"
    shutil.copytree(tiny_models["segmentation"].parent, folder)
    config = json.loads((folder / "rib-segmentation.json").read_text())
    config["sha256"] = "0" * 64
    (folder / "rib-segmentation.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="sha256"):
        RibSegmenter(folder / "rib-segmentation.onnx")


def test_provider_selection() -> None:
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    with pytest.raises(ValueError, match="cuda"):
        select_providers("cuda", ["CPUExecutionProvider"])


def _lungs(size: int = 256, centres: tuple = ((128, 76), (128, 180)), radius: float = 52.0) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    probability = np.zeros((size, size), np.float32)
    for r, c in centres:
        probability = np.maximum(probability, np.clip(1.0 - np.hypot(rows - r, cols - c) / radius, 0, 1) * 4)
    return np.clip(probability, 0, 1).astype(np.float32)


def test_chest_gate_passes_two_lungs_and_names_what_is_wrong() -> None:
    assert chest_gate(_lungs()) == []
    assert any("cover" in r for r in chest_gate(np.zeros((256, 256), np.float32)))
    one_side = chest_gate(_lungs(centres=((128, 70),)))
    assert any("right half" in r for r in one_side)
    low = chest_gate(_lungs(centres=((220, 80), (220, 176)), radius=40))
    assert any("centred" in r for r in low)
    faint = chest_gate(_lungs() * 0.6)
    assert any("probability" in r for r in faint)
    rng = np.random.default_rng(0)
    speckled = np.clip(_lungs() + rng.normal(0, 0.3, (256, 256)), 0, 1).astype(np.float32)
    assert any("unsure" in r for r in chest_gate(speckled))


def test_check_chest_raises_not_a_chest(tiny_models: dict, tmp_path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.full((100, 100), 128, np.uint8)).save(tmp_path / "flat.png")
    segmenter = RibSegmenter(tiny_models["segmentation"], threads=1)
    result = segmenter(read_png(tmp_path / "flat.png"))
    result.working_probabilities["lungs"] = np.zeros((64, 64), np.float32)
    with pytest.raises(NotAChestError, match="not a frontal chest radiograph"):
        segmenter.check_chest(result)
