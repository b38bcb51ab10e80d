"""The short fuzz of ``make test`` (issue 29): a real ``ribnode serve`` and a real worker, a
seeded batch of mutated instances by C-STORE, and the invariants of ``harness`` (no listener
crash, clean statuses, nothing acknowledged and lost, no orphan spool file, every job final,
no unhandled worker error, a clean restart). ``python -m tests.e2e.fuzz --minutes N`` runs it longer.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.e2e.fuzz.harness import FuzzConfig, run_fuzz
from tests.e2e.fuzz.specimens import Mutator, build_seeds, meta_end
from tests.peers.fixtures import pydicom_data_dir

SEED = int(os.environ.get("RIBNODE_FUZZ_SEED", "29"))
COUNT = 48  # about a minute of wall time on two idle cores


def test_specimens_are_reproducible_and_keep_their_file_meta() -> None:
    seeds = build_seeds(pydicom_data_dir(), large=256)
    first, again = Mutator(seeds, 7), Mutator(build_seeds(pydicom_data_dir(), large=256), 7)
    for index in range(0, 40, 3):
        one, two = first.specimen(index), again.specimen(index)
        assert (one.name, one.data) == (two.name, two.data)
        assert one.data[128:132] == b"DICM" and meta_end(one.data) <= len(one.data)
    assert first.specimen(1).data != Mutator(seeds, 8).specimen(1).data


def test_short_fuzz_of_the_store_and_decode_paths(tmp_path: Path) -> None:
    report = run_fuzz(FuzzConfig(tmp_path, seed=SEED, count=COUNT, pydicom_data=pydicom_data_dir(), large=512))
    print(report.summary())
    assert not report.violations, report.summary()
    assert report.sent == COUNT
    assert report.statuses["0x0000"] > 0 and report.statuses["0xC210"] > 0  # both paths exercised
    assert sum(report.jobs.values()) > 0 and report.jobs["failed"] > 0  # bad images reached a worker


def test_log_alarms_skip_pydicom_decoder_records_only() -> None:
    from tests.e2e.fuzz.harness import log_alarms

    text = (
        "2026-12-07 11:03:24,529 ERROR pydicom.pixels.decoders.base: libjpeg error\n"
        "Traceback (most recent call last):\n  ...\nRuntimeError: corrupt\n"
        "2026-12-07 11:03:25,334 WARNING ribnode.workers.jobs: instance 1.2: cannot decode\n"
        "2026-12-07 11:03:26,000 ERROR celery.app.trace: Task x raised unexpected: KeyError()\n"
        "Traceback (most recent call last):\n  ...\n"
    )
    [alarm] = log_alarms(text)
    assert "raised unexpected" in alarm
