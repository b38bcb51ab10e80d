"""Rib suppression: numpy DDIM vs diffusers, seeds, pipeline, ONNX export, RibSuppressor
(both backends, parity, bit-for-bit reproducibility, outside-region identity), metrics, lesions,
training smoke test. Tiny random networks keep these fast; the shipped weights are tested in
``test_suppression_shipped.py``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ribnode.models.info import ModelInfo, SegmentationResult
from ribnode.models.metrics import (
    bone_suppression_ratio, outside_mask_change, psnr, published_bsr, suppression_metrics,
)
from ribnode.models.preprocess import Radiograph
from ribnode.models.suppression.lesions import add_nodules, nodule, retention_and_spurious
from ribnode.models.suppression.runtime import seed_from_uid

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("diffusers")

from ribnode.models.suppression.export import export_onnx  # noqa: E402
from ribnode.models.suppression.network import (  # noqa: E402
    NetworkConfig, SchedulerConfig, SuppressionConfig, build_scheduler, build_unet,
)
from ribnode.models.suppression.runtime import RibSuppressor  # noqa: E402
from ribnode.models.suppression.scheduler import DiffusersDDIM, NumpyDDIM  # noqa: E402

WORKING = 32
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-level UNet2DModel exported to ONNX, with its .pt and .json beside it."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = SuppressionConfig(network=NetworkConfig(sample_size=WORKING, block_out_channels=(8, 16),
                                                     norm_num_groups=4))
    unet = build_unet(config.network).eval()
    with torch.no_grad():  # make the untrained output non-trivial (diffusers zero-inits nothing here)
        unet.conv_out.bias.fill_(0.3)
    path = tmp_path_factory.mktemp("sup") / "tiny.onnx"
    torch.save(unet.state_dict(), path.with_suffix(".pt"))
    export_onnx(unet, config, path)
    return path


def _radiograph(shape: tuple[int, int] = (70, 60), photometric: str = "MONOCHROME2") -> Radiograph:
    rng = np.random.default_rng(1)
    image = np.clip(0.5 + 0.2 * rng.standard_normal(shape), 0, 1).astype(np.float32)
    stored = np.rint(image * 4095).astype(np.uint16)
    if photometric == "MONOCHROME1":
        stored = (4095 - stored).astype(np.uint16)
    return Radiograph(image=image, stored=stored, photometric=photometric, bits_stored=12, lo=0.0,
                      hi=4095.0, spacing_mm=None, spacing_source=None, sop_instance_uid=UID,
                      transfer_syntax=None)


def _segmentation(shape: tuple[int, int]) -> SegmentationResult:
    mask = np.zeros(shape, bool)
    mask[20:30, 10:50] = True
    return SegmentationResult(mask, mask.astype(np.float32), ModelInfo("seg", "0", "0" * 64))


# -- scheduler -------------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 32])
@pytest.mark.parametrize("prediction_type", ["sample", "epsilon", "v_prediction"])
def test_numpy_ddim_matches_diffusers(steps: int, prediction_type: str) -> None:
    config = SchedulerConfig(prediction_type=prediction_type)
    ours, theirs = NumpyDDIM(config), DiffusersDDIM(config)
    np.testing.assert_array_equal(ours.alphas_cumprod, theirs.scheduler.alphas_cumprod.numpy())
    assert ours.timesteps(steps) == theirs.timesteps(steps)
    rng = np.random.default_rng(steps)
    a = b = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
    for t in ours.timesteps(steps):
        output = rng.standard_normal((1, 1, 8, 8), dtype=np.float32)
        a, b = ours.step(output, t, a, steps), theirs.step(output, t, b, steps)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_last_step_returns_the_x0_prediction() -> None:
    sched = NumpyDDIM(SchedulerConfig())
    x0 = np.full((1, 1, 4, 4), 0.7, np.float32)
    t = sched.timesteps(4)[-1]
    np.testing.assert_allclose(sched.step(x0, t, np.zeros_like(x0), 4), x0, atol=1e-6)


def test_numpy_ddim_rejects_clipping() -> None:
    with pytest.raises(ValueError, match="clip_sample"):
        NumpyDDIM(SchedulerConfig(clip_sample=True))


# -- seeds ---------------------------------------------------------------------------------

def test_seed_from_uid_is_stable_and_distinct() -> None:
    assert seed_from_uid(UID) == seed_from_uid(UID)
    assert seed_from_uid(UID) != seed_from_uid(UID + "1")
    assert 0 <= seed_from_uid(UID) < 2**63
    with pytest.raises(ValueError, match="empty"):
        seed_from_uid("")


# -- RibSuppressor with a tiny random net ----------------------------------------------------------

@pytest.mark.parametrize("backend", ["onnx", "torch"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_suppressor_changes_only_the_region_and_is_reproducible(tiny_weights: Path, backend: str,
                                                                photometric: str) -> None:
    weights = tiny_weights if backend == "onnx" else tiny_weights.with_suffix(".pt")
    sup = RibSuppressor(weights, steps=4, device="cpu", backend=backend, threads=1)
    radiograph, segmentation = _radiograph(photometric=photometric), _segmentation((70, 60))
    result = sup(radiograph, segmentation)
    assert result.seed == seed_from_uid(UID)
    assert result.soft_stored.dtype == radiograph.stored.dtype and result.soft_stored.shape == (70, 60)
    assert result.mask.sum() > segmentation.mask.sum()  # dilated
    np.testing.assert_array_equal(result.soft_stored[~result.mask], radiograph.stored[~result.mask])
    assert (result.bone >= 0).all() and (result.bone[~result.mask] == 0).all()
    assert result.bone[result.mask].max() > 0  # the biased tiny net does subtract something
    again = sup(radiograph, segmentation)
    np.testing.assert_array_equal(again.soft_stored, result.soft_stored)
    np.testing.assert_array_equal(again.bone, result.bone)
    other = sup(radiograph, segmentation, seed=result.seed + 1)
    assert not np.array_equal(other.bone, result.bone)
    assert result.model.name == "ribnode rib-suppression" and result.steps == 4


def test_bone_is_subtracted_in_the_right_direction(tiny_weights: Path) -> None:
    sup = RibSuppressor(tiny_weights, device="cpu", threads=1)
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        radiograph = _radiograph(photometric=photometric)
        result = sup(radiograph, _segmentation((70, 60)))
        inside = result.mask & (result.bone > 0.01)
        sign = 1 if photometric == "MONOCHROME1" else -1  # bone-bright decrease
        delta = result.soft_stored[inside].astype(np.int64) - radiograph.stored[inside]
        assert (np.sign(delta[delta != 0]) == sign).all()


def test_torch_and_onnx_backends_agree(tiny_weights: Path) -> None:
    radiograph, segmentation = _radiograph(), _segmentation((70, 60))
    a = RibSuppressor(tiny_weights, device="cpu", threads=1)(radiograph, segmentation)
    b = RibSuppressor(tiny_weights.with_suffix(".pt"), device="cpu", backend="torch", threads=1)(radiograph, segmentation)
    np.testing.assert_allclose(a.bone, b.bone, atol=1e-4)
    assert np.abs(a.soft_stored.astype(np.int64) - b.soft_stored).max() <= 1


def test_tiled_suppressor_agrees_across_backends_and_records_its_windows(tiny_weights: Path) -> None:
    radiograph, segmentation = _radiograph(), _segmentation((70, 60))
    a = RibSuppressor(tiny_weights, device="cpu", threads=1, tile_px=16)
    b = RibSuppressor(tiny_weights.with_suffix(".pt"), device="cpu", backend="torch", threads=1, tile_px=16)
    whole = RibSuppressor(tiny_weights, device="cpu", threads=1, tile_px=0)
    assert (a.info.parameters["tile_px"], a.info.parameters["tile_stride_px"]) == (16, 8)
    assert whole.info.parameters["tile_px"] == 0
    ra, rb, rw = a(radiograph, segmentation), b(radiograph, segmentation), whole(radiograph, segmentation)
    np.testing.assert_allclose(ra.bone, rb.bone, atol=1e-4)
    np.testing.assert_array_equal(a(radiograph, segmentation).soft_stored, ra.soft_stored)
    np.testing.assert_array_equal(ra.soft_stored[~ra.mask], radiograph.stored[~ra.mask])
    assert not np.allclose(ra.bone, rw.bone)  # windows are not the whole image for this net


def test_suppressor_validates(tiny_weights: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="backend"):
        RibSuppressor(tiny_weights, backend="tensorrt")
    with pytest.raises(FileNotFoundError):
        RibSuppressor(tmp_path / "missing.onnx")
    sup = RibSuppressor(tiny_weights, device="cpu", threads=1)
    with pytest.raises(ValueError, match="does not match"):
        sup(_radiograph(), _segmentation((10, 10)))


# -- metrics and lesions ----------------------------------------------------------------------

def test_suppression_metrics_identity_and_perfect() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((32, 32))
    x = y + 0.1 * (rng.random((32, 32)) > 0.5)
    region = np.ones((32, 32), bool)
    assert bone_suppression_ratio(x, y, x) == 0.0
    assert bone_suppression_ratio(x, y, y) == 1.0
    assert published_bsr(x, y, y) == 1.0
    assert psnr(y, y) == float("inf")
    figures = suppression_metrics(x, y, 0.5 * (x + y), region)
    assert figures["bsr"] == pytest.approx(0.75)
    assert figures["psnr_gain_db"] == pytest.approx(20 * np.log10(2))
    assert outside_mask_change(x, y, np.zeros((32, 32), bool)) == pytest.approx(np.abs(x - y).max())
    with pytest.raises(TypeError, match="float"):
        bone_suppression_ratio(x.astype(np.uint8), y, y)


def test_nodule_profile_and_retention() -> None:
    n = nodule((41, 41), (20.0, 20.0), 5.0, 0.04)
    assert n.max() == pytest.approx(0.04) and n[20, 26] == 0.0 and n[0, 0] == 0.0
    x = np.zeros((41, 41))
    x_n = add_nodules(x, [(20.0, 20.0, 5.0, 0.04)])
    assert retention_and_spurious(x, x_n, n, (20.0, 20.0), 5.0) == (pytest.approx(1.0), pytest.approx(0.0))
    half = retention_and_spurious(x, x + 0.5 * n, n, (20.0, 20.0), 5.0)
    assert half[0] == pytest.approx(0.5)


# -- training -----------------------------------------------------------------------------------

def _pairs_dir(root: Path, count: int = 3) -> Path:
    from ribnode.models.synthetic import generate_chest

    for sub in ("source", "target"):
        (root / sub).mkdir(parents=True)
    for i in range(count):
        chest = generate_chest(seed=i, size=64, nodules=0)
        for sub, image in (("source", chest.radiograph), ("target", chest.soft_tissue)):
            inverted = np.rint((1.0 - np.clip(image, 0, 1)) * 255).astype(np.uint8)
            Image.fromarray(inverted).save(root / sub / f"JPCNN{i:03d}.png")
    return root


def test_train_smoke_and_install(tmp_path: Path) -> None:
    from ribnode.models.suppression.train import TrainOptions, install, train, training_tile

    data = _pairs_dir(tmp_path / "pairs", count=6)
    options = TrainOptions(data=data, out=tmp_path / "run", steps=2, batch=2, crop=32, working_size=32,
                           checkpoint_every=1, threads=1, focus_steps=4, focus_prob=0.5)
    train(options)
    record = SuppressionConfig.load(tmp_path / "run" / "config.json")
    assert record.training["steps_done"] == 2 and record.training["held_out_cases"] == ["JPCNN004"]
    onnx_path = install(tmp_path / "run", tmp_path / "w" / "rib-suppression.onnx")
    assert onnx_path.with_suffix(".pt").is_file() and onnx_path.with_suffix(".json").is_file()
    sup = RibSuppressor(onnx_path, device="cpu", threads=1)
    assert sup.working_size == 32 and sup.steps == 4  # the model's own default
    install(tmp_path / "run", onnx_path, default_steps=2)
    assert RibSuppressor(onnx_path, device="cpu", threads=1).steps == 2
    assert RibSuppressor(onnx_path, steps=3, device="cpu", threads=1).steps == 3  # asked for
    assert record.training["options"]["labels"] == "local"
    # trained on whole 32-px images: runs on the whole image; on 16-px crops: on 16-px windows
    assert sup.pipeline.tile == 0 and training_tile(record) == 0
    assert training_tile(replace(record, training={"options": {"crop": 16}})) == 16
    install(tmp_path / "run", onnx_path, tile_px=16)
    assert RibSuppressor(onnx_path, device="cpu", threads=1).info.parameters["tile_px"] == 16


def test_training_nodules_land_in_the_crop_and_weigh_more(tmp_path: Path) -> None:
    from ribnode.models.suppression.data import load_pairs, to_working_pair
    from ribnode.models.suppression.train import Batcher, TrainOptions, near_nodules

    data = _pairs_dir(tmp_path / "pairs", count=2)
    pairs = [to_working_pair(p, 64) for p in load_pairs(data)]
    config = SuppressionConfig(network=NetworkConfig(sample_size=64))
    options = TrainOptions(data=data, out=tmp_path, batch=1, crop=32, working_size=64, nodule_prob=1.0,
                           nodules_per_crop=(2, 2), nodule_weight=7.0, pair_weight=1.0)
    batcher = Batcher(pairs, config, options, np.random.default_rng(3))
    for _ in range(10):
        window = batcher._window()
        image, found, clean = batcher._augmented_input(pairs[0], window)
        r0, c0, side = window
        assert len(found) == 2
        # the clean twin differs from the input by the nodules only (same noise)
        difference = np.abs(image - clean)
        near = near_nodules(found, (0, 0, 64), reach=1.5).astype(bool)
        assert difference.max() > 1e-3 and difference[~near].max() < 1e-6
        assert all(r0 - 0.5 <= r <= r0 + side + 0.5 and c0 - 0.5 <= c <= c0 + side + 0.5 for r, c, _, _ in found)
    near = near_nodules([(10.0, 12.0, 2.0, 0.02)], (4, 4, 16), reach=2.0)
    assert near[6, 8] == 1.0 and near[6, 8 + 3] == 1.0 and near[6, 8 + 4] == 0.0 and near.sum() < 16 * 16
    for _ in range(5):
        cond, target, weight, denominator = batcher.sample()
        base = options.loss_outside_weight + (1 - options.loss_outside_weight) * cond[:, 1:2]
        extra = (weight - base).numpy()
        assert extra.max() == pytest.approx(7.0) and set(np.unique(np.round(extra, 4))) <= {0.0, 7.0}
        assert float(denominator) == pytest.approx(float(base.sum()), rel=1e-5)
    cond, clean, *_ = batcher.sample_paired()  # the clean twin: same region, no nodules
    assert torch.equal(cond[:, 1], clean[:, 1]) and not torch.equal(cond[:, 0], clean[:, 0])
    plain = Batcher(pairs, config, replace(options, pair_weight=0.0), np.random.default_rng(3))
    cond, clean, *_ = plain.sample_paired()  # no paired loss: no twin computed
    assert torch.equal(cond, clean)


def test_paired_loss_is_the_change_the_nodules_make() -> None:
    from ribnode.models.suppression.train import training_loss

    torch.manual_seed(2)
    config = SuppressionConfig(network=NetworkConfig(sample_size=32))
    unet, scheduler = build_unet(config.network), build_scheduler(config.scheduler)
    cond = torch.rand(2, 2, 32, 32)
    target, weight = torch.rand(2, 1, 32, 32), torch.ones(2, 1, 32, 32)
    clean = cond.clone()
    clean[:, 0, 10:16, 10:16] -= 0.3  # the "nodule" is what the clean twin lacks

    def loss(**extra: object) -> float:
        return training_loss(unet, scheduler, config, cond, target, weight,
                             torch.Generator().manual_seed(4), **extra).item()  # type: ignore[arg-type]

    plain = loss()
    assert loss(clean_cond=cond, pair_weight=50.0) == pytest.approx(plain, rel=1e-6)  # no nodule: no change
    assert loss(clean_cond=clean, pair_weight=50.0) > plain * 1.0001
    assert loss(clean_cond=clean, pair_weight=0.0) == pytest.approx(plain, rel=1e-6)
    with torch.no_grad():  # the added term is exactly pair_weight x the weighted squared change
        generator = torch.Generator().manual_seed(4)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (2,), generator=generator)
        noisy = scheduler.add_noise(target, torch.randn(target.shape, generator=generator), t)
        change = (unet(torch.cat([noisy, cond], 1), t).sample - unet(torch.cat([noisy, clean], 1), t).sample)
    assert loss(clean_cond=clean, pair_weight=50.0) - plain == pytest.approx(
        50.0 * float((change ** 2).mean()), rel=1e-3)


def test_training_starts_from_init_weights(tmp_path: Path) -> None:
    from ribnode.models.suppression.train import TrainOptions, train

    data = _pairs_dir(tmp_path / "pairs", count=6)
    torch.manual_seed(5)
    config = SuppressionConfig(network=NetworkConfig(sample_size=32))
    init = tmp_path / "init.pt"
    torch.save(build_unet(config.network).state_dict(), init)
    train(TrainOptions(data=data, out=tmp_path / "run", steps=0, working_size=32, crop=32, init=init))
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    start = torch.load(init, weights_only=True)
    assert all(torch.equal(saved[k], start[k]) for k in start)
    record = SuppressionConfig.load(tmp_path / "run" / "config.json")
    assert record.training["init_sha256"] is not None and record.training["steps_done"] == 0


# -- commands ------------------------------------------------------------------------------------

def test_eval_suppression_and_lesions_commands(tiny_weights: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ribnode.cli import main

    data = _pairs_dir(tmp_path / "pairs", count=2)
    out = tmp_path / "eval.json"
    assert main(["eval-suppression", "--data", str(data), "--weights", str(tiny_weights), "--mask", "reference",
                 "--threads", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "JPCNN000" in text and "mean" in text and "worst" in text
    report = json.loads(out.read_text())
    assert report["reference"]["summary"]["outside_model_region"]["worst"] == 0.0
    assert main(["eval-lesions", "--data", str(data), "--weights", str(tiny_weights), "--mask", "reference",
                 "--placements", "1", "--limit", "1", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "rib" in text and "lowest mean retention" in text
    split = tmp_path / "lesions-skip1.json"
    assert main(["eval-lesions", "--data", str(data), "--weights", str(tiny_weights), "--mask", "reference",
                 "--placements", "1", "--skip", "1", "--threads", "1", "--json", str(split)]) == 0
    trials = json.loads(split.read_text())["trials"]
    assert trials and {t["case_id"] for t in trials} == {"JPCNN001"}


def test_seed_from_pixels_without_uid(tiny_weights: Path) -> None:
    from dataclasses import replace

    sup = RibSuppressor(tiny_weights, device="cpu", threads=1)
    radiograph = replace(_radiograph(), sop_instance_uid=None)
    a, b = sup(radiograph, _segmentation((70, 60))), sup(radiograph, _segmentation((70, 60)))
    assert a.seed == b.seed and a.seed != seed_from_uid(UID)


def test_rib_shaped_keeps_bands_drops_blobs_never_adds() -> None:
    from ribnode.models.suppression.shape import rib_shaped

    band = np.zeros((96, 96), np.float32)
    band[40:48, :] = 1.0
    blob = nodule((96, 96), (44.0, 48.0), 5.0, 0.5).astype(np.float32)
    shaped = rib_shaped(band + blob, length=17)
    assert (shaped <= band + blob + 1e-7).all()
    np.testing.assert_allclose(shaped[40:48, 10:86], 1.0, atol=1e-6)
    residual = shaped - band  # a blob straddling the band's edge leaves a thin rim (digital lines)
    assert (residual ** 2).sum() < 0.1 * (blob ** 2).sum()


def _post_step_off_and_on(weights: Path, parameter: str, **setting: Any) -> tuple[Any, ...]:
    """A suppressor with the json's defaults (post-step ``parameter`` off) and one with ``setting``,
    run on the same radiograph: the checks both post-steps share (something changes, the layer
    stays >= 0 and inside the region, the pixels outside are the stored ones, reproducible)."""
    radiograph, segmentation = _radiograph(), _segmentation((70, 60))
    off = RibSuppressor(weights, device="cpu", threads=1)
    on = RibSuppressor(weights, device="cpu", threads=1, **setting)
    assert off.info.parameters[parameter] == 0  # the json's default: off
    a, b = off(radiograph, segmentation), on(radiograph, segmentation)
    assert not np.allclose(a.bone, b.bone)
    assert (b.bone >= 0).all() and not b.bone[~b.mask].any()
    np.testing.assert_array_equal(b.soft_stored[~b.mask], radiograph.stored[~b.mask])
    np.testing.assert_array_equal(on(radiograph, segmentation).soft_stored, b.soft_stored)  # reproducible
    return radiograph, segmentation, off, on, a, b


def test_rib_median_post_step_in_the_suppressor(tiny_weights: Path) -> None:
    from ribnode.models.preprocess import to_working
    from ribnode.models.suppression.shape import rib_median

    radiograph, segmentation, off, on, a, b = _post_step_off_and_on(
        tiny_weights, "rib_median_line_px_512", rib_median_px_512=160)  # 11 px at 32
    assert (on.rib_median_px, on.info.parameters["rib_median_line_px_512"]) == (11, 160)
    # what it subtracts: the working-size layer, zero outside the region, median along the ribs
    region_w = to_working(b.mask.astype(np.float32), WORKING) >= 0.5
    estimate = off.pipeline(to_working(radiograph.image, WORKING)[None],
                            to_working(b.mask.astype(np.float32), WORKING)[None], off.steps, [b.seed])
    # the ribs' direction is read from the region (version 2.3.0), not from the rib mask
    expected = rib_median(np.where(region_w, estimate.bone[0], 0.0), region_w, region_w, 11)
    np.testing.assert_array_equal(b.bone, on.bone_layer(radiograph.image, segmentation.mask, b.seed))
    np.testing.assert_array_equal(on._shaped(estimate.bone[0], to_working(b.mask.astype(np.float32), WORKING)),
                                  expected)
    with pytest.raises(ValueError, match="rib median"):
        RibSuppressor(tiny_weights, device="cpu", threads=1, rib_median_px_512=-1)


def test_edge_taper_post_step_in_the_suppressor(tiny_weights: Path) -> None:
    """The layer is weighted by ``edge_taper`` of the rib mask at the working size (after the
    median, when both are on): 1 on the ribs, 0 at the region's border; it only subtracts less."""
    from ribnode.models.preprocess import to_working
    from ribnode.models.suppression.shape import edge_taper
    from ribnode.models.suppression.upsample import upsample_bone

    radiograph, segmentation, off, on, a, b = _post_step_off_and_on(
        tiny_weights, "edge_taper_px_512", edge_taper_px_512=80)  # 5 px at 32
    assert (on.edge_taper_px, on.info.parameters["edge_taper_px_512"]) == (5.0, 80.0)
    assert (b.bone <= a.bone + 1e-7).all()
    # what it subtracts: the plain working-size layer times the taper of the working rib mask
    region_w = to_working(b.mask.astype(np.float32), WORKING)
    estimate = off.pipeline(to_working(radiograph.image, WORKING)[None], region_w[None], off.steps, [b.seed])
    weight = edge_taper(to_working(segmentation.mask.astype(np.float32), WORKING) >= 0.5, 5.0)
    expected = upsample_bone(off._shaped(estimate.bone[0], region_w) * weight, radiograph.shape, "linear",
                             guide=radiograph.image)
    expected[~b.mask] = 0.0
    np.testing.assert_array_equal(b.bone, expected)
    np.testing.assert_array_equal(on.bone_layer(radiograph.image, segmentation.mask, b.seed), b.bone)
    with pytest.raises(ValueError, match="edge taper"):
        RibSuppressor(tiny_weights, device="cpu", threads=1, edge_taper_px_512=-1)
