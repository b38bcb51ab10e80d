"""Time ``ribnode.dicom_sr.build_outputs`` (SC + SEG + SR) and writing the three files.

Inputs are made without the models (as in tests/dicom_sr): the real RG1 CR chest of
pydicom-data (1955x1841, 15 bits) and a synthetic 12-bit DX. Prints a Markdown section; its
figures go into the rows of ``docs/benchmarks.md``. Run:

    .venv/bin/python benchmarks/dicom_outputs.py --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from ribnode.config.settings import OutputSettings  # noqa: E402
from ribnode.dicom_sr import build_outputs  # noqa: E402
from tests.dicom_sr.inputs import model_inputs, synthetic_dx  # noqa: E402


def time_case(source: pydicom.Dataset, repeats: int, label: bool) -> tuple[float, float, float]:
    """Median seconds of (build, write, total) after one warm-up run."""
    segmentation, suppression = model_inputs(source, change=200)
    settings = OutputSettings(burned_in_label=label)
    builds, writes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for run in range(repeats + 1):
            start = time.perf_counter()
            outputs = build_outputs(source, segmentation, suppression, settings)
            built = time.perf_counter()
            for kind, dataset in zip(("sc", "seg", "sr"), outputs.datasets()):
                dataset.save_as(Path(folder) / f"{kind}.dcm", enforce_file_format=True)
            written = time.perf_counter()
            if run:
                builds.append(built - start)
                writes.append(written - built)
    build, write = statistics.median(builds), statistics.median(writes)
    return build, write, build + write


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import data_store

    rg1 = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    cases = [
        ("RG1_UNCR CR 1955x1841, 15 bits, MONOCHROME1", pydicom.dcmread(rg1), False),
        ("RG1_UNCR, burned-in label on", pydicom.dcmread(rg1), True),
        ("synthetic DX 2048x2048, 12 bits", synthetic_dx(2048, 2048), False),
        ("synthetic DX 512x512, 12 bits", synthetic_dx(512, 512), False),
    ]
    print("## DICOM outputs (SC + SEG + SR): build and write\n")
    print(f"- date: {datetime.date.today().isoformat()}")
    print(f"- machine: {os.cpu_count()}-core CPU, {cpu_model()} (shared with other jobs while measured)")
    print(f"- command: `.venv/bin/python benchmarks/dicom_outputs.py --repeats {args.repeats}`")
    print(f"- median of {args.repeats} runs after one warm-up; single process, one thread\n")
    print("| source | build_outputs (s) | write 3 files (s) | total (s) |")
    print("|---|---|---|---|")
    for name, source, label in cases:
        build, write, total = time_case(source, args.repeats, label)
        print(f"| {name} | {build:.3f} | {write:.3f} | {total:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
