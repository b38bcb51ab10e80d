"""Held-out Dice of several rib-segmentation weights alone and of their averaged probability.

Each ONNX file runs as ``eval-seg`` runs it (ONNX Runtime, probability brought back to the
512x512 source with ``to_source``). The ensemble averages the members' probabilities on the
source matrix and thresholds the mean at 0.5. The held-out cases are the first file's recorded
split (every member must record the same one). Prints a Markdown table with each member's
change against the first file, case by case. Run:

    .venv/bin/python benchmarks/seg_ensemble.py src/ribnode/models/weights/rib-segmentation.onnx runs/a/rib-segmentation.onnx ...
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.metrics import segmentation_metrics  # noqa: E402
from ribnode.models.segmentation.data import DEFAULT_LABELS, LABEL_DEFINITIONS, case_ids, load_pair  # noqa: E402
from ribnode.models.segmentation.evaluate import select_cases  # noqa: E402
from ribnode.models.segmentation.runtime import RibSegmenter  # noqa: E402
from benchmarks.machine import cpu_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, nargs="+", help="ONNX files; the first is the baseline")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/jsrt-bse-512"))
    parser.add_argument("--labels", choices=LABEL_DEFINITIONS, default=DEFAULT_LABELS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    members = [RibSegmenter(weights=w, device="cpu", threads=args.threads) for w in args.weights]
    held = select_cases(case_ids(args.data), "held-out", members[0].config)
    for member in members[1:]:
        if select_cases(case_ids(args.data), "held-out", member.config) != held:
            raise SystemExit(f"{member.weights}: records another held-out split")
    names = [f"{i + 1}: `{w}`" for i, w in enumerate(args.weights)] + [f"mean of the {len(members)}"]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for case in held:
        pair = load_pair(args.data, case, labels=args.labels)
        probabilities = [m.segment_image(pair.radiograph).probability for m in members]
        for name, probability in zip(names, probabilities + [np.mean(probabilities, axis=0)]):
            rows[name].append({"case": case, **segmentation_metrics(probability >= 0.5, pair.mask)})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    base = np.array([r["dice"] for r in rows[names[0]]])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### Rib segmentation ensemble ({now})\n")
    print(f"Machine: 2-core CPU, {cpu_model()}, ONNX Runtime CPU, {args.threads} threads; "
          f"{len(held)} held-out cases, `{args.labels}` labels.  ")
    print(f"Command: `.venv/bin/python benchmarks/seg_ensemble.py {' '.join(sys.argv[1:])}`\n")
    print("| weights | sha256 | held-out Dice | mean change | cases higher | HD95 px | worst image |")
    print("|---|---|---|---|---|---|---|")
    shas = [m.info.weights_sha256[:12] + "..." for m in members] + ["-"]
    for name, sha in zip(names, shas):
        dice = np.array([r["dice"] for r in rows[name]])
        worst = min(rows[name], key=lambda r: r["dice"])
        print(f"| {name} | `{sha}` | {dice.mean():.4f} | {dice.mean() - base.mean():+.4f} | "
              f"{int((dice > base).sum())}/{len(dice)} | {np.mean([r['hd95_px'] for r in rows[name]]):.2f} | "
              f"{worst['case']} {worst['dice']:.3f} |")


if __name__ == "__main__":
    main()
