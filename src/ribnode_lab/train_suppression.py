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
end), trained to predict the velocity ``(e + eta) - b`` (L1), plus the estimator's SSIM and
gradient terms on the layer one step reaches (``refiner_soft``). Its last convolution starts at
zero, so before training the refiner returns the estimate. It trains after the estimator, on
crops of the frozen estimator's whole-image outputs (what it meets at inference), cached for a
few augmented versions of every training pair; half its samples sit at ``t = 1``, where sampling
starts.

``--flip-average 1`` caches, for the refiner, the mean of the estimator's layer on the image and
(mirrored back) on its mirror image, which is what the runtime starts from when the model's json
sets ``estimator_flip_average`` (the export sets it for such a run).

``--estimator-onnx`` starts from a shipped estimator, frozen, and trains the refiner alone (how
3.2.0 and 3.3.0 retrained 3.1.0's refiner). ``--estimator-from`` starts from a shipped estimator
and trains it on (with a fresh optimiser, so the whole-image phase then warms up), then the
refiner.

Augmentation respects ``x = s + b``: joint flips and crops; bone scaling (``s + a * b``, target
``a * b``); nodules added to ``x`` and ``s`` alike (a nodule is not bone), most on bone; noise on
the input only; the per-image window follows the augmented image. Crops first, then whole 512
images for the estimator after ``full_from`` of the steps, so that it sees statistics close to
the whole image's.
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
    out: str = "runs/supp-v4"
    steps: int = 7000  # the estimator's steps: phantom, then crops of the pairs, then whole images
    phantom_steps: int = 700  # pretraining on synthetic chests with exact bone layers
    phantoms: int = 60
    batch: int = 8
    crop: int = 128
    full_from: float = 0.955  # share of the estimator's steps after which whole 512 images are used
    full_batch: int = 2
    groups: int = 8  # GroupNorm: the same statistics in training (crops) and at inference
    lr: float = 2e-3
    base: int = 16
    depth: int = 5
    refiner_steps: int = 2000  # then the refiner alone, on crops of the frozen estimator's whole-image outputs
    refiner_crop: int = 192
    refiner_batch: int = 4
    refiner_versions: int = 3  # augmented versions of each training pair whose whole-image estimates are cached
    refiner_t_one: float = 0.5  # share of refiner samples at t = 1, where sampling starts
    refiner_lr: float = 5e-4
    refiner_soft: float = 1.0  # weight of the estimator's SSIM and gradient terms on the refiner's one-step result
    refiner_channels: str = "16,32,64,64"
    flip_average: int = 0  # 1: the refiner starts from the mean of the estimator on the image and its mirror
    eta: float = 0.02  # the refiner's starting noise, network units
    nodule_prob: float = 0.9
    nodule_weight: float = 3.0  # loss weight inside an inserted nodule's disc
    seed: int = 20261208
    estimator_onnx: str = ""  # a shipped estimator to start from, frozen: the run trains the refiner only
    estimator_from: str = ""  # a shipped estimator to train on from (with --full-from 0: whole images only)
    threads: int = 2
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
    pools: dict[str, np.ndarray]  # (K, 2) nodule centres: on ribs, behind clavicles, anywhere in the field


NODULE_POOLS = {"bone": 0.45, "clavicle": 0.2, "field": 0.35}


def _pair(case_id: str, x: np.ndarray, s: np.ndarray, field: np.ndarray, clavicles: np.ndarray) -> Pair:
    weight = np.where(ndimage.binary_dilation(field, iterations=8), 1.0, 0.2).astype(np.float32)
    bone = x - s
    pools = {
        "bone": np.argwhere((bone > 0.01) & field),
        "clavicle": np.argwhere(clavicles & field),
        "field": np.argwhere(field),
    }
    return Pair(case_id, x.astype(np.float32), s.astype(np.float32), weight, pools)


def make_pair(case: Case) -> Pair:
    assert case.soft is not None
    return _pair(case.case_id, case.image, case.soft, case.lung_field, case.clavicles)


def make_phantom(seed: int) -> Pair:
    """A synthetic chest (``ribnode.phantom``) with its exact bone layer; the phantom's
    clavicles are part of its bone layer but have no separate mask (their pool is the bone's)."""
    from ribnode.phantom import generate_chest

    chest = generate_chest(seed, 512)
    assert chest.lung_mask is not None
    field = np.asarray(ndimage.binary_fill_holes(chest.lung_mask), dtype=bool)
    return _pair(f"phantom-{seed}", chest.radiograph, chest.soft_tissue, field, np.zeros_like(field))


def window(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(x, PERCENTILES)
    return float(lo), float(max(hi, lo + 1e-6))


def sample(
    pair: Pair, rng: np.random.Generator, crop: int, nodule_prob: float, nodule_weight: float = 1.0
) -> tuple[np.ndarray, ...]:
    """(normalised input, target layer, loss weight), all (1, crop, crop), network units.

    The window is the whole augmented image's (as at inference); nodules are placed inside the
    crop, so that most crops teach that a nodule over bone is not bone."""
    b = rng.uniform(0.6, 1.4) * np.clip(pair.x - pair.s, 0.0, None)
    x = pair.s + b
    lo, hi = window(x[::2, ::2])
    size = x.shape[0]
    r, c = (int(v) for v in rng.integers(0, size - crop + 1, 2)) if crop < size else (0, 0)
    view = (slice(r, r + crop), slice(c, c + crop))
    x, b, weight = x[view].copy(), b[view], pair.weight[view].copy()
    if rng.random() < nodule_prob:
        for _ in range(int(rng.integers(1, 5))):
            kind = rng.choice(list(NODULE_POOLS), p=list(NODULE_POOLS.values()))
            pool = pair.pools[kind] if len(pair.pools[kind]) else pair.pools["field"]
            inside = pool[(pool[:, 0] >= r) & (pool[:, 0] < r + crop) & (pool[:, 1] >= c) & (pool[:, 1] < c + crop)]
            if not len(inside):
                continue
            centre = inside[rng.integers(len(inside))] - (r, c)
            radius = rng.uniform(2, 14)
            bump = nodule(x.shape, (float(centre[0]), float(centre[1])), radius, rng.uniform(0.005, 0.05))
            x += bump  # added to x and s alike: the layer b does not change
            weight[bump > 0] *= nodule_weight
    scale = BONE_SCALE / (hi - lo)
    n, target = (x - lo) / (hi - lo), b * scale
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
    if not any(isinstance(m, nn.BatchNorm2d) for m in estimator.modules()):
        return  # GroupNorm: nothing to recalibrate
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


def soft_terms(pred: torch.Tensor, target: torch.Tensor, n: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SSIM on the soft image ``n - b`` and L1 on the layer's gradients (estimator and refiner)."""
    soft_pred, soft_true = n - pred / BONE_SCALE, n - target / BONE_SCALE
    return 0.5 * (1 - ssim(soft_pred, soft_true)) + gradient_l1(pred, target, weight)


def estimator_loss(pred: torch.Tensor, target: torch.Tensor, n: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return ((pred - target).abs() * weight).mean() + soft_terms(pred, target, n, weight)


def refiner_loss(
    refiner: nn.Module,
    estimate: torch.Tensor,
    target: torch.Tensor,
    n: torch.Tensor,
    weight: torch.Tensor,
    eta: float,
    t_one: float = 0.0,
    soft: float = 0.0,
) -> torch.Tensor:
    """L1 on the bridge's velocity ``(e + eta) - b`` at a random time ``t``; a share ``t_one`` of
    the samples sit at ``t = 1``, the start of sampling (the only time one step visits). With
    ``soft`` > 0, the estimator's SSIM (soft image) and gradient terms are added, with that
    weight, on the layer one Euler step reaches from ``t``: ``z_t - t * v``."""
    t = torch.where(torch.rand(len(n), 1, 1, 1) < t_one, torch.ones(len(n), 1, 1, 1), torch.rand(len(n), 1, 1, 1))
    start = estimate + eta * torch.randn_like(estimate)
    state = t * start + (1 - t) * target
    velocity = refiner(torch.cat([state, n, estimate], 1), (t.flatten() * 1000).float()).sample
    loss = ((velocity - (start - target)).abs() * weight).mean()
    if soft:
        loss = loss + soft * soft_terms(state - t * velocity, target, n, weight)
    return loss


@torch.no_grad()
def refiner_item(estimator: Estimator, pairs: list[Pair], index: int, config: SuppressionTrainConfig) -> torch.Tensor:
    """(normalised input, target, weight, the frozen estimator's whole-image estimate), (4, 1, 512, 512),
    for augmented version ``index // len(pairs)`` of pair ``index % len(pairs)``.

    The estimate is the whole image's, as at inference (GroupNorm sees the whole image); the
    refiner trains on crops of a cache of these, which is cheap. The augmentation's seed is the
    index's, so a resumed run rebuilds the same cache."""
    rng = np.random.default_rng([config.seed + 1, index])
    estimator.eval()
    n, target, weight = (torch.from_numpy(v) for v in sample(pairs[index % len(pairs)], rng, 512, config.nodule_prob))
    estimate = estimator(n[None])[0]
    if config.flip_average:  # as the runtime does with ``estimator_flip_average``
        estimate = 0.5 * (estimate + estimator(n[None].flip(-1))[0].flip(-1))
    return torch.stack([n, target, weight, estimate])


@torch.no_grad()
def load_estimator_onnx(estimator: Estimator, path: Path) -> None:
    """Load an exported estimator's weights (``ribnode_lab.export``) back into ``estimator``.

    The convolutions keep their module names in the ONNX file; each GroupNorm's scale and shift
    become a nameless ``Mul`` and ``Add`` constant, numbered in the order the forward pass meets
    them, which is how they are matched here. The result is checked against ONNX Runtime."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer}
    order: list[nn.Module] = []
    norms = [m for m in estimator.modules() if isinstance(m, nn.GroupNorm)]
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in norms]
    estimator.eval()(torch.zeros(1, 1, estimator.unet.config.multiple * 2, estimator.unet.config.multiple * 2))
    for hook in hooks:
        hook.remove()
    names = {id(m): n for n, m in estimator.named_modules()}
    constants = sorted((k for k in weights if k.startswith("onnx::")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if len(constants) != 2 * len(order):
        raise ValueError(f"{path}: {len(constants)} unnamed constants for {len(order)} GroupNorms")
    for module, mul, add in zip(order, constants[::2], constants[1::2]):
        weights[f"{names[id(module)]}.weight"] = weights[mul].reshape(-1)
        weights[f"{names[id(module)]}.bias"] = weights[add].reshape(-1)
    estimator.load_state_dict({k: weights[k] for k in estimator.state_dict()})
    probe = np.random.default_rng(0).random((1, 1, 128, 128), np.float32)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": probe})[0]
    error = float(np.abs(estimator(torch.from_numpy(probe)).numpy() - expected).max())
    if error > 1e-4:
        raise ValueError(f"{path}: the rebuilt estimator differs from the ONNX file by {error}")


def build_estimator(config: SuppressionTrainConfig) -> Estimator:
    return Estimator(
        UNetConfig(in_channels=1, out_channels=1, base=config.base, depth=config.depth, groups=config.groups)
    )


def _lr_scale(step: int, config: SuppressionTrainConfig) -> float:
    """Warm-up and cosine decay over the crops; the whole-image fine-tune and the refiner
    restart from lower rates."""
    full_start = int(config.full_from * config.steps)
    if step < full_start:
        return min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / full_start))
    if step < config.steps:
        k = step - full_start
        warm = min(1.0, (k + 1) / 50) if config.estimator_from else 1.0  # a fresh optimiser on trained weights
        return warm * 0.25 * 0.5 * (1 + math.cos(math.pi * k / max(1, config.steps - full_start)))
    k = step - config.steps
    return min(1.0, (k + 1) / 20) * 0.5 * (1 + math.cos(math.pi * k / max(1, config.refiner_steps)))


def train(config: SuppressionTrainConfig) -> Path:
    """Phantom pretraining, crops of the pairs and whole images for the estimator, then the
    refiner alone on the frozen estimator's outputs (what it meets at inference). Resumable:
    a checkpoint every ``checkpoint_every`` steps; re-running the same command goes on."""
    if config.estimator_onnx and config.estimator_from:
        raise ValueError("--estimator-onnx (frozen) and --estimator-from (trained on) exclude each other")
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    train_cases, test_cases = load_cases(Path(config.data))
    pairs = [make_pair(c) for c in train_cases if c.paired]
    phantoms = [make_phantom(5000 + i) for i in range(config.phantoms if config.phantom_steps else 0)]
    (out / "split.json").write_text(
        json.dumps(
            {"train": [p.case_id for p in pairs], "held_out": [c.case_id for c in test_cases if c.paired]}, indent=1
        )
    )
    torch.manual_seed(config.seed)
    estimator = build_estimator(config)
    refiner = build_refiner(tuple(int(c) for c in config.refiner_channels.split(",")))
    opt_e = torch.optim.AdamW(estimator.parameters(), lr=config.lr, weight_decay=1e-5)
    opt_r = torch.optim.AdamW(refiner.parameters(), lr=config.refiner_lr, weight_decay=1e-5)
    rng = np.random.default_rng(config.seed)
    step, history = 0, []
    ckpt = out / "checkpoint.pt"
    if config.estimator_onnx and not ckpt.is_file():
        load_estimator_onnx(estimator, Path(config.estimator_onnx))
        step = config.steps  # the estimator is done: straight to the refiner
    if config.estimator_from and not ckpt.is_file():
        load_estimator_onnx(estimator, Path(config.estimator_from))
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        estimator.load_state_dict(state["estimator"])
        refiner.load_state_dict(state["refiner"])
        opt_e.load_state_dict(state["opt_e"])
        opt_r.load_state_dict(state["opt_r"])
        step, history = state["step"], state["history"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    total = config.steps + config.refiner_steps
    bar = tqdm(total=total, initial=step, desc="train-suppression", mininterval=10)
    start = time.time()
    running: list[tuple[float, float]] = []
    full_start = int(config.full_from * config.steps)
    cache: dict[int, torch.Tensor] = {}
    while step < total:
        scale = _lr_scale(step, config)
        loss_e, loss_r = 0.0, 0.0
        if step < config.steps:
            for group in opt_e.param_groups:
                group["lr"] = config.lr * scale
            full = step >= full_start
            source = phantoms if step < config.phantom_steps and phantoms else pairs
            batch_size, crop = (config.full_batch, 512) if full else (config.batch, config.crop)
            picks = rng.integers(0, len(source), batch_size)
            batch = [sample(source[i], rng, crop, config.nodule_prob, config.nodule_weight) for i in picks]
            n, target, weight = (torch.from_numpy(np.stack([b[k] for b in batch])) for k in range(3))
            estimator.train()
            loss = estimator_loss(estimator(n), target, n, weight)
            opt_e.zero_grad()
            loss.backward()
            opt_e.step()
            loss_e = float(loss.detach())
        else:
            for group in opt_r.param_groups:
                group["lr"] = config.refiner_lr * scale
            crops = []
            for i in rng.integers(0, config.refiner_versions * len(pairs), config.refiner_batch):
                if int(i) not in cache:  # computed when first drawn
                    cache[int(i)] = refiner_item(estimator, pairs, int(i), config)
                r, c = (int(v) for v in rng.integers(0, 512 - config.refiner_crop + 1, 2))
                piece = cache[int(i)][:, :, r : r + config.refiner_crop, c : c + config.refiner_crop]
                crops.append(piece.flip(-1) if rng.random() < 0.5 else piece)
            n, target, weight, estimate = torch.stack(crops).unbind(1)
            refiner.train()
            loss = refiner_loss(
                refiner, estimate, target, n, weight, config.eta, config.refiner_t_one, config.refiner_soft
            )
            opt_r.zero_grad()
            loss.backward()
            opt_r.step()
            loss_r = float(loss.detach())
        step += 1
        running.append((loss_e, loss_r))
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == total:
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
