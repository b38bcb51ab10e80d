"""ONNX export of the denoiser (opset 17, dynamic batch and size, timestep as an input).

Inputs ``sample`` (B, 3, H, W) float32 and ``timestep`` (B,) int64; output ``bone`` (B, 1, H, W).
The config json is written beside the ``.onnx`` with the weights' sha256.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ribnode.models.info import sha256_file
from ribnode.models.suppression.network import IN_CHANNELS, SuppressionConfig

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

OPSET = 17
INPUT_NAMES = ("sample", "timestep")
OUTPUT_NAME = "bone"


def _wrapped(unet: Any) -> Any:
    import torch

    class Denoiser(torch.nn.Module):
        """``UNet2DModel`` returning a plain tensor (ONNX needs no output dataclass)."""

        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep).sample

    return Denoiser().eval()


def export_onnx(unet: Any, config: SuppressionConfig, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Export ``unet`` to ``path`` (single file) and write ``path.with_suffix('.json')``."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = config.network.sample_size
    sample = torch.zeros(2, IN_CHANNELS, size, size)
    timestep = torch.tensor([999, 0], dtype=torch.int64)
    with torch.no_grad():
        torch.onnx.export(
            _wrapped(unet), (sample, timestep), str(path), input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
            dynamic_axes={"sample": {0: "batch", 2: "height", 3: "width"}, "timestep": {0: "batch"},
                          OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}},
        )
    record: dict[str, Any] = {"format": "onnx", "opset": OPSET, "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME,
              "weights_sha256": sha256_file(path), "parameters": int(sum(p.numel() for p in unet.parameters()))}
    record.update(extra or {})
    config.save(path.with_suffix(".json"), record)
    logger.info("exported %s (%s)", path, record["weights_sha256"][:12])
    return path


def check_onnx(unet: Any, path: Path, size: int, atol: float = 1e-4) -> float:
    """Largest |torch - ORT| on a random input; raises ``AssertionError`` above ``atol``."""
    import onnxruntime as ort
    import torch

    rng = np.random.default_rng(0)
    sample = rng.standard_normal((1, IN_CHANNELS, size, size), dtype=np.float32)
    timestep = np.array([500], np.int64)
    with torch.no_grad():
        expected = unet(torch.from_numpy(sample), torch.from_numpy(timestep)).sample.numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs: list[Any] = session.run([OUTPUT_NAME], {"sample": sample, "timestep": timestep})
    got = np.asarray(outputs[0])
    err = float(np.abs(got - expected).max())
    if err > atol:
        raise AssertionError(f"ONNX/torch mismatch {err:.2e} > {atol:.0e}")
    return err
