"""Train the chest anatomy segmentation: one U-Net, three independent sigmoids.

Channels (``ribnode.models.info.STRUCTURES``): ribs (the reference masks of
``../shared/tools/derive_rib_masks.py``, paired cases only), clavicles (SCR) and lung fields
(SCR lungs plus heart, holes filled: the region in which BSE-JSRT removes bone). A channel
without a label on a case is left out of that case's loss. Loss: BCE + soft Dice per channel.
Augmentation: small affine, gamma, blur, noise, and nodules inserted with the labels unchanged
(a nodule is not anatomy: this is what keeps the masks still when a nodule is added).

Resumable: a checkpoint (model, optimiser, step, RNG) every ``--checkpoint-every`` steps; run
the same command again to continue. The config is written beside the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F
from tqdm import tqdm

from ribnode.models.info import STRUCTURES
from ribnode.models.preprocess import to_working
from ribnode.models.segmentation.normalisation import normalise
from ribnode_lab.data import Case, load_cases
from ribnode_lab.unet import UNet, UNetConfig, count_parameters


@dataclass
class SegTrainConfig:
    data: str = "../shared/data"
    out: str = "runs/seg-v4"
    working_size: int = 256
    steps: int = 3000
    batch: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-5
    base: int = 16
    depth: int = 5
    nodule_prob: float = 0.7
    phantoms: int = 40  # synthetic chests (ribnode.phantom) added to the training cases
    seed: int = 20261207
    threads: int = 1
    checkpoint_every: int = 100


@dataclass
class Sample:
    case_id: str
    image: np.ndarray  # working-size bone-bright (not normalised)
    target: np.ndarray  # (3, S, S) float32 soft labels
    known: np.ndarray  # (3,) float32: 1 where the channel is labelled
    rib_weight: np.ndarray  # (S, S) where nodules go preferentially (ribs or lung)


def prepare(case: Case, size: int) -> Sample:
    ribs = case.ribs if case.paired else np.zeros_like(case.lungs)
    layers = [ribs, case.clavicles, case.lung_field]
    target = np.stack([np.clip(to_working(m.astype(np.float32), size), 0, 1) for m in layers])
    known = np.array([1.0 if case.paired else 0.0, 1.0, 1.0], np.float32)
    where = to_working((case.lung_field | case.clavicles).astype(np.float32), size) > 0.5
    return Sample(
        case.case_id, to_working(case.image, size), target.astype(np.float32), known, where.astype(np.float32)
    )


def prepare_phantom(seed: int, size: int) -> Sample:
    """A synthetic chest with exact labels: lung fields (lung path, retrocardiac included), ribs
    by the reference rule on its exact bone layer inside the lung field; clavicles unlabelled."""
    from ribnode.phantom import generate_chest
    from ribnode_lab.data import reference_rib_mask

    chest = generate_chest(seed, 512)
    assert chest.lung_mask is not None
    field = np.asarray(ndimage.binary_fill_holes(chest.lung_mask), dtype=bool)
    ribs = reference_rib_mask(chest.radiograph, chest.soft_tissue) & ndimage.binary_dilation(field, iterations=3)
    target = np.stack(
        [np.clip(to_working(m.astype(np.float32), size), 0, 1) for m in (ribs, np.zeros_like(ribs), field)]
    )
    where = to_working(field.astype(np.float32), size) > 0.5
    return Sample(
        f"phantom-{seed}",
        to_working(chest.radiograph, size),
        target.astype(np.float32),
        np.array([1.0, 0.0, 1.0], np.float32),
        where.astype(np.float32),
    )


def augment(sample: Sample, rng: np.random.Generator, nodule_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (normalised image (1,S,S), target (3,S,S))."""
    size = sample.image.shape[0]
    image = sample.image.copy()
    if rng.random() < nodule_prob:  # nodules are not anatomy: labels unchanged
        candidates = np.argwhere(sample.rib_weight > 0)
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = candidates[rng.integers(len(candidates))] if len(candidates) else rng.integers(0, size, 2)
            radius = rng.uniform(1.0, 7.0) * size / 256
            contrast = rng.uniform(0.01, 0.06)
            rows, cols = np.ogrid[:size, :size]
            d2 = ((rows - cy) ** 2 + (cols - cx) ** 2) / radius**2
            image += contrast * np.sqrt(np.clip(1 - d2, 0, None)).astype(np.float32)
    angle = math.radians(rng.uniform(-8, 8))
    scale = rng.uniform(0.9, 1.1, 2)
    shift = rng.uniform(-0.06, 0.06, 2) * size
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    matrix = rot @ np.diag(1.0 / scale)
    centre = np.array([size / 2 - 0.5] * 2)
    offset = centre - matrix @ (centre + shift)
    image = ndimage.affine_transform(image, matrix, offset, order=1, mode="nearest")
    target = np.stack([ndimage.affine_transform(t, matrix, offset, order=1, mode="constant") for t in sample.target])
    image = normalise(image)
    gamma = math.exp(rng.uniform(-0.35, 0.35))
    image = np.clip(image, 0, 1) ** gamma
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, rng.uniform(0.3, 1.0))
    image = image + rng.normal(0, rng.uniform(0, 0.02), image.shape)
    return image[None].astype(np.float32), target.astype(np.float32)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice per channel, each channel over the samples where it is labelled."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
    per = (bce + dice) * known
    return per.sum() / known.sum().clamp(min=1)


