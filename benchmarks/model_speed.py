"""Speed of the two shipped models, as ``../shared/guides/metrics.md`` asks: seconds per radiograph,
batch 1, after a warm-up, median of N runs, on the stated threads and device.

- RG1 (1955x1841, pydicom-data), from the decoded DICOM dataset to the full-resolution
  bone-suppressed array and masks (segmentation + suppression, the worker's path), at each
  refiner step count asked for;
- the segmentation network alone at its working size (issue 24: <= 0.3 s on 2 threads);
- the suppression's parts: estimator, one refiner step.

usage: .venv/bin/python benchmarks/model_speed.py [--threads 2] [--runs 5] [--steps 1 2 4] [--device cpu]
Prints JSON with the date, machine and command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def timed(function, runs: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    function()  # warm-up
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[1])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    args = parser.parse_args()
    import data_store
    import pydicom

    from ribnode.models.preprocess import read_radiograph, to_working
    from ribnode.models.segmentation import RibSegmenter
    from ribnode.models.suppression import RibSuppressor

    dataset = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm")
    radiograph = read_radiograph(dataset)
    segmenter = RibSegmenter(device=args.device, threads=args.threads)
    load = os.getloadavg()
    out: dict = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "command": "benchmarks/model_speed.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "device": args.device,
        "providers": segmenter.providers,
        "source": f"RG1_UNCR {radiograph.shape[0]}x{radiograph.shape[1]}",
    }
    working = np.asarray(to_working(radiograph.image, segmenter.working_size))
    out["segmentation_network_working_size"] = timed(lambda: segmenter.predict_working(working), args.runs)
    out["rg1_end_to_end"] = {}
    for steps in args.steps:
        suppressor = RibSuppressor(steps=steps, device=args.device, threads=args.threads)

        def run() -> None:
            segmentation = segmenter(read_radiograph(dataset))
            suppressor(radiograph, segmentation)

        out["rg1_end_to_end"][f"{steps} step(s)"] = timed(run, args.runs)
    image = radiograph.image
    out["estimator_only"] = timed(lambda: suppressor.estimate(image, 0, refine=False), args.runs)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
