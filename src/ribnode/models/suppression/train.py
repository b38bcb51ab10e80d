"""``ribnode train-suppression``: train the bone-layer denoiser on the JSRT / BSE-JSRT pairs.

Diffusion (default): x0 ("sample") prediction of the scaled bone layer ``b0`` from
``x_t = sqrt(abar_t) b0 + sqrt(1 - abar_t) eps`` conditioned on the normalised radiograph and
the dilated rib mask. Regression (the measured alternative): the same UNet, noisy channel
zero, timestep 0, one step.

Augmentation: horizontal flips, random crops, synthetic nodules and noise added to the
*input radiograph only* (the bone target is unchanged), so the network learns that nodules are
not bone. The nodules are placed inside each training crop (half on ribs), and the loss weighs
the pixels within ``nodule_reach`` radii of a nodule ``nodule_weight`` times more: any bone
the network reads into a nodule, or around it, is exactly what the lesion-retention test of
``shared/guides/metrics.md`` measures, and without the extra weight it is a vanishing share of
the loss. ``init`` starts from a shipped ``.pt`` state dict (fine-tuning). Fixed seed, tqdm
progress bar, checkpoints every ``checkpoint_every`` steps (resumable). The learning rate follows a cosine to zero over ``max(step / steps,
elapsed / time_limit)``, so a run on a loaded machine still ends annealed within its time.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ribnode.models.info import sha256_file
from ribnode.models.preprocess import to_working
from ribnode.models.suppression.data import (
    REGION_LABELS, WorkingPair, load_pairs, normalise, split_held_out, to_working_pair,
)
from ribnode.models.suppression.lesions import add_nodules, sample_training_nodules
from ribnode.models.suppression.scheduler import NumpyDDIM
from ribnode.models.suppression.network import (
    NetworkConfig, SuppressionConfig, build_scheduler, build_unet,
)
from ribnode.models.segmentation.data import case_ids

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class TrainOptions:
    """What one training run does."""

    data: Path
    out: Path
    mode: str = "diffusion"
    steps: int = 1500
    batch: int = 8
    crop: int = 128
    lr: float = 1e-3
    warmup: int = 50
    time_limit_min: float = 45.0
    seed: int = 0
    threads: int = 1
    checkpoint_every: int = 100
    nodule_prob: float = 0.8
    inverted: bool = True
    working_size: int = 512
    ema_decay: float = 0.999
    loss_outside_weight: float = 0.1
    resume: bool = True
    device: str = "auto"  # "cuda" when available, else "cpu"
    focus_steps: int = 0  # > 0: draw t from the focus_steps-step sampling schedule ...
    focus_prob: float = 0.0  # ... with this probability (else uniform over all timesteps)
    labels: str = REGION_LABELS  # rib-mask definition of the training region (segmentation.data)
    nodules_per_crop: tuple[int, int] = (1, 4)  # drawn uniformly, inside the crop (half on ribs)
    nodule_weight: float = 10.0  # extra loss weight near each nodule (0: plain region weight)
    nodule_reach: float = 2.5  # ... within this many radii of its centre
    init: Path | None = None  # start from this .pt state dict instead of random weights
    pair_weight: float = 0.0  # > 0: also penalise the change the nodules make to the bone estimate


class Batcher:
    """Draws augmented training batches from working-size pairs."""

    def __init__(self, pairs: list[WorkingPair], config: SuppressionConfig, options: TrainOptions,
                 rng: np.random.Generator) -> None:
        self.pairs, self.config, self.options, self.rng = pairs, config, options, rng

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(condition (B,2,H,W): radiograph + region, bone target (B,1,H,W), loss weight
        (B,1,H,W), loss normaliser (the sum of the region weight alone, a scalar))."""
        cond, _, target, weight, denominator = self.sample_paired()
        return cond, target, weight, denominator

    def sample_paired(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``sample``, with the condition of the same crops without their nodules second
        (same noise, same flip): the pair the lesion-retention test compares."""
        items = [self._one(self.pairs[self.rng.integers(len(self.pairs))]) for _ in range(self.options.batch)]
        cond, clean, target, weight = (torch.from_numpy(np.stack([item[k] for item in items])) for k in range(4))
        return cond, clean, target, weight, torch.tensor(float(sum(item[4] for item in items)))

    def _window(self) -> tuple[int, int, int]:
        """(row, col, side) of this sample's crop at the working size."""
        crop, size = self.options.crop, self.options.working_size
        if crop >= size:
            return 0, 0, size
        r0, c0 = self.rng.integers(0, size - crop + 1, size=2)
        return int(r0), int(c0), crop

    def _augmented_input(self, pair: WorkingPair, window: tuple[int, int, int],
                         ) -> tuple[np.ndarray, list[tuple[float, float, float, float]], np.ndarray]:
        """The working-size input, its nodules (row, col, radius, contrast) at working size, and
        the same input without the nodules (only for the paired loss; else empty)."""
        image = clean = pair.radiograph.astype(np.float64)
        scale = max(image.shape) / float(self.options.working_size)
        found: list[tuple[float, float, float, float]] = []
        if self.rng.random() < self.options.nodule_prob:
            r0, c0, side = (int(round(v * scale)) for v in window)
            inside = np.zeros_like(pair.rib_mask)
            inside[r0:r0 + side, c0:c0 + side] = True
            low, high = self.options.nodules_per_crop
            per_512 = max(image.shape) / 512.0  # radii are drawn in px at 512, as in the lesion test
            found = sample_training_nodules(self.rng, pair.rib_mask, int(self.rng.integers(low, high + 1)),
                                            (2.0 * per_512, 14.0 * per_512), window=inside)
            image = add_nodules(image, found)
        if self.rng.random() < 0.5:
            noise = self.rng.normal(0.0, self.rng.uniform(0.0, 0.01), image.shape)
            image, clean = image + noise, clean + noise
        working = [(r / scale, c / scale, rad / scale, con) for r, c, rad, con in found]
        size = self.options.working_size
        return (to_working(image.astype(np.float32), size), working,
                to_working(clean.astype(np.float32), size) if found and self.options.pair_weight > 0
                else np.empty(0))

    def _one(self, pair: WorkingPair) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        window = self._window()
        image, found, clean = self._augmented_input(pair, window)
        norm, lo, hi = normalise(image, self.config.percentiles)
        clean_norm = normalise(clean, self.config.percentiles)[0] if clean.size else norm
        bone = pair.bone / (hi - lo) * self.config.bone_scale
        r0, c0, side = window
        stack = np.stack([norm, pair.region, bone, clean_norm]).astype(np.float32)[:, r0:r0 + side, c0:c0 + side]
        outside = self.options.loss_outside_weight
        base = outside + (1 - outside) * stack[1:2]
        weight = base + self.options.nodule_weight * near_nodules(found, window, self.options.nodule_reach)[None]
        stack = np.concatenate([stack, weight.astype(np.float32)])
        if self.rng.random() < 0.5:
            stack = stack[:, :, ::-1]
        stack = np.ascontiguousarray(stack)
        clean_cond = np.ascontiguousarray(stack[[3, 1]])
        return stack[:2], clean_cond, stack[2:3], stack[4:5], float(base.sum())


def near_nodules(nodules: list[tuple[float, float, float, float]], window: tuple[int, int, int],
                 reach: float = 2.5) -> np.ndarray:
    """(side, side) float32: 1 within ``reach`` radii of any nodule centre, in the crop ``window``."""
    r0, c0, side = window
    out = np.zeros((side, side), dtype=bool)
    rows = np.arange(side, dtype=np.float64)[:, None] + r0
    cols = np.arange(side, dtype=np.float64)[None, :] + c0
    for row, col, radius, _ in nodules:
        out |= (rows - row) ** 2 + (cols - col) ** 2 < (reach * radius) ** 2
    return out.astype(np.float32)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _model_input(noisy: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return torch.cat([noisy, cond], dim=1)


def _timesteps(scheduler: Any, batch: int, generator: torch.Generator, focus: list[int],
               focus_prob: float) -> torch.Tensor:
    """Uniform training timesteps, a ``focus_prob`` share of them from the ``focus`` schedule."""
    t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
    if focus and focus_prob > 0:
        pick = torch.rand(batch, generator=generator) < focus_prob
        choice = torch.tensor(focus)[torch.randint(0, len(focus), (batch,), generator=generator)]
        t = torch.where(pick, choice, t)
    return t


def training_loss(unet: torch.nn.Module, scheduler: Any, config: SuppressionConfig,
                  cond: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                  generator: torch.Generator, focus: list[int] | None = None,
                  focus_prob: float = 0.0, denominator: torch.Tensor | None = None,
                  clean_cond: torch.Tensor | None = None, pair_weight: float = 0.0) -> torch.Tensor:
    """Weighted MSE of the x0 prediction (diffusion) or of the direct bone estimate (regression),
    divided by ``denominator`` (default: the weights' sum).

    With ``clean_cond`` (the same crops without their nodules) and ``pair_weight`` > 0, adds
    ``pair_weight`` times the same weighted mean of ``(pred - pred_clean)**2``, where
    ``pred_clean`` is the network's estimate for the clean crop at the same noise and timestep,
    held fixed (no gradient). That is the change the nodules make to the bone estimate: what
    the lesion-retention test measures, free of the estimate's error against the target.
    """
    batch = target.shape[0]
    if config.mode == "diffusion":
        t = _timesteps(scheduler, batch, generator, focus or [], focus_prob)
        noise = torch.randn(target.shape, generator=generator)
        t, noise = t.to(target.device), noise.to(target.device)
        noisy = scheduler.add_noise(target, noise, t)
    else:
        t = torch.zeros(batch, dtype=torch.long, device=target.device)
        noisy = torch.zeros_like(target)
    pred = unet(_model_input(noisy, cond), t).sample
    norm = weight.sum() if denominator is None else denominator
    loss = (weight * (pred - target) ** 2).sum() / norm
    if clean_cond is not None and pair_weight > 0:
        with torch.no_grad():
            anchor = unet(_model_input(noisy, clean_cond), t).sample
        loss = loss + pair_weight * (weight * (pred - anchor) ** 2).sum() / norm
    return loss


def _checkpoint(path: Path, unet: torch.nn.Module, ema: dict[str, torch.Tensor],
                optimiser: torch.optim.Optimizer, step: int, elapsed: float, rng_state: Any,
                generator: torch.Generator) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": unet.state_dict(), "ema": ema, "optimiser": optimiser.state_dict(),
                "step": step, "elapsed": elapsed, "rng": rng_state,
                "generator": generator.get_state()}, tmp)
    tmp.replace(path)


