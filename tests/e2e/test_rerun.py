"""Processing a study again on purpose: ``ribnode rerun STUDY_UID``, ``spool.rerun_on_resend``,
and the loud warning of ``ribnode serve`` on all interfaces without an allow-list.

Regression (issue 26, 4): every SOP Instance UID already seen was dropped as a duplicate, yet
docs/operations.md gave re-sending as the fix; no command re-ran a study."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ribnode.config.settings import ListenerSettings, Settings
from ribnode.ledger.store import JobState, Ledger, LedgerError
from ribnode.node.cli import warn_if_exposed
from ribnode.node.completion import StudyCompletion
from tests.node.helpers import c_store, dx_dataset, make_settings, running_listener
from tests.peers.fixtures import free_port

RIBNODE = [sys.executable, "-m", "ribnode"]


def _completed_job(settings: Settings, ledger: Ledger) -> list:  # type: ignore[type-arg]
    time.sleep(settings.spool.quiet_period_s + 0.05)
    return StudyCompletion(settings, ledger, lambda job: f"t{job.id}").tick()


def _finish(ledger: Ledger, job_id: int) -> None:
    for state in (JobState.RUNNING, JobState.DONE):
        assert ledger.transition(job_id, state)


def test_resent_study_is_not_processed_again_by_default(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port())
    ledger = Ledger(settings.ledger.url)
    ds = dx_dataset()
    with running_listener(settings, ledger) as listener:
        assert c_store(listener.port, [ds]) == [0]
        [job] = _completed_job(settings, ledger)
        _finish(ledger, job.id)
        assert c_store(listener.port, [ds]) == [0]
    assert _completed_job(settings, ledger) == []
    assert ledger.instance(ds.SOPInstanceUID).duplicate_count == 1
    ledger.dispose()


def test_rerun_on_resend_makes_a_rerun_job(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port(), **{"spool.rerun_on_resend": True})
    ledger = Ledger(settings.ledger.url)
    ds = dx_dataset()
    with running_listener(settings, ledger) as listener:
        assert c_store(listener.port, [ds]) == [0]
        [first] = _completed_job(settings, ledger)
        # While the first job runs, a re-send is only counted (the instance is being worked on).
        assert c_store(listener.port, [ds]) == [0]
        assert _completed_job(settings, ledger) == []
        _finish(ledger, first.id)
        assert c_store(listener.port, [ds]) == [0]
    [again] = _completed_job(settings, ledger)
    assert again.id != first.id
    assert ledger.job_row(again.id).kind == "rerun"
    assert [i.sop_instance_uid for i in ledger.job_instances(again.id)] == [ds.SOPInstanceUID]
    ledger.dispose()


def test_rerun_command_puts_the_study_back(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port())
    ledger = Ledger(settings.ledger.url)
    study = dx_dataset().StudyInstanceUID
    sources = [dx_dataset(study_uid=study, seed=k) for k in range(2)]
    with running_listener(settings, ledger) as listener:
        assert c_store(listener.port, sources) == [0, 0]
    [job] = _completed_job(settings, ledger)
    argv = [*RIBNODE, "rerun", str(study), "--ledger-url", settings.ledger.url]
    busy = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and "unfinished job" in busy.stderr  # the job is not done yet
    _finish(ledger, job.id)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "2 instance(s) pending again" in done.stdout
    [rerun] = _completed_job(settings, ledger)
    assert ledger.job_row(rerun.id).kind == "rerun"
    assert sorted(i.sop_instance_uid for i in ledger.job_instances(rerun.id)) == sorted(
        s.SOPInstanceUID for s in sources
    )
    # Twice is fine: each rerun is a job of its own.
    _finish(ledger, rerun.id)
    assert ledger.request_rerun(str(study)) == 2
    [third] = _completed_job(settings, ledger)
    assert third.id not in (job.id, rerun.id)
    unknown = subprocess.run(
        [*RIBNODE, "rerun", "1.2.3.4", "--ledger-url", settings.ledger.url], capture_output=True, text=True, timeout=60
    )
    assert unknown.returncode == 2 and "no study" in unknown.stderr
    with pytest.raises(LedgerError, match="no study"):
        ledger.request_rerun("1.2.3.4")
    ledger.dispose()


@pytest.mark.parametrize(
    ("bind", "senders", "open_mode", "warned"),
    [
        ("0.0.0.0", [], False, True),
        ("::", [], False, True),
        ("0.0.0.0", [{"ae_title": "PACS"}], True, True),
        ("0.0.0.0", [{"ae_title": "PACS", "host": "10.0.0.5"}], False, False),
        ("127.0.0.1", [], False, False),
    ],
)
def test_serve_warns_on_all_interfaces_without_an_allow_list(
    bind: str,
    senders: list,
    open_mode: bool,
    warned: bool,
    capsys: pytest.CaptureFixture[str],  # type: ignore[type-arg]
) -> None:
    listener = ListenerSettings(bind_address=bind, allowed_senders=senders, open_mode=open_mode)
    text = warn_if_exposed(listener)
    assert (text is not None) == warned
    if warned:
        assert "WARNING" in capsys.readouterr().err


def test_readme_pacs_example_listens_for_another_host_and_keeps_the_allow_list() -> None:
    """Regression (issue 26, 6): the README's PACS example left the listener on 127.0.0.1, so a
    PACS on another host could not connect."""
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Pointing ribnode at a real PACS", 1)[1]
    [block] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)[:1]
    example = yaml.safe_load(block)
    listener = ListenerSettings(**example["listener"])
    assert listener.bind_address == "0.0.0.0"
    assert listener.allowed_senders and not listener.open_mode
    assert warn_if_exposed(listener) is None
