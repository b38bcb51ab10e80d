"""Markdown table of an ``eval-lesions --json`` file: one row per location and radius, one
column per contrast (mean retention, lowest single placement in brackets), and the largest
spurious change of the row. Used for docs/benchmarks/suppression.md.

    .venv/bin/python benchmarks/lesions_table.py var/bench-suppression/lesions-diffusion.json
    .venv/bin/python benchmarks/lesions_table.py --merge part1.json part2.json   # runs split by --skip
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(report: dict) -> str:
    cells = report["cells"]
    contrasts = sorted({c["contrast"] for c in cells})
    rows: dict[tuple[str, float], dict[float, dict]] = {}
    for cell in cells:
        rows.setdefault((cell["location"], cell["radius_512"]), {})[cell["contrast"]] = cell
    head = ("| location | r (px at 512) | n per contrast | "
            + " | ".join(f"retention c={c:g} mean (min)" for c in contrasts) + " | spurious max |")
    lines = [head, "|" + "---|" * (4 + len(contrasts))]
    order = sorted(rows, key=lambda k: (k[0] != "rib", k[1]))
    for location, radius in order:
        by_c = rows[(location, radius)]
        n = int(next(iter(by_c.values()))["n"])
        values = " | ".join(f"{by_c[c]['retention_mean']:.3f} ({by_c[c]['retention_min']:.3f})" for c in contrasts)
        spurious = max(v["spurious_max"] for v in by_c.values())
        lines.append(f"| {location} | {radius:g} | {n} | {values} | {spurious:.4f} |")
    lowest = min(c["retention_mean"] for c in cells)
    worst_spurious = max(c["spurious_max"] for c in cells)
    lines.append(f"\nlowest mean retention {lowest:.3f}; largest spurious change {worst_spurious:.4f}")
    return "\n".join(lines)


def merged(reports: list[dict]) -> dict:
    """One report from several ``eval-lesions --json`` runs over disjoint cases (``--skip``):
    the cells are summarised again from the runs' single trials."""
    from ribnode.models.suppression.lesions import LesionTrial, summarise

    trials = [LesionTrial(**t) for report in reports for t in report["trials"]]
    seen: set[str] = set()
    for report in reports:
        ids = {t["case_id"] for t in report["trials"]}
        if ids & seen:
            raise ValueError(f"the runs share cases {sorted(ids & seen)}: merge runs over disjoint cases only")
        seen |= ids
    cells = [{"location": k[0], "radius_512": k[1], "contrast": k[2], **v} for k, v in summarise(trials).items()]
    return {"cells": cells, "trials": [vars(t) for t in trials], "cases": sorted(seen)}


if __name__ == "__main__":
    paths = [a for a in sys.argv[1:] if a != "--merge"]
    reports = [json.loads(Path(path).read_text()) for path in paths]
    if "--merge" in sys.argv[1:]:
        print(table(merged(reports)))
    else:
        for report in reports:
            print(table(report))
