"""Time the rib segmentation under ONNX Runtime (and the same network in torch, as a peer).

Two figures, batch 1, after warm-up, median of ``--repeats`` runs:
  * network at the working resolution (``RibSegmenter.predict_working`` on a working-size
    image: normalisation + ORT run + sigmoid), ORT with ``--threads`` intra-op threads;
  * end to end from a decoded DICOM dataset (the real RG1 CR chest of pydicom-data,
    1955x1841, MONOCHROME1) to the mask on the source matrix (``read_radiograph`` + resample
    to working size + network + resample back + threshold).
The peer is the same trained network in torch eager mode with the same thread count (the
ratio holds across machines, an absolute time does not). Prints a Markdown section for
``docs/benchmarks/segmentation.md``. Run:

    .venv/bin/python benchmarks/seg_speed.py --threads 2 --repeats 20
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ribnode.models.preprocess import read_radiograph  # noqa: E402
from ribnode.models.segmentation import RibSegmenter  # noqa: E402
from ribnode.models.segmentation.normalisation import normalise, to_working  # noqa: E402
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 3
                   ) -> tuple[float, list[float], float]:
    """Median wall-clock seconds of ``run`` after ``warmup`` untimed calls, all wall times, and
    the median process CPU seconds (all threads; less sensitive to other users of the CPU)."""
    for _ in range(warmup):
        run()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), times, statistics.median(cpu)


def rg1_dataset() -> pydicom.Dataset:
    """The real Philips CR chest (uncompressed) from pydicom-data, decoded once."""
    import data_store

    path = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    dataset = pydicom.dcmread(path)
    _ = dataset.pixel_array  # decode outside the timed region's first call
    return dataset


def torch_peer(segmenter: RibSegmenter, threads: int) -> Callable[[np.ndarray], object] | None:
    """The same (shipped) network rebuilt in torch eager mode, or None without torch."""
    try:
        import torch

        from ribnode.models.segmentation.export import unet_from_onnx
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model = unet_from_onnx(segmenter.weights)

    def run(image: np.ndarray) -> object:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(normalise(image)[None, None])))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--weights", type=Path, default=None)
    args = parser.parse_args()

    segmenter = RibSegmenter(weights=args.weights, device="cpu", threads=args.threads)
    size = segmenter.working_size
    dataset = rg1_dataset()
    working = to_working(read_radiograph(dataset).image, size)

    net, net_all, net_cpu = median_seconds(lambda: segmenter.predict_working(working), args.repeats)
    e2e, e2e_all, e2e_cpu = median_seconds(lambda: segmenter(read_radiograph(dataset)),
                                           max(5, args.repeats // 4))
    peer = torch_peer(segmenter, args.threads)
    peer_s, _, peer_cpu = (median_seconds(lambda: peer(working), args.repeats) if peer
                           else (float("nan"), [], float("nan")))
    load_end = os.getloadavg()[0]

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    print(f"### Rib segmentation speed ({now})\n")
    print(f"Machine: {os.cpu_count()}-core CPU, {cpu_model()}; ONNX Runtime "
          f"{__import__('onnxruntime').__version__}, {args.threads} intra-op threads, CPU provider; "
          f"load average at start {load[0]:.2f} (the machine is shared).  ")
    print(f"Weights: `{segmenter.weights.name}` sha256 `{segmenter.info.weights_sha256[:16]}...`, "
          f"working resolution {size}x{size}, batch 1, median of {args.repeats} runs after 3 warm-up runs.  ")
    print(f"Command: `.venv/bin/python benchmarks/seg_speed.py --threads {args.threads} "
          f"--repeats {args.repeats}`\n")
    print("| what | median wall s | min wall s | max wall s | median CPU s (all threads) |")
    print("|---|---|---|---|---|")
    print(f"| network at {size}x{size} (ORT, normalise + run + sigmoid) | {net:.4f} | "
          f"{min(net_all):.4f} | {max(net_all):.4f} | {net_cpu:.4f} |")
    print(f"| RG1 CR 1955x1841: decoded dataset -> mask on source matrix (ORT) | {e2e:.4f} | "
          f"{min(e2e_all):.4f} | {max(e2e_all):.4f} | {e2e_cpu:.4f} |")
    print(f"| peer: same network in torch eager, {args.threads} threads, {size}x{size} | "
          f"{peer_s:.4f} | | | {peer_cpu:.4f} |")
    print(f"\nLoad average at the end: {load_end:.2f}.")
    if peer:
        print(f"\nORT / torch time ratio at working size: {net / peer_s:.2f}.")


if __name__ == "__main__":
    main()
