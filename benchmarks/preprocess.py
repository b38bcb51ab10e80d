"""Time decoding and preprocessing (``read_radiograph``, ``to_working``, ``to_source``) and the
synthetic generator (``generate_chest``).

Inputs: the real RG1 CR chest of pydicom-data (1955x1841, 15 bits, MONOCHROME1) in three
transfer syntaxes, a synthetic DX 512x512 written to a temporary folder, and the generator at
256, 512 and 1024. Median of ``--repeats`` runs after one warm-up, one process. Prints a
Markdown section; its figures go into the rows of ``docs/benchmarks.md``. Run:

    .venv/bin/python benchmarks/preprocess.py --repeats 7
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.resample import cpu_model  # noqa: E402
from ribnode.models import preprocess  # noqa: E402
from ribnode.phantom import generate_chest, write_dicom_study  # noqa: E402

DATA = Path(pydicom.__file__).parents[1] / "data_store" / "data"


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print("## Preprocessing and the synthetic generator\n")
    print(
        f"- date: {datetime.date.today().isoformat()}; machine: 2-core CPU, {cpu_model()} "
        "(shared with other jobs while measured)"
    )
    print(f"- command: `.venv/bin/python benchmarks/preprocess.py --repeats {args.repeats}`")
    print(f"- median of {args.repeats} runs after one warm-up, one process\n")
    print("| step | input | ms (median) |")
    print("|---|---|---:|")
    rows: list[tuple[str, str, Callable[[], object]]] = []
    for name in ("RG1_UNCR", "RG1_J2KR", "RG1_J2KI"):
        path = DATA / f"{name}.dcm"
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        rows.append(
            (
                "read_radiograph (file -> Radiograph)",
                f"{name}, 1955x1841, {syntax.name}",
                lambda path=path: preprocess.read_radiograph(path),
            )
        )
    rg1 = preprocess.read_radiograph(DATA / "RG1_UNCR.dcm")
    for size in (256, 512):
        rows.append(("to_working", f"RG1 1955x1841 -> {size}", lambda s=size: preprocess.to_working(rg1.image, s)))
        working = preprocess.to_working(rg1.image, size)
        rows.append(
            ("to_source (linear)", f"{size} -> 1955x1841", lambda w=working: preprocess.to_source(w, rg1.shape))
        )
    region = np.zeros(rg1.shape, bool)
    region[400:1500, 200:1600] = True
    layer = np.full(rg1.shape, 0.05, np.float32)
    rows.append(("Radiograph.subtract_layer", "RG1, 1400x1100 region", lambda: rg1.subtract_layer(layer, region)))
    rows.append(("dilate_mask (radius 8)", "RG1 region mask", lambda: preprocess.dilate_mask(region, 8)))
    with tempfile.TemporaryDirectory() as folder:
        [dx] = write_dicom_study(generate_chest(0, 512), Path(folder), 0)
        rows.append(("read_radiograph", "synthetic DX 512x512, 12 bits", lambda: preprocess.read_radiograph(dx)))
        for size in (256, 512, 1024):
            rows.append(("generate_chest", f"{size}x{size}, 2 nodules", lambda s=size: generate_chest(1, s)))
        for step, what, function in rows:
            print(f"| {step} | {what} | {median_seconds(function, args.repeats) * 1000:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
