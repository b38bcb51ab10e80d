"""STOW-RS ingest throughput: ribnode's DICOMweb service vs Orthanc's own STOW-RS (issue 27).

The same N synthetic DX chest instances (``benchmarks/ingest.py``'s ``make_instances``) are
stored by the same client, dicomweb-client's ``store_instances``, in requests of ``--batch``
instances, one after the other, into

* ``ribnode serve --no-dimse --http-port`` (own process; each instance fsynced and renamed into
  the spool, recorded in the SQLite WAL ledger, before the response), and
* Orthanc (Debian package, DICOMweb plugin, SQLite index, storage on disk,
  ``SyncStorageArea: true``, i.e. fsync too).

Each run starts both servers afresh (interleaved: ribnode, Orthanc); we time from the first
request to the last response and report instances/s, the median of ``--runs``, and the ratio.

Usage::

    .venv/bin/python benchmarks/stow_ingest.py --instances 240 --size 512 --batch 10 --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import yaml
from dicomweb_client.api import DICOMwebClient
from ingest import RIBNODE, make_instances, wait_port  # noqa: E402  (benchmarks/ingest.py)
from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from ribnode.demo.orthanc import OrthancServer, free_port

TOKEN = "bench-token"


def store_all(client: DICOMwebClient, datasets: list[pydicom.Dataset], batch: int) -> float:
    """Store every dataset in requests of ``batch``; seconds from first request to last answer."""
    start = time.perf_counter()
    for i in range(0, len(datasets), batch):
        answer = client.store_instances(datasets[i : i + batch])
        if answer.get("FailedSOPSequence"):
            raise RuntimeError(f"instances refused: {answer.FailedSOPSequence}")
    return time.perf_counter() - start


def ribnode_rate(datasets: list[pydicom.Dataset], folder: Path, batch: int) -> float:
    """Instances/s into a fresh ``ribnode serve --no-dimse --http-port``."""
    folder.mkdir(parents=True)
    port = free_port()
    config = folder / "ribnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "http": {"senders": [{"name": "BENCH", "bearer_token": TOKEN}]},
                "spool": {"directory": str(folder / "spool"), "quiet_period_s": 3600},
                "ledger": {"url": f"sqlite:///{folder / 'ledger.sqlite'}"},
                "broker": {"url": "filesystem://", "folder": str(folder / "broker")},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "RIBNODE_CONFIG"}
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen(
        [*RIBNODE, "--config", str(config), "--log-level", "WARNING", "serve", "--no-dimse", "--http-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_port(port)
        client = DICOMwebClient(f"http://127.0.0.1:{port}/dicom-web", headers={"Authorization": f"Bearer {TOKEN}"})
        rate = len(datasets) / store_all(client, datasets, batch)
        stored = len(list((folder / "spool").glob("*/*.dcm")))
        if stored != len(datasets):
            raise RuntimeError(f"ribnode spooled {stored} of {len(datasets)} instances")
        return rate
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def orthanc_rate(datasets: list[pydicom.Dataset], folder: Path, batch: int) -> float:
    """Instances/s into a fresh Orthanc's STOW-RS."""
    pacs = OrthancServer(folder, extra_config={"SyncStorageArea": True})
    pacs.start()
    try:
        rate = len(datasets) / store_all(DICOMwebClient(pacs.dicomweb_url), datasets, batch)
        stored = len(pacs.instances())
        if stored != len(datasets):
            raise RuntimeError(f"Orthanc stored {stored} of {len(datasets)} instances")
        return rate
    finally:
        pacs.stop()
        shutil.rmtree(folder, ignore_errors=True)


def report(
    args: argparse.Namespace, rates: dict[str, list[float]], load: tuple[float, float, float], size_mb: float
) -> str:
    rib, orth = statistics.median(rates["ribnode"]), statistics.median(rates["orthanc"])
    version = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True).stdout.split()[1]
    return "\n".join(
        [
            f"## STOW-RS ingest throughput, {args.size}x{args.size} instances (issue 27)",
            "",
            f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
            f"- Machine: {os.cpu_count()}-core CPU, {cpu_model()}; Python {platform.python_version()}; "
            f"Orthanc {version}",
            f"- Load average when the benchmark started: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
            f"- Command: `.venv/bin/python benchmarks/stow_ingest.py --instances {args.instances} --size {args.size} "
            f"--batch {args.batch} --runs {args.runs}`",
            f"- Data: {args.instances} synthetic DX chest instances, {args.size}x{args.size} 12-bit "
            f"(uncompressed, {size_mb:.2f} MB each); dicomweb-client `store_instances`, {args.batch} per request, "
            "loopback.",
            "- ribnode: `ribnode serve --no-dimse --http-port` (own process), SQLite WAL ledger, each part "
            "streamed to the spool, fsynced and renamed before the response. Orthanc: Debian package, "
            "DICOMweb plugin, SQLite index, `SyncStorageArea: true`; runs interleaved.",
            "",
            "| | runs (instances/s) | median instances/s |",
            "|---|---|---|",
            f"| ribnode STOW-RS | {', '.join(f'{r:.1f}' for r in rates['ribnode'])} | **{rib:.1f}** |",
            f"| Orthanc STOW-RS | {', '.join(f'{r:.1f}' for r in rates['orthanc'])} | **{orth:.1f}** |",
            "",
            f"Ratio ribnode / Orthanc (medians, both fsync): **{rib / orth:.2f}** (target >= 1.0).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=240)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each instance")
    parser.add_argument("--batch", type=int, default=10, help="instances per STOW-RS request")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    args = parser.parse_args()
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ribnode-stow-bench-"))
    try:
        files = make_instances(work / "data", args.instances, args.size)
        size_mb = files[0].stat().st_size / 1e6
        datasets = [pydicom.dcmread(f) for f in files]
        rates: dict[str, list[float]] = {"ribnode": [], "orthanc": []}
        for run in range(args.runs):
            rates["ribnode"].append(ribnode_rate(datasets, work / f"ribnode-{run}", args.batch))
            rates["orthanc"].append(orthanc_rate(datasets, work / f"orthanc-{run}", args.batch))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(args, rates, load, size_mb)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
