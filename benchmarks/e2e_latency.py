"""End-to-end latency of one chest radiograph: from the instance stored at ribnode to the three
objects (SC, SEG, SR) stored in the PACS.

Real processes on loopback, as deployed: a stock Orthanc (Debian package, DICOMweb plugin)
is the PACS; ``ribnode serve`` and ``ribnode worker`` run as separate processes sharing one
YAML settings file (SQLite ledger, the chosen broker); ribnode's export destination is that
Orthanc by STOW-RS. Each run, Orthanc sends a new study (fresh UIDs) to ribnode by C-STORE.

- start: the ledger's ``received_at`` of the instance (written once the instance is durable in
  the spool, before the C-STORE success goes back);
- end: the moment this script sees all three AI objects in Orthanc (polled every 50 ms over
  Orthanc's REST API, so the figure is an upper bound by at most one poll);
- breakdown from the ledger: quiet period + completion (instance stored -> job created),
  enqueue + broker pick-up (-> running), models + objects (-> exporting), delivery (-> done).

The first job of a worker loads the models (cold); it is reported apart and excluded from the
median. Sources: the RG1 CR chest of pydicom-data (1955x1841, MONOCHROME1) and a synthetic DX
chest (``ribnode.phantom``). Prints a Markdown section; its figures go into the rows of
``docs/benchmarks.md``:

    .venv/bin/python benchmarks/e2e_latency.py --runs 3
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import cpu_model  # noqa: E402  (benchmarks/machine.py)

from ribnode.config.settings import Settings, load_settings  # noqa: E402
from ribnode.demo.orthanc import OrthancServer, free_port  # noqa: E402
from ribnode.demo.run import DEMO_AE, demo_routing, start_node, write_config  # noqa: E402
from ribnode.ledger.store import Ledger  # noqa: E402

POLL_S = 0.05
# received -> running is one phase: with Redis the worker may start the job before the
# dispatcher has written "queued" (it publishes, then records), so "queued" can be absent.
PHASES = (
    ("quiet period + completion", "stored", "received"),
    ("enqueue + broker pick-up", "received", "running"),
    ("models + objects", "running", "exporting"),
    ("delivery", "exporting", "done"),
)


@dataclass
class Run:
    """One study's timings, seconds."""

    source: str
    cold: bool
    total: float
    phases: dict[str, float]


def node_settings(work: Path, pacs: OrthancServer, args: argparse.Namespace) -> Settings:
    """Product defaults except the paths, port, broker and quiet period under test."""
    overrides: dict[str, Any] = {
        "var_dir": str(work),
        "listener.port": free_port(),
        "listener.allowed_senders": [{"ae_title": pacs.ae_title}, {"ae_title": DEMO_AE}],
        "spool.directory": str(work / "spool"),
        "spool.quiet_period_s": args.quiet_period,
        "ledger.url": f"sqlite:///{work / 'ledger.sqlite'}",
        "broker.url": args.broker_url,
        "broker.folder": str(work / "broker"),
        "routing.rules": demo_routing(),  # the synthetic source says SyntheticData YES
        "export.staging_dir": str(work / "outputs"),
        "export.destinations": [{"name": "pacs", "kind": "stow", "url": pacs.dicomweb_url}],
        "models.suppression_steps": args.steps,
    }
    return load_settings(overrides=overrides)


