"""The lab's training runs: a few steps on the shared development data, resumed from their
checkpoint, exported, and read by the runtime (tiny networks: this checks the machinery, not
the figures, which docs/benchmarks.md holds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the lab extra (make test installs it)")

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def data() -> Path:
    if not (DATA / "jsrt-scr-512" / "image").is_dir():
        pytest.fail(f"{DATA} is missing: the lab tests need ../shared/data beside the checkout")
    return DATA


def test_split_keeps_every_fifth_case_per_stratum_and_labels_the_lung_field(data: Path) -> None:
    from ribnode_lab.data import held_out, load_cases

    train, held = load_cases(data)
    assert len(train) + len(held) == 227 and not {c.case_id for c in train} & {c.case_id for c in held}
    assert sum(c.paired for c in held) == 25 and sum(not c.paired for c in held) == 19
    assert held_out(["A1", "A2", "A3", "A4", "A5", "B1"], every=5) == {"A5"}
    case = next(c for c in held if c.paired)
    assert (case.lung_field >= case.lungs).all() and (case.lung_field >= case.heart).all()
    energy = case.bone.astype(np.float64) ** 2  # the lung field holds (nearly) all the bone BSE-JSRT removes
    assert energy[case.lung_field].sum() / energy.sum() > 0.98


@pytest.mark.slow
def test_segmentation_trains_resumes_and_exports(data: Path, tmp_path: Path) -> None:
    from ribnode.models.segmentation import RibSegmenter
    from ribnode_lab.export import export_segmentation
    from ribnode_lab.train_seg import SegTrainConfig, train

    config = SegTrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        working_size=64,
        steps=2,
        batch=2,
        base=4,
        depth=3,
        checkpoint_every=1,
    )
    train(config)
    first = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert first["step"] == 2
    config.steps = 3
    train(config)  # resumes from the checkpoint: one more step
    state = torch.load(tmp_path / "run" / "final.pt", weights_only=False)
    assert [h[0] for h in state["history"]] == [1, 2, 3]
    onnx = export_segmentation(tmp_path / "run", tmp_path / "weights")
    assert json.loads(onnx.with_suffix(".json").read_text())["outputs"] == ["ribs", "clavicles", "lungs"]
    result = RibSegmenter(onnx, threads=1).segment_image(np.random.default_rng(0).random((80, 80)).astype(np.float32))
    assert set(result.structures) == {"ribs", "clavicles", "lungs"}


@pytest.mark.slow
def test_suppression_trains_both_networks_resumes_and_exports(data: Path, tmp_path: Path) -> None:
    from ribnode.models.suppression import RibSuppressor
    from ribnode_lab.export import export_suppression
    from ribnode_lab.train_suppression import SuppressionTrainConfig, train

    config = SuppressionTrainConfig(
        data=str(data),
        out=str(tmp_path / "run"),
        steps=3,
        phantom_steps=1,
        phantoms=2,
        batch=2,
        crop=64,
        full_from=0.67,
        refiner_steps=1,
        refiner_crop=64,
        refiner_batch=2,
        refiner_versions=1,
        base=4,
        depth=3,
        groups=2,
        refiner_channels="8,8",
        threads=1,
        checkpoint_every=1,
    )
    train(config)  # step 1 on phantoms, step 2 on crops, step 3 a whole image, step 4 the refiner
    config.refiner_steps = 2
    train(config)  # resumes: one more refiner step
    state = torch.load(tmp_path / "run" / "final.pt", weights_only=False)
    history = state["history"]
    assert [h[0] for h in history] == [1, 2, 3, 4, 5]
    assert all(h[1] > 0.0 and h[2] == 0.0 for h in history[:3])  # the estimator alone first
    assert all(h[1] == 0.0 and h[2] > 0.0 for h in history[3:])  # then the refiner alone
    path = export_suppression(tmp_path / "run", tmp_path / "weights")
    suppressor = RibSuppressor(path, threads=1)
    layer, first = suppressor.estimate(np.random.default_rng(0).random((64, 64)).astype(np.float32), seed=1)
    assert layer.shape == (512, 512) and (layer >= 0).all() and (first >= 0).all()


def test_refiner_items_hold_whole_image_estimates_of_augmented_pairs() -> None:
    from ribnode_lab.train_suppression import Estimator, SuppressionTrainConfig, _pair, refiner_item
    from ribnode_lab.unet import UNetConfig

    rng = np.random.default_rng(3)
    s = rng.random((512, 512)).astype(np.float32) * 0.5
    b = np.zeros_like(s)
    b[100:140, 50:450] = 0.05  # one rib
    field = np.zeros_like(s, dtype=bool)
    field[60:460, 40:470] = True
    pairs = [_pair("toy", s + b, s, field, np.zeros_like(field))]
    estimator = Estimator(UNetConfig(base=4, depth=2, groups=2)).eval()
    config = SuppressionTrainConfig(refiner_versions=2, nodule_prob=0.0)
    first = refiner_item(estimator, pairs, 0, config)
    assert first.shape == (4, 1, 512, 512)
    n, target, _, estimate = first
    with torch.no_grad():
        assert torch.equal(estimate, estimator(n[None])[0])  # the whole image's estimate
    assert target.max() > 0 and (target[:, :90] == 0).all()  # the scaled layer, in network units
    assert torch.equal(refiner_item(estimator, pairs, 0, config), first)  # the same after a resume
    assert not torch.equal(refiner_item(estimator, pairs, 1, config)[1], target)  # another version


def test_an_exported_estimator_loads_back_for_a_refiner_only_run(tmp_path: Path) -> None:
    from ribnode_lab.export import write_suppression
    from ribnode_lab.train_suppression import Estimator, build_refiner, load_estimator_onnx
    from ribnode_lab.unet import UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(base=4, depth=3, groups=2)
    exported = Estimator(config).eval()
    with torch.no_grad():
        for parameter in exported.parameters():  # GroupNorm scales and shifts away from 1 and 0
            parameter.add_(0.1 * torch.randn_like(parameter))
    write_suppression(exported, build_refiner((8, 8)), tmp_path, eta=0.02, training={})
    loaded = Estimator(config)
    load_estimator_onnx(loaded, tmp_path / "rib-suppression-estimator.onnx")
    for (name, a), b in zip(exported.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_training_on_from_a_shipped_estimator_warms_up_and_excludes_the_frozen_mode(tmp_path: Path) -> None:
    from ribnode_lab.train_suppression import SuppressionTrainConfig, _lr_scale, train

    fresh = SuppressionTrainConfig(steps=100, full_from=0.0)
    on = SuppressionTrainConfig(steps=100, full_from=0.0, estimator_from="estimator.onnx")
    assert _lr_scale(0, fresh) == pytest.approx(0.25)  # the default recipe: no warm-up at whole images
    assert _lr_scale(0, on) == pytest.approx(0.25 / 50)  # a fresh optimiser on trained weights
    assert _lr_scale(49, on) == pytest.approx(_lr_scale(49, fresh))
    with pytest.raises(ValueError, match="exclude each other"):
        train(SuppressionTrainConfig(out=str(tmp_path), estimator_onnx="a.onnx", estimator_from="b.onnx"))


def test_the_refiners_soft_image_terms_score_the_one_step_layer() -> None:
    from ribnode_lab.train_suppression import build_refiner, refiner_loss

    torch.manual_seed(0)
    refiner = build_refiner((8, 8))  # its last convolution starts at zero: velocity 0, result = start
    n = torch.rand(2, 1, 32, 32)
    target = torch.rand(2, 1, 32, 32)
    weight = torch.ones(2, 1, 32, 32)
    exact = [float(refiner_loss(refiner, target, target, n, weight, eta=0.0, t_one=1.0, soft=s)) for s in (0, 1)]
    assert exact == pytest.approx([0.0, 0.0], abs=1e-6)  # the estimate is the truth: nothing to pay
    off = target + 0.3 * torch.rand(2, 1, 32, 32)
    plain, soft = (float(refiner_loss(refiner, off, target, n, weight, eta=0.0, t_one=1.0, soft=s)) for s in (0, 1))
    assert plain == pytest.approx(float((off - target).abs().mean()), rel=1e-5)
    assert soft > plain + 0.01  # SSIM and gradient of the wrong layer add to the L1