def train(options: TrainOptions) -> Path:
    """Train one model; writes ``OUT/model.pt`` (EMA weights) and ``OUT/config.json``."""
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    options.out.mkdir(parents=True, exist_ok=True)
    config = SuppressionConfig(network=NetworkConfig(sample_size=options.working_size), mode=options.mode)
    train_ids, held_ids = split_held_out(case_ids(options.data))
    pairs = [to_working_pair(p, options.working_size) for p in load_pairs(options.data, train_ids, options.inverted, labels=options.labels)]
    device = options.device if options.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    unet, scheduler = build_unet(config.network).to(device), build_scheduler(config.scheduler)
    if options.init is not None:
        unet.load_state_dict(torch.load(options.init, weights_only=True, map_location=device))
        logger.info("initialised from %s (sha256 %s)", options.init, sha256_file(options.init))
    optimiser = torch.optim.AdamW(unet.parameters(), lr=options.lr, weight_decay=1e-4)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    step, elapsed = 0, 0.0
    ckpt = options.out / "checkpoint.pt"
    if options.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False, map_location=device)
        unet.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        ema, step, elapsed = state["ema"], state["step"], state["elapsed"]
        rng.bit_generator.state = state["rng"]
        generator.set_state(state["generator"])
        logger.info("resumed from %s at step %d", ckpt, step)
    batcher = Batcher(pairs, config, options, rng)
    losses = _loop(unet, scheduler, config, optimiser, ema, batcher, options, generator, step, elapsed, ckpt)
    return _finish(unet, ema, config, options, train_ids, held_ids, losses)


