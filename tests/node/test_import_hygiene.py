"""``ribnode.node`` (and the Celery plumbing the listener uses, and the QA console it serves)
never imports torch, diffusers or onnxruntime: the listener starts fast and a model bug cannot
take it down."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "onnxruntime")
MODULES = [
    "ribnode.node",
    "ribnode.node.listener",
    "ribnode.ledger.store",
    "ribnode.node.completion",
    "ribnode.node.routing",
    "ribnode.node.spool",
    "ribnode.node.recovery",
    "ribnode.node.cli",
    "ribnode.node.http",
    "ribnode.node.http.app",
    "ribnode.workers.app",
    "ribnode.console.app",
    "ribnode.console.syslog",
    "ribnode.console.cli",
]


def test_node_imports_no_heavy_library() -> None:
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        f"print(','.join(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"heavy modules imported: {result.stdout.strip()}"
