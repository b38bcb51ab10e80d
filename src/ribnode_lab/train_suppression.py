"""Train the bone suppression: a bone-layer estimator, then a diffusion refiner anchored on it.

**Estimator** (a U-Net, BatchNorm, softplus output: it can only remove density). Input: the
radiograph at 512, normalised linearly per image (``n = (x - lo) / (hi - lo)``, percentiles 1
and 99). Output: the bone layer ``b = x - s`` in the units ``b * BONE_SCALE / (hi - lo)``.
Losses, after the strongest bone-suppression work (L1 on the layer, SSIM on the soft image, a
gradient term): ``L1(b_hat, b) + 0.5 * (1 - SSIM(n - b_hat, n - b)) + L1(grad b_hat, grad b)``,
weighted 1 inside the lung field (SCR lungs + heart, dilated) and 0.2 outside.

**Refiner** (diffusers ``UNet2DModel``; input: the bridge state, the radiograph, the estimate):
a rectified-flow bridge from the estimate to the true layer, ``z_t = t * (e + eta) + (1 - t) * b``
(diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise`` with the estimate as the "noise"
end), trained to predict the velocity ``(e + eta) - b``. Its last convolution starts at zero, so
before training the refiner returns the estimate. It trains on the estimator's own (detached)
outputs once the estimator has had ``refiner_from`` of the steps.

Augmentation respects ``x = s + b``: joint flips and crops; bone scaling (``s + a * b``, target
``a * b``); nodules added to ``x`` and ``s`` alike (a nodule is not bone), most on bone; noise on
the input only; the per-image window follows the augmented image. Crops first, then whole 512
images for the estimator (and 256-px windows of them for the refiner) after ``full_from`` of the
steps, so that both see statistics close to the whole image's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from ribnode_lab.data import Case, load_cases, nodule
from ribnode_lab.unet import UNet, UNetConfig

BONE_SCALE = 10.0
PERCENTILES = (1.0, 99.0)


@dataclass
class SuppressionTrainConfig:
    data: str = "../shared/data"
    out: str = "runs/supp-v3"
    steps: int = 4000
    batch: int = 8
    crop: int = 128
    full_from: float = 0.85  # share of the steps after which whole 512 images are used
    full_batch: int = 2
    refiner_from: float = 0.3
    lr: float = 2e-3
    base: int = 16
    depth: int = 5
    refiner_channels: str = "16,32,64,64"
    eta: float = 0.02  # the refiner's starting noise, network units
    nodule_prob: float = 0.8
    seed: int = 20261207
    threads: int = 1
    checkpoint_every: int = 100


class Estimator(nn.Module):
    """The U-Net with a softplus head: the bone layer is never negative."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.unet = UNet(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.unet(x), beta=5.0)


def build_refiner(channels: tuple[int, ...]) -> Any:
    """The refiner, a diffusers ``UNet2DModel`` whose last convolution starts at zero."""
    from diffusers import UNet2DModel

    model: Any = UNet2DModel(
        sample_size=512,
        in_channels=3,
        out_channels=1,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(channels),
        up_block_types=("UpBlock2D",) * len(channels),
        norm_num_groups=8,
        add_attention=False,  # no self-attention in the mid block: local corrections, linear cost
    )
    nn.init.zeros_(model.conv_out.weight)
    nn.init.zeros_(model.conv_out.bias)
    return model


@dataclass
class Pair:
    case_id: str
    x: np.ndarray
    s: np.ndarray
    weight: np.ndarray  # loss weight: 1 in the dilated lung field, 0.2 outside
    bone_px: np.ndarray  # (K, 2) pixels with bone > 0.01 (nodule centres)
    field_px: np.ndarray


def make_pair(case: Case) -> Pair:
    assert case.soft is not None
    field = ndimage.binary_dilation(case.lung_field, iterations=8)
    weight = np.where(field, 1.0, 0.2).astype(np.float32)
    bone = case.image - case.soft
    return Pair(
        case.case_id,
        case.image,
        case.soft,
        weight,
        np.argwhere((bone > 0.01) & case.lung_field),
        np.argwhere(case.lung_field),
    )


