"""The bone suppression's runtime (ONNX Runtime + numpy) against torch and diffusers, and the
guarantees the product makes: bit-identical outside the region, never adding density, one
output per seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ribnode.models.preprocess import read_png
from ribnode.models.segmentation import RibSegmenter
from ribnode.models.suppression import RibSuppressor, scheduler


def test_numpy_steps_match_diffusers_flow_match_euler() -> None:
    torch = pytest.importorskip("torch")
    from diffusers import FlowMatchEulerDiscreteScheduler

    for steps in (1, 2, 4):
        reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        reference.set_timesteps(sigmas=scheduler.sigmas(steps)[:-1].tolist())
        assert np.allclose(reference.sigmas.numpy(), scheduler.sigmas(steps))
        assert np.allclose(reference.timesteps.numpy(), [scheduler.timestep(s) for s in scheduler.sigmas(steps)[:-1]])
        rng = np.random.default_rng(steps)
        sample = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
        ours = sample.copy()
        levels = scheduler.sigmas(steps)
        for index, t in enumerate(reference.timesteps):
            velocity = rng.standard_normal(sample.shape, dtype=np.float32)
            theirs = reference.step(torch.from_numpy(velocity), t, torch.from_numpy(sample)).prev_sample.numpy()
            ours = scheduler.euler_step(ours, velocity, levels[index], levels[index + 1])
            sample = theirs
            assert np.allclose(ours, theirs, atol=1e-6)


def test_bridge_state_is_diffusers_scale_noise() -> None:
    """Training's bridge ``t * (e + eta) + (1 - t) * b`` is ``scale_noise(b, 1000 t, e + eta)``."""
    torch = pytest.importorskip("torch")
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    reference.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
    b, start = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    for sigma, t in zip(reference.sigmas[:-1], reference.timesteps):
        mixed = reference.scale_noise(b, t[None], start)
        assert torch.allclose(mixed, sigma * start + (1 - sigma) * b)


def test_runtime_sampling_matches_torch_and_diffusers(tiny_models: dict) -> None:
    """The ONNX Runtime estimator and refiner with the numpy sampler give the layer that the
    torch modules and diffusers' scheduler give, from the same seeded start."""
    torch = pytest.importorskip("torch")
    from diffusers import FlowMatchEulerDiscreteScheduler

    suppressor = RibSuppressor(tiny_models["suppression"], steps=3, device="cpu", threads=1)
    image = np.random.default_rng(1).random((96, 80)).astype(np.float32)
    ours, first_only = suppressor.estimate(image, seed=7)
    from ribnode.models.preprocess import to_working

    working = to_working(image, 512)
    lo, hi = np.percentile(working, suppressor.config.percentiles)
    norm = torch.from_numpy(((working - lo) / (hi - lo)).astype(np.float32))[None, None]
    with torch.no_grad():
        first = tiny_models["estimator"](norm)
        noise = np.random.default_rng(7).standard_normal(first.shape, dtype=np.float32)
        state = first + suppressor.config.eta * torch.from_numpy(noise)
        sampler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
        sampler.set_timesteps(sigmas=scheduler.sigmas(3)[:-1].tolist())
        for t in sampler.timesteps:
            velocity = tiny_models["refiner"](torch.cat([state, norm, first], 1), t[None]).sample
            state = sampler.step(velocity, t, state).prev_sample
    unit = (hi - lo) / suppressor.config.bone_scale
    expected = np.maximum(state[0, 0].numpy(), 0) * unit
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, float(expected.max()))
    assert np.abs(first_only - np.maximum(first[0, 0].numpy(), 0) * unit).max() < 1e-5
    assert np.abs(ours - first_only).max() > 1e-6  # the refiner did something


@pytest.fixture()
def chest_png(tmp_path: Path) -> Path:
    from PIL import Image

    from ribnode.phantom import generate_chest

    chest = generate_chest(seed=3, size=(300, 280))
    path = tmp_path / "chest.png"
    Image.fromarray(np.round(chest.radiograph * 65535).astype(np.uint16)).save(path)
    return path


def test_output_equals_input_outside_region_and_only_removes(tiny_models: dict, chest_png: Path) -> None:
    radiograph = read_png(chest_png)
    segmentation = _with_lung_fields(RibSegmenter(tiny_models["segmentation"], threads=1)(radiograph))
    result = RibSuppressor(tiny_models["suppression"], threads=1)(radiograph, segmentation)
    assert result.soft_stored.shape == radiograph.stored.shape
    assert result.soft_stored.dtype == radiograph.stored.dtype
    assert np.array_equal(result.soft_stored[~result.mask], radiograph.stored[~result.mask])
    assert (result.bone >= 0).all() and (result.bone[~result.mask] == 0).all()
    assert 0.05 < result.mask.mean() < 0.6 and not result.mask[:, :10].any()  # near the fields only
    # bone-bright PNG (MONOCHROME2): removing bone can only lower stored values
    assert (result.soft_stored.astype(np.int64) <= radiograph.stored.astype(np.int64)).all()


def _with_lung_fields(segmentation):  # type: ignore[no-untyped-def]
    """The random tiny segmenter finds no lung: give it two discs of lung field."""
    rows, cols = np.mgrid[:64, :64]
    discs = (np.hypot(rows - 32, cols - 20) < 12) | (np.hypot(rows - 32, cols - 44) < 12)
    segmentation.working_probabilities["lungs"] = discs.astype(np.float32)
    return segmentation


