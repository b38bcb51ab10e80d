"""The model fingerprint: what a job's results depend on, for its idempotency key.

The composition root (``ribnode.cli``) computes it once from the model settings and hands it
to the node's completion thread as a value, so the node never reads model files.
"""

from __future__ import annotations

from pathlib import Path

from ribnode.config.settings import ModelSettings
from ribnode.models.info import sha256_file

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"


def model_versions(models: ModelSettings) -> dict[str, str]:
    """What the job's results depend on, for the idempotency key: the sha256 of the
    segmentation's weights and json, that of the suppression's json (it names the sha256 of
    both of its networks and holds every inference parameter), and the sampling steps."""
    seg = models.segmentation_weights or SHIPPED_WEIGHTS / "rib-segmentation.onnx"
    files = {
        "segmentation": seg,
        "segmentation_config": seg.with_suffix(".json"),
        "suppression_config": models.suppression_weights or SHIPPED_WEIGHTS / "rib-suppression.json",
    }
    out = {name: sha256_file(p) if p.is_file() else "absent" for name, p in files.items()}
    out["suppression_steps"] = str(models.suppression_steps or "model default")
    return out
