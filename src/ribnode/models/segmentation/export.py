"""Export of a trained U-Net checkpoint to ONNX, with its JSON config beside it.

Opset 17, dynamic batch, height and width (multiples of ``2**(depth-1)``). BatchNorm is
folded into the convolutions by the exporter in eval mode. The JSON records everything the
ONNX Runtime segmenter and a reader of the model card need: working size, normalisation,
threshold, training data, split, seed, and the sha256 of the ONNX file.
"""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ribnode.models.info import sha256_file
from ribnode.models.segmentation.data import (
    LOCAL_FLOOR, LOCAL_FRACTION, LOCAL_RADIUS_512, OPEN_MAX_HOLE_512, REFERENCE_THRESHOLD)
from ribnode.models.segmentation.normalisation import NORMALISATION
from ribnode.models.segmentation.train import load_model
from ribnode.models.segmentation.unet import UNet, UNetConfig, count_parameters, fold_batchnorm

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
MODEL_NAME = "ribnode rib-segmentation"
MODEL_VERSION = "3.0.0"
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def export_onnx(model: UNet, path: Path, size: int = 256) -> Path:
    """Write ``model`` (eval mode, BatchNorm folded) as ONNX, dynamic batch/height/width."""
    model = fold_batchnorm(model)
    example = torch.zeros(1, model.config.in_channels, size, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (example,), str(path), opset_version=OPSET, dynamo=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                      OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}},
    )
    return path


def model_config(model: UNet, onnx_path: Path, working_size: int,
                 training: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON config saved beside the ONNX weights (``training``: where they came from)."""
    return {
        "name": MODEL_NAME,
        "version": MODEL_VERSION,
        "weights": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "format": {"onnx_opset": OPSET, "input": INPUT_NAME, "output": OUTPUT_NAME,
                   "output_kind": "logits (apply sigmoid)", "layout": "N x 1 x H x W float32",
                   "size_multiple": model.config.multiple},
        "working_size": int(working_size),
        "normalisation": NORMALISATION,
        "input_convention": "bone-bright [0, 1] image resampled to working_size x working_size "
                            "(ribnode.models.preprocess.to_working, pixel-centre aligned), then "
                            "normalised",
        "threshold": 0.5,
        "architecture": {"kind": "U-Net", **model.config.as_dict(), "batchnorm": False,
                         "trained_with_batchnorm": model.config.batchnorm,
                         "bone_head": False, "trained_with_bone_head": model.config.bone_head,
                         "parameters": count_parameters(model)},
        "training": training,
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


#: How each label definition (``segmentation.data``) is described in the exported weights' JSON.
LABEL_SOURCES = {
    "reference": "rib masks by the reference derivation (../shared/tools/derive_rib_masks.py, "
                 f"bone layer above {REFERENCE_THRESHOLD:g} of full scale)",
    "local": "rib masks by ribnode's local derivation (segmentation.data.local_rib_mask: bone "
             f"layer above {LOCAL_FRACTION:.0%} of its local peak within {LOCAL_RADIUS_512} px at "
             f"512 and above {LOCAL_FLOOR:g})",
    "local-open": "rib masks by ribnode's local-open derivation (segmentation.data.local_open_rib_mask: "
                  f"bone layer above {LOCAL_FRACTION:.0%} of its local peak within {LOCAL_RADIUS_512} px at "
                  f"512 and above {LOCAL_FLOOR:g}; only holes up to {OPEN_MAX_HOLE_512} px at 512 filled, "
                  "so the lung enclosed by crossing ribs stays out)",
}


def training_record(state: dict[str, Any]) -> dict[str, Any]:
    """Data, split, seed, configuration and final figures of a training checkpoint."""
    train = state["config"]
    split_file = Path(train["output"]) / "split.json"
    history = state.get("history", [])
    return {
        "data": "JSRT radiographs with BSE-JSRT bone-suppressed targets, 512x512 "
                f"(../shared/data/jsrt-bse-512), {LABEL_SOURCES[train.get('labels', 'reference')]}",
        "config": train,
        "seed": train["seed"],
        "epochs_completed": state.get("epoch"),
        "split": json.loads(split_file.read_text()) if split_file.is_file() else None,
        "final_epoch": history[-1] if history else None,
    }


def write_config(model: UNet, onnx_path: Path, working_size: int,
                 training: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``<weights>.json`` beside ``onnx_path``; return the config."""
    config = model_config(model, onnx_path, working_size, training)
    onnx_path.with_suffix(".json").write_text(json.dumps(config, indent=1) + "\n")
    return config


def export_run(checkpoint: Path, onnx_path: Path | None = None) -> Path:
    """Export a training checkpoint to ONNX + JSON (default: beside the checkpoint)."""
    model, state = load_model(checkpoint)
    onnx_path = onnx_path or checkpoint.parent / "rib-segmentation.onnx"
    size = state["config"]["working_size"]
    export_onnx(model, onnx_path, size=size)
    config = write_config(model, onnx_path, size, training_record(state))
    logger.info("exported %s (sha256 %s)", onnx_path, config["sha256"])
    return onnx_path


def install_weights(onnx_path: Path, target_dir: Path = WEIGHTS_DIR) -> Path:
    """Copy an exported ONNX file and its JSON over the shipped weights."""
    target = target_dir / "rib-segmentation.onnx"
    shutil.copyfile(onnx_path, target)
    shutil.copyfile(onnx_path.with_suffix(".json"), target.with_suffix(".json"))
    return target


def unet_from_onnx(path: Path) -> UNet:
    """Rebuild the (BatchNorm-folded) torch U-Net from an exported ONNX file and its JSON.

    The initializers carry the folded module's parameter names; every parameter must be
    found with its exact shape, so a mismatch fails loudly instead of running half a network.
    """
    import onnx
    from onnx import numpy_helper

    config = json.loads(path.with_suffix(".json").read_text())["architecture"]
    keys = {k: config[k] for k in ("in_channels", "out_channels", "base", "depth")}
    model = UNet(UNetConfig(**keys, batchnorm=False)).eval()
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    state = model.state_dict()
    missing = sorted(k for k in state if k not in initializers)
    if missing:
        raise ValueError(f"{path}: no initializer for {missing[:5]} (of {len(missing)} missing)")
    model.load_state_dict({k: torch.from_numpy(initializers[k].copy()) for k in state})
    return model