def save_checkpoint(
    path: Path, model: UNet, optimiser: torch.optim.Optimizer, step: int, history: list, rng: np.random.Generator
) -> None:
    partial = path.with_suffix(".partial")
    torch.save(
        {
            "model": model.state_dict(),
            "optimiser": optimiser.state_dict(),
            "step": step,
            "history": history,
            "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        },
        partial,
    )
    partial.replace(path)


def train(config: SegTrainConfig) -> Path:
    torch.set_num_threads(config.threads)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1) + "\n")
    train_cases, test_cases = load_cases(Path(config.data))
    (out / "split.json").write_text(
        json.dumps({"train": [c.case_id for c in train_cases], "held_out": [c.case_id for c in test_cases]}, indent=1)
    )
    samples = [prepare(c, config.working_size) for c in train_cases]
    samples += [prepare_phantom(5000 + i, config.working_size) for i in range(config.phantoms)]
    torch.manual_seed(config.seed)
    model = UNet(UNetConfig(in_channels=1, out_channels=len(STRUCTURES), base=config.base, depth=config.depth))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rng = np.random.default_rng(config.seed)
    step, history = 0, []
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        step, history = state["step"], state["history"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    warmup = 100
    bar = tqdm(total=config.steps, initial=step, desc="train-seg", mininterval=10)
    start, running = time.time(), []
    model.train()
    while step < config.steps:
        lr = config.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimiser.param_groups:
            group["lr"] = lr
        picks = rng.integers(0, len(samples), config.batch)
        batch = [augment(samples[i], rng, config.nodule_prob) for i in picks]
        images = torch.from_numpy(np.stack([b[0] for b in batch]))
        targets = torch.from_numpy(np.stack([b[1] for b in batch]))
        known = torch.from_numpy(np.stack([samples[i].known for i in picks]))
        loss = loss_fn(model(images), targets, known)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        step += 1
        running.append(float(loss.detach()))
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == config.steps:
            history.append([step, float(np.mean(running)), time.time() - start])
            bar.set_postfix(loss=f"{np.mean(running):.4f}")
            running = []
            save_checkpoint(ckpt, model, optimiser, step, history, rng)
    bar.close()
    torch.save(
        {
            "model": model.state_dict(),
            "config": asdict(config),
            "history": history,
            "unet": asdict(model.config),
            "parameters": count_parameters(model),
        },
        out / "final.pt",
    )
    return out / "final.pt"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = SegTrainConfig()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    print(train(SegTrainConfig(**vars(args))))


if __name__ == "__main__":
    main()
