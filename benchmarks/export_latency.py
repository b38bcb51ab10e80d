"""Time the delivery of one radiograph's three objects (SC, SEG, SR) to each destination kind.

A real Orthanc (Debian package, DICOMweb plugin, SQLite index, on loopback) receives them by
STOW-RS and by C-STORE; the folder destination writes with fsync. Also timed: the whole export
step a worker runs (``stage_outputs`` + ``export_job`` on a SQLite ledger, one STOW-RS and one
C-STORE destination), and Orthanc's own start and stop (what the test suite pays per server).

The objects are built by ``ribnode.dicom_sr.build_outputs`` without the models (inputs as in
tests/dicom_sr): the RG1 CR chest of pydicom-data (1955x1841, 15 bits) and a 512x512 DX.
A re-send replaces (deterministic UIDs, Orthanc ``OverwriteInstances``), so repeats do not grow
the PACS. Prints a Markdown section; its figures go into the rows of
``docs/benchmarks.md``. Run:

    .venv/bin/python benchmarks/export_latency.py --repeats 7
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from ribnode.config.settings import OutputSettings  # noqa: E402
from ribnode.demo.orthanc import OrthancServer  # noqa: E402
from ribnode.dicom_sr import OutputSet, build_outputs  # noqa: E402
from ribnode.ledger.store import JobState, Ledger  # noqa: E402
from ribnode.node.export import deliver, export_job, stage_outputs  # noqa: E402
from tests.dicom_sr.inputs import model_inputs, synthetic_dx  # noqa: E402
from tests.node.export_helpers import (  # noqa: E402
    cstore,
    export_settings,
    folder,
    make_running_job,
    stow,
)
from tests.peers.fixtures import pydicom_data_dir  # noqa: E402


def median_s(action: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``action`` over ``repeats`` runs after one warm-up."""
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def outputs_for(source: pydicom.Dataset) -> OutputSet:
    segmentation, suppression = model_inputs(source, change=200)
    return build_outputs(source, segmentation, suppression, OutputSettings())


def export_step(work: Path, source: pydicom.Dataset, outputs: OutputSet, pacs: OrthancServer) -> Callable[[], object]:
    """A closure running the worker's export step for a fresh job each call."""
    settings = export_settings(
        work,
        f"sqlite:///{work / 'ledger.sqlite'}",
        [stow("web", pacs.dicomweb_url), cstore("dimse", pacs.dicom_port)],
    )
    ledger = Ledger(settings.ledger.url)

    def run() -> object:
        job_id = make_running_job(ledger, str(source.StudyInstanceUID), generate_uid())
        stage_outputs(job_id, [outputs], settings, ledger)
        report = export_job(job_id, settings, ledger)
        if report.state != JobState.DONE:
            raise RuntimeError(f"export did not finish: {report}")
        return report

    return run


def orthanc_start_stop(work: Path, repeats: int) -> tuple[float, float]:
    starts, stops = [], []
    for i in range(repeats):
        server = OrthancServer(work / f"o{i}")
        t0 = time.perf_counter()
        server.start()
        t1 = time.perf_counter()
        server.stop()
        starts.append(t1 - t0)
        stops.append(time.perf_counter() - t1)
    return statistics.median(starts), statistics.median(stops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sources = {
        "RG1_UNCR CR 1955x1841, 15 bits": pydicom.dcmread(pydicom_data_dir() / "RG1_UNCR.dcm"),
        "synthetic DX 512x512, 12 bits": synthetic_dx(rows=512, columns=512),
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with OrthancServer(work / "pacs") as pacs:
            for label, source in sources.items():
                outputs = outputs_for(source)
                datasets = outputs.datasets()
                size_mb = sum(len(_encode(d)) for d in datasets) / 1e6
                out_folder = folder("local", work / "outbox")
                files = _write_files(datasets, work / "files" / label.split()[0])
                timings = [
                    median_s(lambda: deliver(datasets, out_folder), args.repeats),
                    median_s(lambda: deliver(datasets, stow("web", pacs.dicomweb_url)), args.repeats),
                    median_s(lambda: deliver(datasets, cstore("dimse", pacs.dicom_port)), args.repeats),
                    median_s(lambda: _storescu(files, pacs.dicom_port), args.repeats),
                    median_s(export_step(work / label.split()[0], source, outputs, pacs), args.repeats),
                ]
                rows.append((label, size_mb, *timings))
        start_s, stop_s = orthanc_start_stop(work, max(3, args.repeats // 2))
    _print(rows, start_s, stop_s, args.repeats)
    return 0


def _write_files(datasets: list[pydicom.Dataset], folder_path: Path) -> list[Path]:
    folder_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, dataset in enumerate(datasets):
        paths.append(folder_path / f"{i}.dcm")
        dataset.save_as(paths[-1], enforce_file_format=True)
    return paths


def _storescu(files: list[Path], port: int) -> None:
    """dcmtk storescu of the same files: what any C-STORE client pays at this PACS."""
    import subprocess

    subprocess.run(
        ["storescu", "-R", "-aec", "ORTHANC", "127.0.0.1", str(port), *map(str, files)], check=True, capture_output=True
    )


def _encode(dataset: pydicom.Dataset) -> bytes:
    from io import BytesIO

    with BytesIO() as buffer:
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()


def _print(rows: list[tuple], start_s: float, stop_s: float, repeats: int) -> None:  # type: ignore[type-arg]
    print("## Export: delivering one radiograph's SC + SEG + SR\n")
    print(f"- date: {datetime.date.today().isoformat()}")
    print(f"- machine: 2-core CPU, {cpu_model()} (shared with other jobs while measured)")
    print(f"- command: `.venv/bin/python benchmarks/export_latency.py --repeats {repeats}`")
    print(f"- median of {repeats} runs after one warm-up; Orthanc {_orthanc_version()} on loopback\n")
    print(
        "| source | 3 objects (MB) | folder, fsync (s) | STOW-RS to Orthanc (s) | "
        "C-STORE to Orthanc (s) | dcmtk storescu, same files (s) | "
        "stage + export_job, STOW + C-STORE (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, size_mb, fold, web, dimse, scu, step in rows:
        print(f"| {label} | {size_mb:.1f} | {fold:.3f} | {web:.3f} | {dimse:.3f} | {scu:.3f} | {step:.3f} |")
    print(
        f"\nOrthanc (DICOMweb plugin, empty SQLite index): start until `/system` and the DICOM "
        f"port answer {start_s:.2f} s, clean stop (SIGTERM) {stop_s:.2f} s (median)."
    )


def _orthanc_version() -> str:
    import subprocess

    out = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.split("\n", 1)[0].replace("Orthanc ", "") or "?"


if __name__ == "__main__":
    sys.exit(main())
