"""Markdown table of an ``eval-lesions --json`` file: one row per location and radius, one
column per contrast (mean retention, lowest single placement in brackets), and the largest
spurious change of the row. Used for docs/benchmarks/suppression.md.

    .venv/bin/python benchmarks/lesions_table.py var/bench-suppression/lesions-diffusion.json
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


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(table(json.loads(Path(path).read_text())))
