"""Time the whole rib suppression of one radiograph, and its curve against sampling steps.

From a decoded DICOM dataset (the real RG1 CR chest of pydicom-data, 1955x1841, MONOCHROME1,
15 bits) to the full-resolution soft-tissue stored pixels: ``read_radiograph`` + rib
segmentation (``RibSegmenter``) + suppression (``RibSuppressor``: region dilation, working-size
resampling, DDIM sampling with the ONNX denoiser, upsampling, stored-domain subtraction).
Batch 1, after warm-up, median of ``--repeats`` runs, wall and process-CPU seconds (the CPU
figure is less sensitive to other users of a shared machine). Peer in the same run: the torch
backend (diffusers UNet2DModel + DDIMScheduler) with the same threads.

    .venv/bin/python benchmarks/suppression_speed.py --threads 2 --repeats 5 --steps 1 2 4 8 16 32

``--tile 0 128`` times the denoiser on the whole working image (0) and on 128-px windows in the
same run; ``--memory`` adds the peak resident memory of one suppression, measured in a fresh
process per setting (``ru_maxrss``: the whole process, models and image included).
``--rib-median 0 31`` times the suppression without and with the median along the ribs,
``--edge-taper 0 5`` without and with the edge taper.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.preprocess import read_radiograph  # noqa: E402
from ribnode.models.segmentation import RibSegmenter  # noqa: E402
from ribnode.models.suppression import RibSuppressor  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def timed(run: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float, list[float]]:
    """Median wall seconds, median process-CPU seconds, and all wall times of ``run``."""
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), wall


def rg1() -> pydicom.Dataset:
    import data_store

    dataset = pydicom.dcmread(Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm")
    _ = dataset.pixel_array  # decoded once, outside the timed region (metrics guide: "decoded DICOM")
    return dataset


def peak_memory_mb(weights: Path | None, steps: int, tile: int | None, threads: int,
                   median: int | None = None) -> float:
    """Peak resident memory (MB) of a fresh process that segments and suppresses RG1 once."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            "import suppression_speed as s; s.one_run("
            f"{str(weights) if weights else None!r}, {steps}, {tile!r}, {threads}, {median!r})")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1]) / 1024.0


def one_run(weights: str | None, steps: int, tile: int | None, threads: int, median: int | None = None) -> None:
    """Segment and suppress RG1 once; print the process's peak resident memory in KiB."""
    dataset = rg1()
    radiograph = read_radiograph(dataset)
    segmentation = RibSegmenter(threads=threads, device="cpu")(radiograph)
    sup = RibSuppressor(Path(weights) if weights else None, steps=steps, device="cpu", threads=threads, tile_px=tile,
                        rib_median_px_512=median)
    sup(radiograph, segmentation)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, nargs="+", default=[4])
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="skip the torch backend")
    parser.add_argument("--tile", type=int, nargs="+", default=[None],
                        help="denoiser windows in px at the working size (0: whole image; default: the json's)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (onnx, fresh process)")
    parser.add_argument("--rib-median", type=int, nargs="+", default=[None],
                        help="median along the ribs, px at 512 (0: off; default: the json's)")
    parser.add_argument("--edge-taper", type=float, nargs="+", default=[None],
                        help="edge taper reach, px at 512 (0: off; default: the json's); --memory uses the json's")
    args = parser.parse_args()
    dataset = rg1()
    segmenter = RibSegmenter(threads=args.threads, device="cpu")
    print(f"# rib suppression speed, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {platform.machine()}, {cpu_model()}; threads {args.threads}; "
          f"input RG1_UNCR {dataset.Rows}x{dataset.Columns}; command: {' '.join(sys.argv)}\n")
    print("| backend | steps | windows px | rib median px | edge taper px | end to end wall s (median) | CPU s | "
          "read+segment wall s | suppress wall s | peak memory MB | runs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    backends = ["onnx", "torch"] if args.peer else ["onnx"]
    settings = ((s, t, m, e, b) for s in args.steps for t in args.tile for m in args.rib_median
                for e in args.edge_taper for b in backends)
    for steps, tile, median, taper, backend in settings:
        weights = args.weights
        if weights is not None and backend == "torch":
            weights = weights.with_suffix(".pt")
        sup = RibSuppressor(weights, steps=steps, device="cpu", backend=backend, threads=args.threads,
                            tile_px=tile, rib_median_px_512=median, edge_taper_px_512=taper)
        windows = sup.info.parameters["tile_px"] or "whole"
        line = sup.info.parameters["rib_median_line_px_512"] or "off"
        reach = f"{sup.info.parameters['edge_taper_px_512']:g}" if sup.info.parameters["edge_taper_px_512"] else "off"
        memory = (f"{peak_memory_mb(args.weights, steps, tile, args.threads, median):.0f}"
                  if args.memory and backend == "onnx" else "-")

        def whole() -> object:
            radiograph = read_radiograph(dataset)
            return sup(radiograph, segmenter(radiograph))

        radiograph = read_radiograph(dataset)
        segmentation = segmenter(radiograph)
        wall, cpu, runs = timed(whole, args.repeats)
        front, _, _ = timed(lambda: segmenter(read_radiograph(dataset)), args.repeats)
        back, _, _ = timed(lambda: sup(radiograph, segmentation), args.repeats)
        print(f"| {backend} | {steps} | {windows} | {line} | {reach} | {wall:.2f} | {cpu:.2f} | {front:.2f} | {back:.2f} | "
              f"{memory} | {', '.join(f'{r:.2f}' for r in runs)} |", flush=True)


if __name__ == "__main__":
    main()
