"""The commands as an operator runs them: ``ribnode serve`` and ``ribnode worker`` as separate
processes sharing one YAML settings file (ledger, broker folder, spool), dcmtk storescu in,
``ribnode status`` out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from ribnode.ledger.store import Ledger
from ribnode.models.fingerprint import SHIPPED_WEIGHTS
from tests.node.helpers import chest_pixels, dx_dataset, wait_for, write_dataset
from tests.peers.fixtures import echoscu, free_port, storescu

RIBNODE = [sys.executable, "-m", "ribnode"]
# The worker runs the real models when their weights are shipped; until then it must still take
# the job and report the missing weights in the ledger.
SHIPPED_WEIGHTS_PRESENT = all(
    (SHIPPED_WEIGHTS / name).is_file() for name in ("rib-segmentation.onnx", "rib-suppression.json")
)


def _status(config: Path) -> dict:
    out = subprocess.run(
        [*RIBNODE, "--config", str(config), "status", "--json"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_serve_worker_status(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "ribnode.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listener": {"port": port, "allowed_senders": [{"ae_title": "STORESCU"}, {"ae_title": "ECHOSCU"}]},
                "spool": {"directory": str(tmp_path / "spool"), "quiet_period_s": 0.5},
                "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.sqlite'}"},
                "broker": {"url": "filesystem://", "folder": str(tmp_path / "broker")},
                "export": {
                    "destinations": [{"name": "local", "kind": "folder", "path": str(tmp_path / "outbox")}],
                    "staging_dir": str(tmp_path / "outputs"),
                },
            }
        )
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RIBNODE_CONFIG", None)
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(
        [*RIBNODE, "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    work_log = (tmp_path / "worker.log").open("w")
    work = subprocess.Popen(
        [*RIBNODE, "--config", str(config), "worker", "--pool", "solo"],
        stdout=work_log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for(lambda: echoscu(port, called_aet="RIBNODE", calling_aet="ECHOSCU").returncode == 0, 60, "serve")
        files = [
            write_dataset(
                dx_dataset(
                    study_uid="1.2.826.0.1.3680043.10.999.1",
                    rows=256,
                    columns=256,
                    seed=i,
                    PixelData=chest_pixels(256, 256, i),
                ),
                tmp_path / f"{i}.dcm",
            )
            for i in range(2)
        ]
        result = storescu(files, port, called_aet="RIBNODE")
        assert result.returncode == 0, result.stderr
        if SHIPPED_WEIGHTS_PRESENT:
            status = wait_for(lambda: (s := _status(config))["jobs"].get("done") and s, 180, "the job to be done")
        else:  # the worker takes the job and reports what is missing (retried, then dead)
            ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")

            def job_error() -> str:
                jobs = ledger.jobs_in_state("queued") + ledger.jobs_in_state("dead")
                return (ledger.job_row(jobs[0].id).last_error or "") if jobs else ""

            wait_for(lambda: "weights" in job_error(), 90, "the missing-weights error")
            status = _status(config)
        assert status["studies"] == 1 and status["instances"] == {"dispatched": 2}
    finally:
        for proc in (serve, work):
            proc.send_signal(signal.SIGTERM)
        for proc in (serve, work):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        work_log.close()
    assert serve.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
    text = subprocess.run([*RIBNODE, "--config", str(config), "status"], capture_output=True, text=True).stdout
    assert "studies    1" in text and ("done 1" in text or not SHIPPED_WEIGHTS_PRESENT)
    from ribnode.ledger.store import AuditEventName

    activity = [
        e.detail
        for e in Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}").audit_events(AuditEventName.APPLICATION_ACTIVITY)
    ]
    for what in ("serve started", "serve stopped", "worker started", "worker stopped"):
        assert any(what in d for d in activity), (what, activity)


def test_help_lists_commands() -> None:
    out = subprocess.run([*RIBNODE, "--help"], capture_output=True, text=True, timeout=60).stdout
    for command in ("serve", "worker", "status"):
        assert command in out


def test_serve_refuses_a_taken_port_and_a_bad_rule(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [
                *RIBNODE,
                "serve",
                "--port",
                str(port),
                "--spool",
                str(tmp_path / "s"),
                "--ledger-url",
                f"sqlite:///{tmp_path / 'l.sqlite'}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2 and f"127.0.0.1:{port}" in out.stderr
    env = {**os.environ, "RIBNODE_ROUTING__RULES": '{"attr": "NotAKeyword", "in": ["x"]}'}
    env.pop("RIBNODE_CONFIG", None)
    out = subprocess.run(
        [
            *RIBNODE,
            "serve",
            "--port",
            str(free_port()),
            "--spool",
            str(tmp_path / "s"),
            "--ledger-url",
            f"sqlite:///{tmp_path / 'l.sqlite'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 2 and "NotAKeyword" in out.stderr