def fresh_copy(path: Path, out: Path, index: int) -> Path:
    """The source with new Study/Series/SOP Instance UIDs (a new study for every run)."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target = out / f"{path.stem}-{index}.dcm"
    ds.save_as(target, enforce_file_format=True)
    return target


def sources(work: Path, size: int) -> dict[str, Path]:
    import data_store

    from ribnode.phantom import generate_chest, write_dicom_study

    rg1 = Path(data_store.__file__).parent / "data" / "RG1_UNCR.dcm"
    [synthetic] = write_dicom_study(generate_chest(7, size), work / "synthetic", 7)
    return {"RG1 CR 1955x1841": rg1, f"synthetic DX {size}x{size}": synthetic}


def ai_instances(pacs: OrthancServer, study_uid: str) -> int:
    """How many AI objects Orthanc holds in the study (series other than the source's)."""
    series = pacs.series_of_study(study_uid)
    return sum(len(s["Instances"]) for s in series if s["MainDicomTags"].get("SeriesDescription", "").startswith("AI "))


def one_run(pacs: OrthancServer, ledger: Ledger, path: Path, label: str, cold: bool, timeout_s: float) -> Run:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
    oid = pacs.upload(path)
    pacs.send_to_modality("RIBNODE", [oid])
    deadline = time.monotonic() + timeout_s
    while ai_instances(pacs, study_uid) < 3:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: the three objects did not reach Orthanc in {timeout_s} s")
        time.sleep(POLL_S)
    end = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    instance = ledger.instance(sop_uid)
    while ledger.job(instance.job_id).state != "done":  # "done" is written just after delivery
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: job {instance.job_id} is {ledger.job(instance.job_id).state}")
        time.sleep(POLL_S)
    at = {t.to_state: t.at for t in ledger.transitions(instance.job_id)}
    at["stored"] = instance.received_at
    phases = {name: (at[b] - at[a]).total_seconds() for name, a, b in PHASES}
    return Run(label, cold, (end - instance.received_at).total_seconds(), phases)


@contextmanager
def claimed_redis_db(base: str = "redis://127.0.0.1:6379") -> Iterator[str]:
    """A Redis database 1-15 claimed the way the test suite claims one (``SET NX`` on the
    same key, so concurrent test runs leave it alone), flushed before and after."""
    import redis

    token = f"e2e-latency-{uuid.uuid4().hex}"
    for db in range(15, 0, -1):
        conn = redis.Redis.from_url(f"{base}/{db}")
        try:
            if not conn.set("ribnode:test-claim", token, nx=True, ex=900):
                continue
            conn.flushdb()
            conn.set("ribnode:test-claim", token, ex=900)
            yield f"{base}/{db}"
            conn.flushdb()
            return
        finally:
            conn.close()
    raise RuntimeError("every Redis database 1-15 is claimed; try again later")


def runs(args: argparse.Namespace, work: Path) -> Iterator[Run]:
    with ExitStack() as stack:
        args.broker_arg = args.broker_url
        if args.broker_url == "redis":
            args.broker_url = stack.enter_context(claimed_redis_db())
        pacs = stack.enter_context(OrthancServer(work / "orthanc"))
        settings = node_settings(work / "node", pacs, args)
        (work / "node").mkdir(parents=True, exist_ok=True)
        config = write_config(settings, work / "node" / "ribnode.yaml")
        start_node(stack, config, work, settings.listener.port)
        pacs.add_modality("RIBNODE", settings.listener.ae_title, "127.0.0.1", settings.listener.port)
        ledger = Ledger(settings.ledger.url)
        cold = True
        for label, path in sources(work, args.size).items():
            for index in range(args.runs + (1 if cold else 0)):
                run = one_run(pacs, ledger, fresh_copy(path, work, index), label, cold, args.timeout)
                cold = False
                yield run


def report(results: list[Run], args: argparse.Namespace, seconds: float) -> str:
    quiet = args.quiet_period
    lines = [
        "## End-to-end latency (issue 5)",
        "",
        f"- Date: {datetime.date.today().isoformat()}; machine: 2-core CPU, {cpu_model()}; no GPU.",
        f"- Command: `.venv/bin/python benchmarks/e2e_latency.py --runs {args.runs} "
        f"--quiet-period {quiet:g}{'' if args.steps is None else f' --steps {args.steps}'} "
        f"--broker-url {args.broker_arg}` "
        f"({seconds:.0f} s in all).",
        "- From the instance stored at ribnode (ledger `received_at`) to all three objects stored "
        "in Orthanc (polled every 50 ms). `ribnode serve` and `ribnode worker` as separate "
        f"processes, broker `{args.broker_url}`, STOW-RS to a stock Orthanc, "
        f"{'the model' + chr(39) + 's default' if args.steps is None else args.steps} sampling steps, "
        "product defaults otherwise.",
        f"- Target: quiet period + 10 s = {quiet + 10:g} s or less.",
        "",
        "| source | runs | total, median (min-max) | total minus quiet period | "
        + " | ".join(name for name, _, _ in PHASES)
        + " |",
        "|---|---|---|---|" + "---|" * len(PHASES),
    ]
    for label in dict.fromkeys(r.source for r in results):
        warm = [r for r in results if r.source == label and not r.cold]
        totals = [r.total for r in warm]
        med = statistics.median(totals)
        cells = [f"{statistics.median(r.phases[name] for r in warm):.2f} s" for name, _, _ in PHASES]
        lines.append(
            f"| {label} | {len(warm)} | {med:.2f} s ({min(totals):.2f}-{max(totals):.2f}) | "
            f"{med - quiet:.2f} s | " + " | ".join(cells) + " |"
        )
    for r in results:
        if r.cold:
            lines.append("")
            lines.append(
                f"First job of a fresh worker (loads the models; not in the medians): "
                f"{r.source}, {r.total:.2f} s, models + objects "
                f"{r.phases['models + objects']:.2f} s."
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="warm runs per source (default 3)")
    parser.add_argument(
        "--quiet-period", type=float, default=5.0, help="spool.quiet_period_s (default 5, the product default)"
    )
    parser.add_argument("--steps", type=int, default=None, help="models.suppression_steps (default: the model's own)")
    parser.add_argument("--size", type=int, default=2048, help="synthetic image side (default 2048)")
    parser.add_argument(
        "--broker-url",
        default="filesystem://",
        help="broker.url (default the embedded filesystem broker); 'redis' claims a database on the local Redis",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ribnode-e2e-") as tmp:
        results = []
        for run in runs(args, Path(tmp)):
            print(
                f"# {run.source}{' (cold)' if run.cold else ''}: {run.total:.2f} s "
                + ", ".join(f"{k} {v:.2f}" for k, v in run.phases.items()),
                file=sys.stderr,
                flush=True,
            )
            results.append(run)
    print(report(results, args, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
