"""``python -m tests.e2e.fuzz --minutes N --seed S``: fuzz the C-STORE path and the worker's decode
path for as long as asked, print a summary, exit 1 on any violation (see ``harness``)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.fuzz.harness import FuzzConfig, run_fuzz
from tests.peers.fixtures import pydicom_data_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, help="send for this long (default: --count instances)")
    parser.add_argument("--count", type=int, default=200, help="instances to send without --minutes (200)")
    parser.add_argument("--seed", type=int, default=29, help="the mutator's seed: same seed, same instances (29)")
    parser.add_argument("--models", action="store_true", help="run `ribnode worker` with the shipped models")
    parser.add_argument("--large", type=int, default=2048, help="side of the large seed image, pixels (2048)")
    parser.add_argument("--workdir", type=Path, help="keep spool, ledger and logs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ribnode-fuzz-") as tmp:
        workdir = args.workdir or Path(tmp)
        cfg = FuzzConfig(
            workdir=workdir,
            seed=args.seed,
            count=None if args.minutes else args.count,
            seconds=args.minutes * 60 if args.minutes else None,
            models=args.models,
            pydicom_data=pydicom_data_dir(),
            large=args.large,
            settle_s=600.0 if args.models else 300.0,
        )
        report = run_fuzz(cfg)
        print(report.summary())
        if report.violations:
            print(f"logs, spool and ledger: {workdir}" if args.workdir else "rerun with --workdir to keep the logs")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
