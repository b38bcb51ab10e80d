"""Training of the rib-segmentation U-Net (``ribnode train-seg``).

Dice + BCE loss, Adam with a cosine learning-rate schedule, a fixed seed, a checkpoint after
every epoch (resumable), on-the-fly augmentation (small affine incl. mild anisotropic scale,
gamma, contrast, blur, noise; no left-right flip: the heart side is anatomy). Images are
brought to the working size and normalised by the same torch-free functions that the ONNX
Runtime segmenter uses at inference (``normalisation``).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ribnode.models.segmentation.data import DEFAULT_LABELS, bone_layer, case_ids, load_pair, rib_mask, split_cases
from ribnode.models.segmentation.normalisation import normalise, to_working
from ribnode.models.segmentation.unet import UNet, UNetConfig, count_parameters

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``train-config.json`` and in the weights' JSON."""

    data: str
    output: str = "runs/rib-segmentation"
    working_size: int = 256
    epochs: int = 40
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    held_out: int = 24
    seed: int = 20260121  # weights, batches and augmentation
    split_seed: int = 20260121  # the held-out cases (kept apart from seed, so seeds share a split)
    threads: int = 1
    inverted: bool = True
    labels: str = DEFAULT_LABELS  # rib-mask definition (segmentation.data.LABEL_DEFINITIONS)
    synthetic: int = 0  # synthetic radiographs added to training (ribnode.models.synthetic)
    synthetic_labels: str = "in-lung"  # of the synthetic chests: SYNTHETIC_LABELS
    intensity_augmentation: float = 1.0  # scales the gamma/contrast/brightness ranges (0: none)
    bone_weight: float = 0.0  # > 0: auxiliary bone-layer head, its L1 loss weighted so (training only)
    device: str = "auto"
    unet: dict[str, Any] = field(default_factory=lambda: UNetConfig().as_dict())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch so a run is reproducible on the same machine."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Working-size normalised image and soft mask target.

    The image takes exactly the inference path (``to_working`` then ``normalise``); the mask
    is resampled the same way, so the target is the fraction of rib in each working pixel.
    """
    working = normalise(to_working(image, size))
    soft = to_working(mask.astype(np.float32), size)
    return working, np.clip(soft, 0.0, 1.0)


#: The bone-layer target is in the network input's units (the radiograph's percentile window),
#: times this, so that a typical rib is about 0.2-0.5 (BSE-JSRT's layer peaks near 0.1 of full
#: scale on a window of about 0.7).
BONE_TARGET_SCALE = 4.0


def prepare_bone(radiograph: np.ndarray, soft_tissue: np.ndarray, size: int) -> np.ndarray:
    """Working-size bone-layer target of the auxiliary head, in the normalised input's units.

    The layer is the labels' own (``radiograph - soft``, Gaussian sigma 1 px at the source),
    resampled like the image and divided by the width of the window ``normalise`` applies to
    the radiograph, so it is the bone's share of what the network sees.
    """
    working = to_working(radiograph, size)
    low, high = np.percentile(working, [1.0, 99.0])
    layer = to_working(bone_layer(radiograph, soft_tissue).astype(np.float32), size)
    return np.asarray(BONE_TARGET_SCALE * layer / max(float(high - low), 1e-6), dtype=np.float32)


def load_tensors(config: TrainConfig, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the working-size images and targets of ``ids`` as N x 1 x S x S tensors.

    With ``bone_weight`` > 0 the targets have a second channel, the bone layer
    (``prepare_bone``), which the augmentation moves with the mask.
    """
    images, masks = [], []
    for case in ids:
        pair = load_pair(Path(config.data), case, inverted=config.inverted, labels=config.labels)
        image, mask = prepare_pair(pair.radiograph, pair.mask, config.working_size)
        images.append(image)
        if config.bone_weight > 0:
            masks.append(np.stack([mask, prepare_bone(pair.radiograph, pair.soft_tissue,
                                                      config.working_size)]))
        else:
            masks.append(mask[None])
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(masks))


