"""Means of ``eval-suppression --json`` figures over the cases the segmenter also held out.

The segmenter (``rib-segmentation.json``) and the suppression use different splits; this
restricts an evaluation to the cases held out by both, for a fully held-out end-to-end figure.

    .venv/bin/python benchmarks/suppression_subset.py var/bench-suppression/eval-diffusion.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "ribnode" / "models" / "weights"


def main() -> None:
    report = json.loads(Path(sys.argv[1]).read_text())
    held = set(json.loads((WEIGHTS / "rib-segmentation.json").read_text())["training"]["split"]["held_out"])
    for source in ("reference", "segmenter"):
        if source not in report:
            continue
        rows = [r for r in report[source]["images"] if r["case_id"] in held]
        figures = {k: float(np.mean([r["figures"][k] for r in rows]))
                   for k in ("bsr", "psnr_gain_db", "ssim", "outside_mask_change", "outside_model_region")}
        print(f"{source}: {len(rows)} cases {[r['case_id'] for r in rows]}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
