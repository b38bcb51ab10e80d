"""``ribnode serve`` that SIGKILLs itself at one step of the C-STORE store path (a test driver,
run as ``python -m tests.e2e.kill_at_step STEP --config FILE``; never imported by ribnode).

Steps: ``write`` (half the bytes written, nothing synced), ``fsync`` (before the file's fsync),
``rename`` (before ``os.replace``), ``renamed`` (after it, before the folder's fsync), ``ledger``
(before the ledger insert), ``recorded`` (after the insert, before the status goes back).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from ribnode.ledger.store import Ledger
from ribnode.node import spool as spool_module

STEPS = ("write", "fsync", "rename", "renamed", "ledger", "recorded")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _path_of(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def install(step: str) -> None:
    real_fsync, real_replace = os.fsync, os.replace
    real_fsync_dir, real_record = spool_module._fsync_dir, Ledger.record_instance
    renamed = {"done": False}

    def fsync(fd: int) -> None:
        path = _path_of(fd)
        if path.endswith(".tmp") and f"{os.sep}spool{os.sep}" in path:
            if step == "write":
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                _die()
            if step == "fsync":
                _die()
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        in_spool = str(src).endswith(".tmp") and f"{os.sep}spool{os.sep}" in str(src)
        if step == "rename" and in_spool:
            _die()
        real_replace(src, dst)
        renamed["done"] = renamed["done"] or in_spool

    def fsync_dir(path: Any) -> None:
        if step == "renamed" and renamed["done"]:
            _die()
        real_fsync_dir(path)

    def record_instance(self: Ledger, rec: Any) -> bool:
        if step == "ledger":
            _die()
        result = real_record(self, rec)
        if step == "recorded":
            _die()
        return result

    spool_module.os.fsync = fsync  # type: ignore[assignment]
    spool_module.os.replace = replace  # type: ignore[assignment]
    spool_module._fsync_dir = fsync_dir
    Ledger.record_instance = record_instance  # type: ignore[method-assign]


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in STEPS:
        raise SystemExit(f"usage: kill_at_step {{{','.join(STEPS)}}} RIBNODE-ARGS...")
    install(sys.argv[1])
    from ribnode.cli import main

    sys.exit(main(sys.argv[2:]))
