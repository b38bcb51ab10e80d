"""Study-completion latency against the quiet period, with repeats.

For each quiet period, ``--repeats`` studies of ``--study-size`` instances are pushed (one
storescu association each) to one ``ribnode serve`` process; for each study the latency is
the job's "queued" transition minus the study's last instance arrival, both from the ledger
(same clock, no polling error in the measurement). Reports median and max per quiet period.

Usage::

    .venv/bin/python benchmarks/completion.py --quiet 1 2 5 --repeats 5 --out var/bench/completion.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import Ribnode, cpu_model, make_instances, push  # noqa: E402


def study_latencies(quiet: float, repeats: int, study_size: int, work: Path) -> list[float]:
    """Latencies (s) of ``repeats`` studies sent one after another to one serve process."""
    from sqlalchemy import func, select

    from ribnode.ledger.schema import Instance, Job, JobTransition, Study
    from ribnode.ledger.store import JobState, Ledger

    node = Ribnode(work / f"serve-{quiet:g}", quiet_period_s=quiet)
    ledger = Ledger(node.ledger_url)
    out = []
    try:
        for n in range(repeats):
            files = make_instances(work / f"data-{quiet:g}-{n}", study_size, 256, per_study=study_size)
            push(files, node.port, "RIBNODE")
            deadline = time.monotonic() + quiet + 30
            while len(ledger.jobs_in_state(JobState.QUEUED)) <= n and time.monotonic() < deadline:
                time.sleep(0.05)
        with ledger.session() as s:
            rows = s.execute(
                select(JobTransition.at, func.max(Instance.received_at))
                .join(Job, Job.id == JobTransition.job_id)
                .join(Study, Study.id == Job.study_id)
                .join(Instance, Instance.job_id == Job.id)
                .where(JobTransition.to_state == "queued")
                .group_by(JobTransition.id, JobTransition.at)
            ).all()
        out = [(queued - last).total_seconds() for queued, last in rows]
    finally:
        node.stop()
    if len(out) != repeats:
        raise RuntimeError(f"{len(out)} of {repeats} studies were queued (quiet period {quiet} s)")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", type=float, nargs="+", default=[1.0, 2.0, 5.0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--study-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="ribnode-completion-"))
    results = {}
    try:
        for quiet in args.quiet:
            results[quiet] = study_latencies(quiet, args.repeats, args.study_size, work)
            print(f"quiet {quiet:g} s: {', '.join(f'{x:.3f}' for x in results[quiet])}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        "## Study completion latency: last instance stored -> job queued",
        "",
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()}-core CPU, "
        f"{cpu_model()}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)",
        f"- Command: `.venv/bin/python benchmarks/completion.py --quiet {' '.join(f'{q:g}' for q in args.quiet)} "
        f"--repeats {args.repeats} --study-size {args.study_size}`",
        f"- {args.repeats} studies of {args.study_size} instances per quiet period, one `ribnode serve` "
        "(SQLite ledger, filesystem broker, default `completion_poll_s` 0.5 s); latency from the ledger's "
        "timestamps.",
        "",
        "| quiet period (s) | median (s) | max (s) | median beyond the quiet period (s) |",
        "|---|---|---|---|",
    ]
    for quiet, values in results.items():
        med = statistics.median(values)
        lines.append(f"| {quiet:g} | {med:.3f} | {max(values):.3f} | {med - quiet:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
