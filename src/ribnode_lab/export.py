"""Export trained checkpoints to the ONNX files and json the runtime reads.

``export_segmentation(run, out_dir)``: ``rib-segmentation.onnx`` + ``.json`` (BatchNorm folded,
three sigmoid channels as logits). ``export_suppression(run, out_dir)``: the estimator and the
refiner as two ONNX files and ``rib-suppression.json`` naming both with their sha256 and every
inference parameter. Each export checks ONNX Runtime against torch on a random input.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ribnode.models.info import STRUCTURES, sha256_file
from ribnode.models.segmentation.normalisation import NORMALISATION
from ribnode.models.segmentation.runtime import CHEST_GATE
from ribnode_lab.train_suppression import BONE_SCALE, PERCENTILES, Estimator, build_refiner
from ribnode_lab.unet import UNet, UNetConfig, count_parameters, fold_batchnorm

OPSET = 17
SEG_NAME, SEG_VERSION = "ribnode rib-segmentation", "4.0.0"
SUPP_NAME, SUPP_VERSION = "ribnode rib-suppression", "3.5.0"
DERIVATION = (
    "rib and clavicle shadows attenuated inside the lung fields (estimated bone layer "
    "subtracted); not an acquired radiograph"
)


def _check(module: nn.Module, path: Path, inputs: dict[str, np.ndarray], atol: float = 1e-3) -> float:
    import onnxruntime as ort

    with torch.no_grad():
        expected = module(*(torch.from_numpy(v) for v in inputs.values())).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)[0]
    error = float(np.abs(got - expected).max())
    if error > atol:
        raise AssertionError(f"{path.name}: ONNX Runtime and torch differ by {error:.2e} > {atol:.0e}")
    return error


def _export(module: nn.Module, path: Path, names: list[str], example: tuple[torch.Tensor, ...], output: str) -> None:
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
    for name, tensor in zip(names, example):
        if tensor.ndim == 4:
            axes[name] = {0: "batch", 2: "height", 3: "width"}
    axes[output] = {0: "batch", 2: "height", 3: "width"}
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=names,
            output_names=[output],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes=axes,
        )


def export_segmentation(
    run: Path, out_dir: Path, metrics: dict[str, Any] | None = None, checkpoint: str = "final.pt"
) -> Path:
    """Export a ``train_seg`` run (its ``final.pt`` or ``checkpoint.pt``) into ``out_dir``."""
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=False)
    state.setdefault("config", json.loads((run / "config.json").read_text()))
    train = state["config"]
    state.setdefault(
        "unet",
        UNetConfig(in_channels=1, out_channels=len(STRUCTURES), base=train["base"], depth=train["depth"]).as_dict(),
    )
    model = UNet(UNetConfig(**state["unet"]))
    model.load_state_dict(state["model"])
    training = {
        "config": train,
        "history": state.get("history", []),
        "split": json.loads((run / "split.json").read_text()),
    }
    return write_segmentation(model, out_dir, int(train["working_size"]), training, metrics)


def write_segmentation(
    model: UNet, out_dir: Path, size: int, training: dict[str, Any], metrics: dict[str, Any] | None = None
) -> Path:
    """``rib-segmentation.onnx`` + json for ``model`` (BatchNorm folded), checked against torch."""
    folded = fold_batchnorm(model.eval())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rib-segmentation.onnx"
    _export(folded, path, ["image"], (torch.zeros(1, 1, size, size),), "logits")
    error = _check(folded, path, {"image": np.random.default_rng(0).random((1, 1, size, size), np.float32)})
    config = {
        "name": SEG_NAME,
        "version": SEG_VERSION,
        "weights": path.name,
        "sha256": sha256_file(path),
        "working_size": size,
        "outputs": list(STRUCTURES)[: model.config.out_channels],
        "threshold": 0.5,
        "normalisation": NORMALISATION,
        "chest_gate": CHEST_GATE,
        "architecture": {**replace(folded.config).as_dict(), "parameters": count_parameters(model)},
        "format": {"onnx_opset": OPSET, "input": "image", "output": "logits", "onnx_torch_max_error": error},
        "labels": {
            "ribs": "reference masks (../shared/tools/derive_rib_masks.py, threshold 0.02)",
            "clavicles": "SCR clavicles",
            "lungs": "SCR lungs + heart, holes filled",
        },
        "training": training,
        "metrics": metrics or {},
    }
    path.with_suffix(".json").write_text(json.dumps(config, indent=1) + "\n")
    return path


class _Refiner(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep).sample


class _FoldedEstimator(nn.Module):
    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(self.unet(image), beta=5.0)


def load_suppression(run: Path, name: str = "final.pt") -> tuple[Estimator, nn.Module, dict[str, Any]]:
    state = torch.load(run / name, map_location="cpu", weights_only=False)
    config = state.get("config") or json.loads((run / "config.json").read_text())
    estimator = Estimator(
        UNetConfig(
            in_channels=1, out_channels=1, base=config["base"], depth=config["depth"], groups=config.get("groups", 0)
        )
    )
    estimator.load_state_dict(state["estimator"])
    refiner = build_refiner(tuple(int(c) for c in config["refiner_channels"].split(",")))
    refiner.load_state_dict(state["refiner"])
    return estimator.eval(), refiner.eval(), {"config": config, "history": state["history"]}


def export_suppression(
    run: Path,
    out_dir: Path,
    metrics: dict[str, Any] | None = None,
    default_steps: int = 1,
    checkpoint: str = "final.pt",
    flip_average: bool = False,
) -> Path:
    """Export a ``train_suppression`` run into ``out_dir``, the estimator's BatchNorm statistics
    recalibrated on the run's whole training images first."""
    from ribnode_lab.data import load_cases
    from ribnode_lab.train_suppression import make_pair, recalibrate_batchnorm

    estimator, refiner, record = load_suppression(run, checkpoint)
    train_ids = set(json.loads((run / "split.json").read_text())["train"])
    cases, _ = load_cases(Path(record["config"]["data"]))
    recalibrate_batchnorm(estimator, [make_pair(c) for c in cases if c.case_id in train_ids])
    training = {**record, "split": json.loads((run / "split.json").read_text())}
    flip_average = flip_average or bool(record["config"].get("flip_average"))  # the refiner was trained on it
    return write_suppression(
        estimator, refiner, out_dir, float(record["config"]["eta"]), training, metrics, default_steps, flip_average
    )


