"""Assemble docs/benchmarks.md from the section files that each benchmark script writes.

Each script under ``benchmarks/`` writes its own measured section to ``docs/benchmarks/<topic>.md``
with the date, the machine and the command. This script only concatenates them, in the order
of the data path, below a summary table whose every figure is copied from a section file (the
section is named in the table). It measures nothing itself.

usage: .venv/bin/python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ROOT / "docs" / "benchmarks"
SUMMARY = SECTIONS / "summary.md"
ORDER = [
    "ingest",
    "completion",
    "preprocessing",
    "resample",
    "segmentation",
    "suppression",
    "dicom-outputs",
    "export",
    "e2e",
]
HEADER = """# ribnode benchmarks

Every figure below is a measurement made by a script in `benchmarks/`; each section states its
date, machine and command. This file is assembled by `benchmarks/collect.py` from the section
files in `docs/benchmarks/` (edit those, or re-run their scripts, then re-run `collect.py`).
No GPU was lent to the work measured here, so there are no GPU figures yet.

"""


def assemble() -> str:
    parts = [HEADER]
    if SUMMARY.is_file():
        parts.append(SUMMARY.read_text().strip() + "\n\n")
    names = ORDER + sorted(
        p.stem for p in SECTIONS.glob("*.md") if p.stem not in ORDER and p != SUMMARY
    )
    for name in names:
        path = SECTIONS / f"{name}.md"
        if path.is_file():
            parts.append(f"<!-- from docs/benchmarks/{name}.md -->\n")
            parts.append(path.read_text().strip() + "\n\n")
    return "".join(parts).rstrip() + "\n"


def main() -> None:
    (ROOT / "docs" / "benchmarks.md").write_text(assemble())


if __name__ == "__main__":
    main()
