"""The runtime (``ribnode``) never imports torch, diffusers or the lab: ``pip install ribnode``
needs neither, and the models run on ONNX Runtime and numpy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "ribnode"
FORBIDDEN = ("torch", "diffusers", "ribnode_lab")


def test_no_runtime_module_imports_torch_diffusers_or_the_lab() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            offenders += [f"{path.relative_to(SRC)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_the_pipeline_runs_without_loading_torch_or_diffusers(tiny_models: dict) -> None:
    code = (
        "import sys, numpy as np\n"
        "from ribnode.config.settings import ModelSettings\n"
        "from ribnode.models.pipeline import RibPipeline\n"
        "from ribnode.phantom import generate_chest\n"
        "from ribnode.models.preprocess import read_png\n"
        f"settings = ModelSettings(segmentation_weights={str(tiny_models['segmentation'])!r}, "
        f"suppression_weights={str(tiny_models['suppression'])!r}, intra_op_threads=1)\n"
        "pipeline = RibPipeline(settings)\n"
        "image = generate_chest(1, 128).radiograph\n"
        "pipeline.suppressor.estimate(image, 0)\n"
        "print(','.join(sorted(m for m in ('torch', 'diffusers', 'ribnode_lab') if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