def _loop(unet: torch.nn.Module, scheduler: Any, config: SuppressionConfig,
          optimiser: torch.optim.Optimizer, ema: dict[str, torch.Tensor], batcher: Batcher,
          options: TrainOptions, generator: torch.Generator, step: int, elapsed: float,
          ckpt: Path) -> dict[str, Any]:
    from tqdm import tqdm

    start = time.monotonic() - elapsed
    limit = options.time_limit_min * 60.0
    history: list[tuple[int, float, float]] = []
    running = None
    focus = NumpyDDIM(config.scheduler).timesteps(options.focus_steps) if options.focus_steps else []
    bar = tqdm(total=options.steps, initial=step, desc=f"train-suppression ({config.mode})", mininterval=10)
    unet.train()
    while step < options.steps:
        progress = max(step / options.steps, (time.monotonic() - start) / limit)
        if progress >= 1.0:
            logger.warning("time limit %.0f min reached at step %d of %d", options.time_limit_min, step, options.steps)
            break
        for group in optimiser.param_groups:
            group["lr"] = options.lr * _lr_factor(progress, step, options.warmup)
        device = next(unet.parameters()).device
        cond, clean, target, weight, denominator = (t.to(device) for t in batcher.sample_paired())
        loss = training_loss(unet, scheduler, config, cond, target, weight, generator, focus, options.focus_prob,
                             denominator, clean_cond=clean, pair_weight=options.pair_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimiser.step()
        _update_ema(ema, unet, options.ema_decay, step)
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.5f}", refresh=False)
        if step % options.checkpoint_every == 0 or step == options.steps:
            history.append((step, running, time.monotonic() - start))
            _checkpoint(ckpt, unet, ema, optimiser, step, time.monotonic() - start,
                        batcher.rng.bit_generator.state, generator)
            logger.info("step %d loss %.5f lr %.2e %.0f s", step, running, optimiser.param_groups[0]["lr"],
                        time.monotonic() - start)
    bar.close()
    if step % options.checkpoint_every:  # stopped by the time limit between checkpoints
        _checkpoint(ckpt, unet, ema, optimiser, step, time.monotonic() - start,
                    batcher.rng.bit_generator.state, generator)
    return {"steps_done": step, "seconds": time.monotonic() - start, "history": history}


