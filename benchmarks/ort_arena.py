"""ONNX Runtime CPU memory arena against speed and memory, on the shipped rib-suppression denoiser.

One process per setting (so resident memory is the setting's own): the denoiser alone at the
working grid, batch 1, random input, timestep 0, ``--calls`` calls, median of all but the first.
Settings: ``off`` (the shipped ``enable_cpu_mem_arena = False``), ``on`` (ORT's default), and
``shrink`` (arena on, shrunk after every run by the run option
``memory.enable_memory_arena_shrinkage = cpu:0``). Prints a Markdown table. Run:

    .venv/bin/python benchmarks/ort_arena.py --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model  # noqa: E402
from ribnode.models.suppression.runtime import DEFAULT_ONNX as WEIGHTS  # noqa: E402
SETTINGS = {
    "off": "arena off (shipped)",
    "on": "arena on",
    "shrink": "arena on, shrunk after every run (`memory.enable_memory_arena_shrinkage = cpu:0`)",
}


def resident_gb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def measure(setting: str, threads: int, calls: int) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = setting != "off"
    session = ort.InferenceSession(str(WEIGHTS), options, providers=["CPUExecutionProvider"])
    run_options = ort.RunOptions()
    if setting == "shrink":
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    shape = [d if isinstance(d, int) else 512 for d in session.get_inputs()[0].shape]
    shape[0] = 1
    sample = np.random.default_rng(0).random(shape, dtype=np.float32)
    timestep = np.zeros(1, np.int64)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        session.run(["bone"], {"sample": sample, "timestep": timestep}, run_options)
        seconds.append(time.perf_counter() - start)
    return {"median_s": float(np.median(seconds[1:])), "resident_gb": resident_gb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--one", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.threads, args.calls)))
        return 0
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"##### ORT CPU memory arena, {stamp}")
    print(f"machine: {cpu_model()}; {args.threads} threads; denoiser {WEIGHTS.name} at its "
          f"working grid, batch 1; median of {args.calls - 1} calls after one; command: "
          f"benchmarks/ort_arena.py --threads {args.threads} --calls {args.calls}\n")
    print("| ORT CPU memory | median s per call | resident memory after the calls |")
    print("|---|---|---|")
    for setting, label in SETTINGS.items():
        out = subprocess.run([sys.executable, __file__, "--one", setting, "--threads", str(args.threads),
                              "--calls", str(args.calls)], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {label} | {result['median_s']:.2f} | {result['resident_gb']:.2f} GB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