def test_seed_fixes_the_output(tiny_models: dict, chest_png: Path) -> None:
    radiograph = read_png(chest_png)
    segmentation = _with_lung_fields(RibSegmenter(tiny_models["segmentation"], threads=1)(radiograph))
    suppressor = RibSuppressor(tiny_models["suppression"], threads=1)
    first, again = suppressor(radiograph, segmentation, seed=5), suppressor(radiograph, segmentation, seed=5)
    other = suppressor(radiograph, segmentation, seed=6)
    assert np.array_equal(first.soft_stored, again.soft_stored)
    assert not np.array_equal(first.bone, other.bone)
    assert first.seed == 5 and first.steps == suppressor.config.default_steps


def test_the_weight_ignores_probability_far_from_the_lung_fields(tiny_models: dict) -> None:
    suppressor = RibSuppressor(tiny_models["suppression"], threads=1)
    rows, cols = np.mgrid[:256, :256]
    probability = (np.hypot(rows - 100, cols - 100) < 40).astype(np.float32)
    probability[200:240, 200:240] = 0.3  # unsure, far from the fields: not lung
    weight = suppressor.weight(probability)
    assert weight[400:480, 400:480].max() == 0.0 and weight[200, 200] == 1.0


def test_region_weight_follows_the_probability_continuously(tiny_models: dict) -> None:
    """A small change of the lung probability anywhere changes the weight by at most as much
    over the ramp (no threshold gates the subtraction)."""
    suppressor = RibSuppressor(tiny_models["suppression"], threads=1)
    rows, cols = np.mgrid[:256, :256]
    probability = np.clip((50.0 - np.hypot(rows - 128, cols - 100)) / 10.0, 0, 1).astype(np.float32)
    weight = suppressor.weight(probability)
    assert weight.shape == (512, 512) and weight.min() == 0.0 and weight.max() == 1.0
    bumped = probability.copy()
    bumped[126:130, 147:151] += 1e-3  # just outside the fields, where the weight ramps
    change = np.abs(suppressor.weight(bumped) - weight).max()
    assert 0 < change <= 1e-3 / suppressor.config.region_ramp + 1e-6


def test_flip_average_is_the_mean_of_the_image_and_its_mirror(tiny_models: dict, tmp_path: Path) -> None:
    """With ``estimator_flip_average`` the estimate is the mean of the estimator's layer for the
    image and, mirrored back, for its mirror image; the refiner starts from that mean."""
    plain = RibSuppressor(tiny_models["suppression"], threads=1)
    assert not plain.config.estimator_flip_average  # absent from the json: off
    folder = tmp_path / "flip"
    shutil.copytree(tiny_models["suppression"].parent, folder)
    config = json.loads((folder / "rib-suppression.json").read_text())
    config["estimator_flip_average"] = True
    (folder / "rib-suppression.json").write_text(json.dumps(config))
    flipping = RibSuppressor(folder / "rib-suppression.json", steps=2, threads=1)
    assert flipping.info.parameters["estimator_flip_average"] is True
    image = np.random.default_rng(2).random((96, 80)).astype(np.float32)
    _, direct = plain.estimate(image, seed=0, refine=False)
    _, mirrored = plain.estimate(np.ascontiguousarray(image[:, ::-1]), seed=0, refine=False)
    refined, averaged = flipping.estimate(image, seed=0)
    expected = 0.5 * (direct + mirrored[:, ::-1])
    assert np.abs(averaged - expected).max() < 1e-6 * max(1.0, float(expected.max()))
    assert np.abs(direct - mirrored[:, ::-1]).max() > 1e-4  # the random network is not symmetric
    assert np.abs(refined - averaged).max() > 1e-6


def test_checks_on_construction(tiny_models: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="steps"):
        RibSuppressor(tiny_models["suppression"], steps=0)
    with pytest.raises(ValueError, match="json"):
        RibSuppressor(tiny_models["suppression"].with_name("rib-suppression-estimator.onnx"))
    folder = tmp_path / "tampered"
    shutil.copytree(tiny_models["suppression"].parent, folder)
    config = json.loads((folder / "rib-suppression.json").read_text())
    config["estimator_sha256"] = "0" * 64
    (folder / "rib-suppression.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="sha256"):
        RibSuppressor(folder / "rib-suppression.json")


def test_infer_writes_every_structure_and_the_region(tiny_models: dict, chest_png: Path, tmp_path: Path) -> None:
    from PIL import Image

    from ribnode.cli import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "infer",
                str(chest_png),
                "--output",
                str(out),
                "--weights",
                str(tiny_models["segmentation"]),
                "--suppression-weights",
                str(tiny_models["suppression"]),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    source = np.asarray(Image.open(chest_png))
    for name in ("ribs", "clavicles", "lungs", "region"):
        mask = np.asarray(Image.open(out / f"chest-{name}.png"))
        assert mask.shape == source.shape and set(np.unique(mask)) <= {0, 255}
    region = np.asarray(Image.open(out / "chest-region.png")) > 0
    soft = np.asarray(Image.open(out / "chest-soft.png"))
    assert np.array_equal(soft[~region], source[~region])