@torch.no_grad()
def _update_ema(ema: dict[str, torch.Tensor], unet: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1.0 + step) / (10.0 + step))
    for key, value in unet.state_dict().items():
        if value.dtype.is_floating_point:
            ema[key].mul_(d).add_(value.detach(), alpha=1.0 - d)
        else:
            ema[key].copy_(value)


def _finish(unet: torch.nn.Module, ema: dict[str, torch.Tensor], config: SuppressionConfig,
            options: TrainOptions, train_ids: list[str], held_ids: list[str],
            record: dict[str, Any]) -> Path:
    unet.load_state_dict(ema)
    weights = options.out / "model.pt"
    torch.save({k: v.cpu() for k, v in unet.state_dict().items()}, weights)
    training = {
        "data": str(options.data), "train_cases": train_ids, "held_out_cases": held_ids,
        "split_rule": "sorted ids per stratum (JPCLN, JPCNN); every 5th held out (index 4, 9, ...)",
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(options).items()},
        "init_sha256": sha256_file(options.init) if options.init is not None else None,
        "steps_done": record["steps_done"], "seconds": round(record["seconds"], 1),
        "history": record["history"], "torch": torch.__version__, "weights_pt_sha256": sha256_file(weights),
    }
    replace(config, training=training).save(options.out / "config.json")
    logger.info("wrote %s (%d steps, %.0f s)", weights, record["steps_done"], record["seconds"])
    return weights


def load_trained(run_dir: Path) -> tuple[torch.nn.Module, SuppressionConfig]:
    """The trained UNet (eval mode) and its config from a training output folder."""
    config = SuppressionConfig.load(run_dir / "config.json")
    unet = build_unet(config.network)
    unet.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return unet.eval(), config


def record_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def training_tile(config: SuppressionConfig) -> int:
    """The denoiser window a trained model should run on: its training crop, when that crop is
    smaller than the working size (0, the whole image, otherwise)."""
    crop = int(config.training.get("options", {}).get("crop", 0) or 0)
    return crop if 0 < crop < config.working_size else 0


def install(run_dir: Path, onnx_path: Path, default_steps: int | None = None, tile_px: int | None = None) -> Path:
    """Export a training run to ``onnx_path`` (+ ``.pt`` state dict, + ``.json`` config/record);
    ``default_steps`` (measured: ``benchmarks/suppression_steps.py``) goes into the json, and so
    does ``tile_px``, the denoiser window (None: the training crop, ``training_tile``)."""
    from ribnode.models.suppression.export import check_onnx, export_onnx

    unet, config = load_trained(run_dir)
    if default_steps is not None:
        if default_steps < 1:
            raise ValueError(f"default_steps {default_steps}: expected >= 1")
        config = replace(config, default_steps=int(default_steps))
    config = replace(config, tile_px=training_tile(config) if tile_px is None else int(tile_px), tile_stride_px=0)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    pt_path = onnx_path.with_suffix(".pt")
    torch.save(unet.state_dict(), pt_path)
    export_onnx(unet, config, onnx_path, {"pt_sha256": sha256_file(pt_path), "name": "ribnode rib-suppression"})
    err = check_onnx(unet, onnx_path, config.working_size)
    logger.info("ONNX parity on a random input: max |torch - ORT| = %.2e", err)
    return onnx_path
