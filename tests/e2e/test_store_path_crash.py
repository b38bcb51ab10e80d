"""``ribnode serve`` killed (SIGKILL) at each step of the C-STORE store path, then started again
and the instance sent again: it ends in the ledger exactly once, one file in the spool, no
temporary file, nothing quarantined (issue 29: every instance is in the ledger or refused)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ribnode.ledger.store import Ledger
from tests.e2e.kill_at_step import STEPS
from tests.node.helpers import dx_dataset, wait_for, write_dataset
from tests.peers.fixtures import echoscu, free_port, storescu

ROOT = Path(__file__).resolve().parents[2]


def _serve(config: Path, log: Path, *driver: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RIBNODE_CONFIG", None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", *(driver or ("ribnode",)), "--config", str(config), "serve"]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _ready(proc: subprocess.Popen[bytes], port: int) -> None:
    wait_for(
        lambda: proc.poll() is not None or echoscu(port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0,
        120,
        "serve",
    )
    assert proc.poll() is None, f"serve exited with {proc.returncode}"


@pytest.mark.parametrize("step", STEPS)
def test_killed_at_each_step_then_restarted(tmp_path: Path, step: str) -> None:
    port = free_port()
    spool = tmp_path / "spool"
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    config = tmp_path / "ribnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"port": port, "allowed_senders": [{"ae_title": "STORESCU"}, {"ae_title": "ECHOSCU"}]},
                "spool": {"directory": str(spool), "quiet_period_s": 300},
                "ledger": {"url": ledger_url},
                "broker": {"url": "filesystem://", "folder": str(tmp_path / "broker")},
            }
        )
    )
    ds = dx_dataset()
    path = write_dataset(ds, tmp_path / "a.dcm")
    log = tmp_path / "serve.log"

    doomed = _serve(config, log, "tests.e2e.kill_at_step", step)
    _ready(doomed, port)
    first = storescu([path], port, called_aet="RIBNODE")
    assert doomed.wait(timeout=30) == -signal.SIGKILL, log.read_text()[-2000:]
    assert first.returncode != 0  # no success status went back

    serve = _serve(config, log)
    try:
        _ready(serve, port)
        again = storescu([path], port, called_aet="RIBNODE")  # the PACS sends it again
        assert again.returncode == 0, again.stderr
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    assert serve.returncode == 0, log.read_text()[-3000:]
    ledger = Ledger(ledger_url)
    row = ledger.instance(ds.SOPInstanceUID)
    assert row is not None and ledger.study(ds.StudyInstanceUID).instance_count == 1
    files = sorted(p.relative_to(spool).as_posix() for p in spool.rglob("*") if p.is_file())
    assert files == [row.path], files  # one file, no temporary file, nothing quarantined
