"""Trial-by-trial comparison of two lesion-retention runs made on the same placements.

``eval-lesions`` draws its placements from ``--seed`` and the rib masks only, never from the
model, so two runs with the same data, ``--cases/--skip/--limit/--placements/--mask/--seed``
place the same nodules in the same order (a run with a smaller ``--limit`` places the same
ones on its cases). This pairs their trials on the cases both runs hold, by order (and checks
that case, location, radius and contrast agree), and prints, per location and radius, the mean
retention of each run, how many trials run B kept more of, and the largest spurious change.

    .venv/bin/python benchmarks/lesions_paired.py A-part1.json A-part2.json -- B-part1.json B-part2.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def trials(paths: list[str]) -> list[dict]:
    return [t for path in paths for t in json.loads(Path(path).read_text())["trials"]]


def shared_cases(a: list[dict], b: list[dict]) -> tuple[list[dict], list[dict]]:
    """Both runs' trials on the cases they share (a run cut short with a smaller ``--limit``
    draws the same placements for its cases as the longer run)."""
    common = {t["case_id"] for t in a} & {t["case_id"] for t in b}
    return [t for t in a if t["case_id"] in common], [t for t in b if t["case_id"] in common]


def paired_table(a: list[dict], b: list[dict], names: tuple[str, str] = ("A", "B")) -> str:
    a, b = shared_cases(a, b)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} trials against {len(b)}: not the same placements")
    keys = ("case_id", "location", "radius", "contrast")
    for i, (x, y) in enumerate(zip(a, b)):
        if any(x[k] != y[k] for k in keys):
            raise ValueError(f"trial {i} differs ({[x[k] for k in keys]} against {[y[k] for k in keys]}): "
                             "not the same placements")
    groups: dict[tuple[str, float], list[int]] = {}
    for i, t in enumerate(a):
        groups.setdefault((t["location"], t["radius"]), []).append(i)
    ra, rb = np.array([t["retention"] for t in a]), np.array([t["retention"] for t in b])
    sa, sb = np.array([t["spurious"] for t in a]), np.array([t["spurious"] for t in b])
    lines = [f"| location | r (px at 512) | trials | retention {names[0]} mean | retention {names[1]} mean | "
             f"{names[1]} - {names[0]} mean | {names[1]} keeps more | spurious max {names[0]} | spurious max {names[1]} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for location, radius in sorted(groups, key=lambda k: (k[0] != "rib", k[1])):
        idx = np.array(groups[(location, radius)])
        lines.append(f"| {location} | {radius:g} | {len(idx)} | {ra[idx].mean():.4f} | {rb[idx].mean():.4f} | "
                     f"{(rb[idx] - ra[idx]).mean():+.4f} | {int((rb[idx] > ra[idx]).sum())} of {len(idx)} | "
                     f"{sa[idx].max():.4f} | {sb[idx].max():.4f} |")
    rib = np.array([t["location"] == "rib" for t in a])
    lines.append(f"\n{len({t['case_id'] for t in a})} radiographs. rib trials: {names[1]} keeps more in {int((rb[rib] > ra[rib]).sum())} of {int(rib.sum())}; "
                 f"lowest single rib trial {ra[rib].min():.3f} ({names[0]}) and {rb[rib].min():.3f} ({names[1]}); "
                 f"spurious change over the 0.005 target: {int((sa > 0.005).sum())} trials ({names[0]}), "
                 f"{int((sb > 0.005).sum())} ({names[1]}) of {len(a)}")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--" not in args:
        raise SystemExit(__doc__)
    cut = args.index("--")
    print(paired_table(trials(args[:cut]), trials(args[cut + 1:])))
