"""Case-by-case comparison of rib-segmentation runs against a baseline, on the same held-out pairs.

Reads the JSON that ``benchmarks/seg_quality.py --json`` writes for each set of weights and
prints, for every run against the first (the baseline), the mean and median change of the
held-out Dice, on how many cases it is higher, the largest loss and gain, the change of the
mean HD95, and the worst image. A mean difference in Dice says little on 24 cases unless most
cases move the same way; this table shows whether they do.

    .venv/bin/python benchmarks/seg_paired.py BASE.json RUN1.json [RUN2.json ...] [--names base,run1,...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def held_out(path: Path) -> dict:
    """The held-out report of one ``seg_quality.py --json`` file."""
    return json.loads(path.read_text())["held_out"]


def by_case(report: dict) -> dict[str, dict]:
    return {image["case"]: image for image in report["images"]}


def paired_row(name: str, base: dict, run: dict) -> str:
    """One table row: ``run`` against ``base`` on the cases both hold (they must be the same)."""
    a, b = by_case(base), by_case(run)
    if set(a) != set(b):
        raise ValueError(f"{name}: held-out cases differ from the baseline's ({sorted(set(a) ^ set(b))})")
    cases = sorted(a)
    dice = np.array([b[c]["dice"] - a[c]["dice"] for c in cases])
    hd95 = np.array([b[c]["hd95_px"] - a[c]["hd95_px"] for c in cases])
    worst = min(cases, key=lambda c: b[c]["dice"])
    return (f"| {name} | `{run['weights_sha256'][:12]}...` | {run['mean']['dice']:.4f} | {dice.mean():+.4f} | "
            f"{np.median(dice):+.4f} | {int((dice > 0).sum())}/{len(cases)} | {dice.min():+.4f} | "
            f"{dice.max():+.4f} | {run['mean']['hd95_px']:.2f} ({hd95.mean():+.2f}) | "
            f"{worst} {b[worst]['dice']:.3f} |")


def table(paths: list[Path], names: list[str]) -> str:
    reports = [held_out(path) for path in paths]
    base = reports[0]
    lines = [
        f"Baseline: {names[0]} (`{base['weights_sha256'][:12]}...`), held-out mean Dice "
        f"{base['mean']['dice']:.4f}, HD95 {base['mean']['hd95_px']:.2f} px; {base['count']} held-out "
        f"cases, labels `{base['labels']}`.",
        "",
        "| run | weights sha256 | held-out Dice | mean change | median change | cases higher | "
        "largest loss | largest gain | HD95 px (change) | worst image |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [paired_row(name, base, report) for name, report in zip(names[1:], reports[1:])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="seg_quality.py --json files, baseline first")
    parser.add_argument("--names", default=None, help="comma-separated names, one per report")
    args = parser.parse_args()
    if len(args.reports) < 2:
        parser.error("give a baseline and at least one run")
    names = args.names.split(",") if args.names else [path.parent.name or path.stem for path in args.reports]
    if len(names) != len(args.reports):
        parser.error(f"{len(names)} names for {len(args.reports)} reports")
    print(table(args.reports, names))


if __name__ == "__main__":
    main()