def write_suppression(
    estimator: Estimator,
    refiner: nn.Module,
    out_dir: Path,
    eta: float,
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    default_steps: int = 1,
    flip_average: bool = False,
) -> Path:
    """The two ONNX files and ``rib-suppression.json``, each network checked against torch."""
    out_dir.mkdir(parents=True, exist_ok=True)
    est = _FoldedEstimator(fold_batchnorm(estimator.eval().unet)).eval()
    est_path, ref_path = out_dir / "rib-suppression-estimator.onnx", out_dir / "rib-suppression-refiner.onnx"
    _export(est, est_path, ["image"], (torch.zeros(1, 1, 64, 64),), "bone")
    wrapped = _Refiner(refiner.eval()).eval()
    _export(wrapped, ref_path, ["sample", "timestep"], (torch.zeros(1, 3, 64, 64), torch.tensor([1000.0])), "velocity")
    rng = np.random.default_rng(0)
    errors = {
        "estimator": _check(est, est_path, {"image": rng.random((1, 1, 128, 128), np.float32)}),
        "refiner": _check(
            wrapped,
            ref_path,
            {"sample": rng.random((1, 3, 128, 128), np.float32), "timestep": np.array([700.0], np.float32)},
        ),
    }
    config = {
        "name": SUPP_NAME,
        "version": SUPP_VERSION,
        "estimator": est_path.name,
        "refiner": ref_path.name,
        "estimator_sha256": sha256_file(est_path),
        "refiner_sha256": sha256_file(ref_path),
        "working_size": 512,
        "percentiles": list(PERCENTILES),
        "bone_scale": BONE_SCALE,
        "eta": eta,
        "default_steps": default_steps,
        "estimator_flip_average": flip_average,
        "region_sigma_px_512": 4.0,
        "region_floor": 0.04,
        "region_ramp": 0.3,
        "region_reach_px_512": 12.0,
        "derivation": DERIVATION,
        "parameters": {
            "estimator": sum(p.numel() for p in estimator.parameters()),
            "refiner": sum(p.numel() for p in refiner.parameters()),
        },
        "format": {"onnx_opset": OPSET, "onnx_torch_max_error": errors},
        "training": training,
        "metrics": metrics or {},
    }
    path = out_dir / "rib-suppression.json"
    path.write_text(json.dumps(config, indent=1) + "\n")
    return path
