"""Secrets and files (issue 29, failures 6 and 8): no password in ``status``, logs or the audit
table; the ledger and the spool are owner-only whatever the umask; an export outage is waited
for at least a day and ``status`` shows it."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom.uid import generate_uid

from ribnode.config.redact import RedactingFilter, redact
from ribnode.config.settings import ExportSettings
from ribnode.ledger.deliveries import DeliveryLedger
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.export import export_job, schedule_minimum_s, stage_outputs
from ribnode.node.spool import Spool
from tests.node.export_helpers import export_settings, make_output_set, make_running_job, stow
from tests.peers.fixtures import free_port

RIBNODE = [sys.executable, "-m", "ribnode"]
SECRET = "s3cr3t-Pa55"


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ledger_and_spool_are_owner_only_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    database = tmp_path / "var" / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{database}")
    ledger.audit("Application Activity", detail="touch")  # the WAL and SHM files exist now
    try:
        for path in [database, *database.parent.glob("ledger.sqlite-*")]:
            assert _mode(path) == 0o600, (path, oct(_mode(path)))
        assert _mode(database.parent) == 0o700
    finally:
        ledger.dispose()
    spool = Spool(tmp_path / "spool")
    relative = spool.write("1.2.3", "1.2.3.4", b"data")
    assert _mode(spool.directory) == 0o700
    assert _mode(spool.path(relative).parent) == 0o700
    assert _mode(spool.path(relative)) == 0o600


def test_status_masks_the_database_password(tmp_path: Path, postgres_url: str) -> None:
    assert ":ribnode@" in postgres_url  # the test role's password is in the URL
    env = {k: v for k, v in os.environ.items() if k != "RIBNODE_CONFIG"}
    for extra in ([], ["--json"]):
        out = subprocess.run(
            [*RIBNODE, "status", "--ledger-url", postgres_url, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        assert ":ribnode@" not in out.stdout + out.stderr
        assert "ribnode:***@127.0.0.1" in out.stdout


def test_redact_and_the_log_filter() -> None:
    assert redact(f"https://user:{SECRET}@pacs/dicom-web?x=1") == "https://user:***@pacs/dicom-web?x=1"
    assert redact(f"http://pacs/wado?access_token={SECRET}&a=b") == "http://pacs/wado?access_token=***&a=b"
    assert redact("sqlite:///var/ribnode.sqlite") == "sqlite:///var/ribnode.sqlite"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("ribnode.test.redact")
    log.addHandler(handler)
    try:
        log.error("cannot reach %s", f"redis://:{SECRET}@10.0.0.1:6379/0")
        try:
            raise ConnectionError(f"postgresql://u:{SECRET}@db/x refused")
        except ConnectionError:
            log.exception("ledger down")
    finally:
        log.removeHandler(handler)
    assert SECRET not in stream.getvalue() and "redis://:***@10.0.0.1" in stream.getvalue()


def test_stow_credentials_never_reach_the_ledger_and_status_shows_the_outage(tmp_path: Path) -> None:
    """A STOW destination with credentials in its URL, down: the audit rows, the delivery and
    job errors hold no password; ``status`` names the destination, its last error and when
    the next attempt is due."""
    url = f"http://ribnode:{SECRET}@127.0.0.1:{free_port()}/dicom-web"  # nothing listens
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    settings = export_settings(tmp_path, ledger_url, [stow("pacs", url, timeout_s=2)], max_attempts=3)
    ledger = Ledger(ledger_url)
    study, source = generate_uid(), generate_uid()
    job_id = make_running_job(ledger, study, source)
    stage_outputs(job_id, [make_output_set(study, source)], settings, ledger)
    report = export_job(job_id, settings, ledger)
    assert report.state == JobState.EXPORTING
    stored = [e.detail or "" for e in ledger.audit_events()] + [e.destination_aet or "" for e in ledger.audit_events()]
    stored += [d.last_error or "" for d in DeliveryLedger(ledger).deliveries(job_id)]
    stored.append(ledger.job_row(job_id).last_error or "")
    assert any("***@127.0.0.1" in text for text in stored)
    assert not any(SECRET in text for text in stored), [t for t in stored if SECRET in t]

    config = tmp_path / "ribnode.yaml"
    config.write_text(yaml.safe_dump({"ledger": {"url": ledger_url}}))
    env = {k: v for k, v in os.environ.items() if k != "RIBNODE_CONFIG"}
    out = subprocess.run(
        [*RIBNODE, "--config", str(config), "status", "--json"], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    [pacs] = json.loads(out.stdout)["destinations"]
    assert pacs["name"] == "pacs" and pacs["deliveries"] == {"pending": 1}
    assert pacs["next_attempt_at"] and "cannot reach" in pacs["last_error"]
    text = subprocess.run(
        [*RIBNODE, "--config", str(config), "status"], capture_output=True, text=True, timeout=120, env=env
    ).stdout
    assert "pacs: pending 1; next attempt" in text and SECRET not in text


def test_default_export_schedule_covers_a_day() -> None:
    export = ExportSettings()
    assert schedule_minimum_s(export.max_attempts, export.backoff_s, export.backoff_max_s) >= 24 * 3600
    assert export.backoff_max_s <= 3600  # capped: a PACS back after the outage is tried within the hour