def window(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(x, PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def sample(pair: Pair, rng: np.random.Generator, crop: int, nodule_prob: float) -> tuple[np.ndarray, ...]:
    """(normalised input, target layer, loss weight), all (1, crop, crop), network units."""
    x, s = pair.x.astype(np.float32), pair.s.astype(np.float32)
    b = np.clip(x - s, 0.0, None)
    a = rng.uniform(0.6, 1.4)
    b = a * b
    s = s.copy()
    if rng.random() < nodule_prob:
        for _ in range(int(rng.integers(1, 5))):
            pool = pair.bone_px if (rng.random() < 0.6 and len(pair.bone_px)) else pair.field_px
            centre = pool[rng.integers(len(pool))]
            s += nodule(s.shape, (float(centre[0]), float(centre[1])), rng.uniform(2, 14), rng.uniform(0.005, 0.05))
    x = s + b
    lo, hi = window(x)
    scale = BONE_SCALE / (hi - lo)
    n = (x - lo) / (hi - lo)
    target, weight = b * scale, pair.weight
    size = x.shape[0]
    if crop < size:
        r, c = rng.integers(0, size - crop + 1, 2)
        n, target, weight = (a_[r : r + crop, c : c + crop] for a_ in (n, target, weight))
    if rng.random() < 0.5:
        n, target, weight = n[:, ::-1], target[:, ::-1], weight[:, ::-1]
    n = n + rng.normal(0, rng.uniform(0, 0.01), n.shape)  # noise on the input only
    return tuple(np.ascontiguousarray(v, dtype=np.float32)[None] for v in (n, target, weight))


@torch.no_grad()
def recalibrate_batchnorm(estimator: Estimator, pairs: list[Pair]) -> None:
    """Set every BatchNorm's running statistics to their average over whole training images.

    Training sees 128-px crops, whose statistics differ from a whole radiograph's; with the
    running averages of crop statistics the estimator at inference removed 0.42 of the bone
    (slope, training images), against 0.76 with whole-image statistics (docs/lab/).
    """
    for module in estimator.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    estimator.train()
    for pair in pairs:
        lo, hi = window(pair.x)
        estimator(torch.from_numpy(((pair.x - lo) / (hi - lo)).astype(np.float32))[None, None])
    estimator.eval()


def ssim(a: torch.Tensor, b: torch.Tensor, window_px: int = 7) -> torch.Tensor:
    """Mean SSIM (uniform window), data range 1."""
    c1, c2 = 0.01**2, 0.03**2
    pool = lambda t: F.avg_pool2d(t, window_px, 1, window_px // 2, count_include_pad=False)  # noqa: E731
    mu_a, mu_b = pool(a), pool(b)
    var_a = pool(a * a) - mu_a**2
    var_b = pool(b * b) - mu_b**2
    cov = pool(a * b) - mu_a * mu_b
    return (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).mean()


def gradient_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    dy = (pred.diff(dim=2) - target.diff(dim=2)).abs() * weight[:, :, 1:]
    dx = (pred.diff(dim=3) - target.diff(dim=3)).abs() * weight[:, :, :, 1:]
    return dy.mean() + dx.mean()


def estimator_loss(pred: torch.Tensor, target: torch.Tensor, n: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    l1 = ((pred - target).abs() * weight).mean()
    soft_pred, soft_true = n - pred / BONE_SCALE, n - target / BONE_SCALE
    return l1 + 0.5 * (1 - ssim(soft_pred, soft_true)) + gradient_l1(pred, target, weight)


def refiner_loss(
    refiner: nn.Module, estimate: torch.Tensor, target: torch.Tensor, n: torch.Tensor, weight: torch.Tensor, eta: float
) -> torch.Tensor:
    # The estimate's strength is scaled at random (0.5-1.3): the estimator in training (batch
    # statistics of crops) and at inference (whole-image statistics) differ in strength, and the
    # refiner must correct whichever it gets; it sees the radiograph to tell the true strength.
    estimate = estimate * torch.empty(len(n), 1, 1, 1).uniform_(0.5, 1.3)
    t = torch.rand(len(n), 1, 1, 1)
    start = estimate + eta * torch.randn_like(estimate)
    state = t * start + (1 - t) * target
    velocity = refiner(torch.cat([state, n, estimate], 1), (t.flatten() * 1000).float()).sample
    return ((velocity - (start - target)).abs() * weight).mean()


def train(config: SuppressionTrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    train_cases, test_cases = load_cases(Path(config.data))
    pairs = [make_pair(c) for c in train_cases if c.paired]
    (out / "split.json").write_text(
        json.dumps(
            {"train": [p.case_id for p in pairs], "held_out": [c.case_id for c in test_cases if c.paired]}, indent=1
        )
    )
    torch.manual_seed(config.seed)
    estimator = Estimator(UNetConfig(in_channels=1, out_channels=1, base=config.base, depth=config.depth))
    refiner = build_refiner(tuple(int(c) for c in config.refiner_channels.split(",")))
    opt_e = torch.optim.AdamW(estimator.parameters(), lr=config.lr, weight_decay=1e-5)
    opt_r = torch.optim.AdamW(refiner.parameters(), lr=config.lr / 2, weight_decay=1e-5)
    rng = np.random.default_rng(config.seed)
    step, history = 0, []
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        estimator.load_state_dict(state["estimator"])
        opt_e.load_state_dict(state["opt_e"])
        step, history = state["step"], state["history"]
        if step > int(config.refiner_from * config.steps):  # before that the refiner is untouched
            refiner.load_state_dict(state["refiner"])
            opt_r.load_state_dict(state["opt_r"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    bar = tqdm(total=config.steps, initial=step, desc="train-suppression", mininterval=10)
    start = time.time()
    running: list[tuple[float, float]] = []
    refine_start = int(config.refiner_from * config.steps)
    full_start = int(config.full_from * config.steps)
    while step < config.steps:
        full = step >= full_start
        lr_scale = min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        if full:  # the fine-tune at 512 restarts from a lower rate
            lr_scale = 0.25 * 0.5 * (1 + math.cos(math.pi * (step - full_start) / max(1, config.steps - full_start)))
        for opt, base_lr in ((opt_e, config.lr), (opt_r, config.lr / 2)):
            for group in opt.param_groups:
                group["lr"] = base_lr * lr_scale
        batch_size, crop = (config.full_batch, 512) if full else (config.batch, config.crop)
        picks = rng.integers(0, len(pairs), batch_size)
        batch = [sample(pairs[i], rng, crop, config.nodule_prob) for i in picks]
        n, target, weight = (torch.from_numpy(np.stack([b[k] for b in batch])) for k in range(3))
        estimator.train()
        pred = estimator(n)
        loss_e = estimator_loss(pred, target, n, weight)
        opt_e.zero_grad()
        loss_e.backward()
        opt_e.step()
        loss_r = 0.0
        if step >= refine_start:
            refiner.train()
            estimate = pred.detach()
            if full:  # the refiner sees a 256-px window of the whole image: 4 times cheaper
                r, c = (int(v) for v in rng.integers(0, 512 - 256 + 1, 2))
                estimate, target, n, weight = (t[..., r : r + 256, c : c + 256] for t in (estimate, target, n, weight))
            loss = refiner_loss(refiner, estimate, target, n, weight, config.eta)
            opt_r.zero_grad()
            loss.backward()
            opt_r.step()
            loss_r = float(loss)
        step += 1
        running.append((float(loss_e), loss_r))
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == config.steps:
            means = np.mean(running, axis=0)
            history.append([step, float(means[0]), float(means[1]), time.time() - start])
            bar.set_postfix(est=f"{means[0]:.4f}", ref=f"{means[1]:.4f}")
            running = []
            partial = ckpt.with_suffix(".partial")
            torch.save(
                {
                    "estimator": estimator.state_dict(),
                    "refiner": refiner.state_dict(),
                    "opt_e": opt_e.state_dict(),
                    "opt_r": opt_r.state_dict(),
                    "step": step,
                    "history": history,
                    "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                },
                partial,
            )
            partial.replace(ckpt)
    bar.close()
    recalibrate_batchnorm(estimator, pairs)
    final = out / "final.pt"
    torch.save(
        {
            "estimator": estimator.state_dict(),
            "refiner": refiner.state_dict(),
            "config": asdict(config),
            "history": history,
        },
        final,
    )
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, value in asdict(SuppressionTrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    print(train(SuppressionTrainConfig(**vars(parser.parse_args(argv)))))


if __name__ == "__main__":
    main()


def finetune_refiner(
    run: Path, steps: int, crop: int = 256, batch: int = 4, lr: float = 2e-4, threads: int = 2
) -> Path:
    """Train the refiner alone on what it will see at inference: the finished estimator in
    inference mode (recalibrated statistics), no strength scaling, 256-px windows.

    The joint run trains the refiner on the estimator's training-mode outputs, whose strength
    differs; measured on the held-out pairs, that refiner lowered the BSR (docs/lab/).
    Writes ``final.pt`` (the previous one is kept as ``final-joint.pt``)."""
    torch.set_num_threads(threads)
    final = run / "final.pt"
    state = torch.load(final, map_location="cpu", weights_only=False)
    config = SuppressionTrainConfig(**state["config"])
    estimator = Estimator(UNetConfig(in_channels=1, out_channels=1, base=config.base, depth=config.depth))
    estimator.load_state_dict(state["estimator"])
    estimator.eval()
    refiner = build_refiner(tuple(int(c) for c in config.refiner_channels.split(",")))
    refiner.load_state_dict(state["refiner"])
    train_ids = set(json.loads((run / "split.json").read_text())["train"])
    cases, _ = load_cases(Path(config.data))
    pairs = [make_pair(c) for c in cases if c.case_id in train_ids]
    optimiser = torch.optim.AdamW(refiner.parameters(), lr=lr, weight_decay=1e-5)
    rng = np.random.default_rng(config.seed + 1)
    history = []
    refiner.train()
    for _ in tqdm(range(steps), desc="finetune-refiner", mininterval=10):
        picks = rng.integers(0, len(pairs), batch)
        samples = [sample(pairs[i], rng, crop, config.nodule_prob) for i in picks]
        n, target, weight = (torch.from_numpy(np.stack([s[k] for s in samples])) for k in range(3))
        with torch.no_grad():
            estimate = estimator(n)
        t = torch.rand(len(n), 1, 1, 1)
        start = estimate + config.eta * torch.randn_like(estimate)
        z = t * start + (1 - t) * target
        velocity = refiner(torch.cat([z, n, estimate], 1), (t.flatten() * 1000).float()).sample
        loss = ((velocity - (start - target)).abs() * weight).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(float(loss))
    final.replace(run / "final-joint.pt")
    state["refiner"] = refiner.state_dict()
    state["refiner_finetune"] = {
        "steps": steps,
        "crop": crop,
        "batch": batch,
        "lr": lr,
        "loss_first_last_50": [float(np.mean(history[:50])), float(np.mean(history[-50:]))],
    }
    torch.save(state, final)
    return final