#: Labels of synthetic training chests. "in-lung": ``labels``' rule applied to the exact pair,
#: kept inside the lung fields (the JSRT labels cover ribs over the lungs only, because
#: BSE-JSRT suppresses bone there); "whole": the same rule over the whole chest (ribs over the
#: heart and below the diaphragm too); "exact": the generator's bone path mask.
SYNTHETIC_LABELS = ("in-lung", "whole", "exact")


def synthetic_tensors(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Synthetic chests added to training, if requested, labelled per ``SYNTHETIC_LABELS``."""
    if config.synthetic <= 0:
        return None
    if config.bone_weight > 0:
        raise ValueError("synthetic chests and the bone head are not combined (no BSE bone layer)")
    from ribnode.models.synthetic import generate_chest

    if config.synthetic_labels not in SYNTHETIC_LABELS:
        raise ValueError(f"synthetic_labels must be one of {SYNTHETIC_LABELS}, not {config.synthetic_labels!r}")
    images, masks = [], []
    for index in range(config.synthetic):
        chest = generate_chest(seed=config.seed + 1000 + index, size=512, nodules=2)
        if config.synthetic_labels == "exact":
            label = chest.rib_mask
        else:
            label = rib_mask(chest.radiograph, chest.soft_tissue, labels=config.labels)
            if config.synthetic_labels == "in-lung":
                if chest.lung_mask is None:
                    raise ValueError("this synthetic chest has no lung mask")
                label = label & chest.lung_mask
        image, mask = prepare_pair(chest.radiograph, label, config.working_size)
        images.append(image)
        masks.append(mask)
    return torch.from_numpy(np.stack(images)[:, None]), torch.from_numpy(np.stack(masks)[:, None])


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator,
            intensity: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random geometric and photometric augmentation of a batch (same geometry for the mask).

    ``intensity`` scales the gamma (exp(+-0.4)), contrast (+-20 %) and brightness (+-0.08)
    ranges. The reference labels threshold the *absolute* bone-layer intensity, so strong
    photometric changes blur the cue that decides how much of a rib is labelled; weak ones
    still cover detector-to-detector variety after the per-image normalisation.
    """
    n = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    angle = uniform(-8.0, 8.0) * math.pi / 180.0
    scale = uniform(0.85, 1.18)
    aspect = uniform(-0.08, 0.08)
    shift = uniform(-0.06, 0.06, 2)
    sx, sy = scale * (1 + aspect), scale * (1 - aspect)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, shift[:, 0]], dim=1),
        torch.stack([sin * sx, cos * sy, shift[:, 1]], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(intensity * uniform(-0.4, 0.4, 1, 1, 1))
    images = images.clamp(0, 1) ** gamma
    contrast = 1.0 + intensity * uniform(-0.2, 0.2, 1, 1, 1)
    images = (images - 0.5) * contrast + 0.5 + intensity * uniform(-0.08, 0.08, 1, 1, 1)
    images = _random_blur(images, generator)
    images = images + uniform(0.0, 0.03, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    return images.clamp(0, 1), masks


def _random_blur(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur (sigma 0.5-1.2 px) on about a third of the batch: detector MTF variety."""
    out = images.clone()
    for index in range(images.shape[0]):
        if torch.rand(1, generator=generator).item() > 0.33:
            continue
        sigma = 0.5 + 0.7 * torch.rand(1, generator=generator).item()
        radius = int(math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=images.dtype)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        one = F.pad(images[index : index + 1], (radius, radius, radius, radius), mode="replicate")
        one = F.conv2d(one, kernel.view(1, 1, 1, -1))
        out[index : index + 1] = F.conv2d(one, kernel.view(1, 1, -1, 1))
    return out


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice (per image, then averaged): BCE for calibration, Dice for overlap."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return bce + (1 - dice).mean()


def training_loss(model: UNet, images: torch.Tensor, targets: torch.Tensor,
                  bone_weight: float) -> torch.Tensor:
    """Dice + BCE on the rib channel; plus ``bone_weight`` x L1 of the bone head, if any."""
    if bone_weight <= 0:
        return dice_bce_loss(model(images), targets[:, :1])
    logits, bone = model.forward_with_bone(images)
    return dice_bce_loss(logits, targets[:, :1]) + bone_weight * F.l1_loss(bone, targets[:, 1:2])


@torch.no_grad()
def validate(model: UNet, images: torch.Tensor, masks: torch.Tensor, device: torch.device) -> float:
    """Mean Dice at working size (prediction > 0.5 against soft target > 0.5)."""
    model.eval()
    scores = []
    for index in range(images.shape[0]):
        logits = model(images[index : index + 1].to(device)).cpu()
        pred, ref = logits[0, 0] > 0, masks[index, 0] > 0.5
        total = pred.sum() + ref.sum()
        scores.append(1.0 if total == 0 else float(2 * (pred & ref).sum() / total))
    model.train()
    return float(np.mean(scores))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_checkpoint(path: Path, model: UNet, optimiser: torch.optim.Optimizer,
                     scheduler: Any, epoch: int, history: list[dict[str, float]],
                     config: TrainConfig) -> None:
    state = {"model": model.state_dict(), "optimiser": optimiser.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
             "config": asdict(config)}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(config: TrainConfig, resume: bool = True) -> Path:
    """Train; checkpoint ``OUTPUT/checkpoint.pt`` after every epoch; return its path.

    With ``resume`` an existing checkpoint in ``OUTPUT`` continues where it stopped.
    """
    from tqdm import tqdm

    torch.set_num_threads(max(1, config.threads))
    seed_everything(config.seed)
    device = _device(config.device)
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    ids = case_ids(Path(config.data))
    train_ids, held_ids = split_cases(ids, config.held_out, config.split_seed)
    (output / "split.json").write_text(json.dumps({"train": train_ids, "held_out": held_ids}, indent=1))
    (output / "train-config.json").write_text(json.dumps(asdict(config), indent=1))
    logger.info("data %s: %d train, %d held out; device %s, %d threads",
                config.data, len(train_ids), len(held_ids), device, torch.get_num_threads())
    train_x, train_y = load_tensors(config, train_ids)
    val_x, val_y = load_tensors(config, held_ids)
    synthetic = synthetic_tensors(config)
    if synthetic is not None:
        train_x, train_y = torch.cat([train_x, synthetic[0]]), torch.cat([train_y, synthetic[1]])
    unet = UNetConfig(**config.unet)
    if unet.bone_head != (config.bone_weight > 0):
        raise ValueError(f"bone_weight {config.bone_weight} and unet bone_head {unet.bone_head} disagree")
    model = UNet(unet).to(device)
    logger.info("U-Net %s, %d parameters", config.unet, count_parameters(model))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate,
                                 weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(train_x.shape[0] / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch,
        pct_start=0.1)
    checkpoint = output / "checkpoint.pt"
    start_epoch, history = 0, []
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
        logger.info("resumed from %s at epoch %d", checkpoint, start_epoch)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        generator.manual_seed(config.seed + epoch)
        started = time.perf_counter()
        order = torch.randperm(train_x.shape[0], generator=generator)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   mininterval=5.0, leave=False)
        for step in bar:
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            images, masks = augment(train_x[batch], train_y[batch], generator,
                                    config.intensity_augmentation)
            loss = training_loss(model, images.to(device), masks.to(device), config.bone_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        val_dice = validate(model, val_x, val_y, device)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "held_out_dice_working": val_dice,
                        "seconds": time.perf_counter() - started})
        _save_checkpoint(checkpoint, model, optimiser, scheduler, epoch + 1, history, config)
        logger.info("epoch %d/%d loss %.4f held-out Dice@%d %.4f (%.0f s)", epoch + 1,
                    config.epochs, history[-1]["loss"], config.working_size, val_dice,
                    history[-1]["seconds"])
    (output / "history.json").write_text(json.dumps(history, indent=1))
    return checkpoint


def load_model(checkpoint: Path) -> tuple[UNet, dict[str, Any]]:
    """The network of a checkpoint in eval mode, with the checkpoint's saved state dict."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = UNet(UNetConfig(**state["config"]["unet"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state
