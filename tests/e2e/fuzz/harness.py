"""The fuzz run: a real ``ribnode serve`` and a real worker, seeded mutants sent by C-STORE,
then the invariants of issue 29 checked on the ledger, the spool and the logs.

Invariants (each broken one is a *violation*; the run fails on any):

* the listener process never exits and answers C-ECHO after every association;
* every C-STORE gets a clean status: 0x0000, or a refusal (0xC210 cannot understand); never
  0xA700 (storage failure: there is none here, and the sender would retry it for ever), never
  0x0110 (an unexpected error in the handler: a bug), never no answer;
* every acknowledged instance is in the ledger; every spool file is in the ledger or in the
  quarantine, every ledger row's file is in the spool, no temporary file is left behind;
* every job reaches a final state (done, failed or dead); none is dead and none was taken
  twice, as nothing transient happens here (a decode error treated as temporary would retry);
* an instance whose image lies (``Specimen.must_not_decode``) never passes the decode path;
* neither log holds a traceback or an unhandled task error, and ``serve`` restarts cleanly on
  the spool and ledger the run leaves (nothing to quarantine).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydicom.filereader import read_file_meta_info

from ribnode.demo.run import demo_routing
from ribnode.ledger.schema import TERMINAL_JOB_STATES, Instance, InstanceState, Job
from ribnode.ledger.store import JobState, Ledger
from tests.e2e.fuzz.specimens import Mutator, Specimen, build_seeds
from tests.peers.fixtures import free_port

CALLING_AET = "FUZZ"
CLEAN_REFUSALS = {0xC210}
# Lines no log may hold: a traceback, or a task that raised out of its handler.
LOG_ALARMS = ("Traceback (most recent call last)", "raised unexpected", "WorkerLostError", "Unrecoverable error")
ECHO = "1.2.840.10008.1.1"
START_S = 180.0  # a process start on a loaded machine (nice 15 beside a training run) is slow


@dataclass
class FuzzConfig:
    """What to run: ``count`` specimens, or as many as fit in ``seconds``."""

    workdir: Path
    seed: int = 29
    count: int | None = 100
    seconds: float | None = None
    models: bool = False  # ribnode worker with the shipped models instead of the decode path only
    batch: int = 10  # specimens per association
    pydicom_data: Path | None = None
    large: int = 1024  # side of the large seed image
    settle_s: float = 120.0  # how long jobs may take to finish after the last instance


@dataclass
class FuzzReport:
    """What a run did and what broke."""

    seed: int
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    instances: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def violate(self, what: str) -> None:
        self.violations.append(what)

    def summary(self) -> str:
        lines = [
            f"fuzz seed {self.seed}: {self.sent} instances sent in {self.seconds:.0f} s",
            "  C-STORE statuses: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
            "  instances in the ledger: " + ", ".join(f"{k} {v}" for k, v in sorted(self.instances.items())),
            "  jobs by final state: " + ", ".join(f"{k} {v}" for k, v in sorted(self.jobs.items())),
            f"  violations: {len(self.violations)}",
            *(f"    - {v}" for v in self.violations[:50]),
        ]
        return "\n".join(lines)


def _settings(cfg: FuzzConfig, port: int) -> dict[str, Any]:
    work = cfg.workdir
    return {
        "routing": {"rules": demo_routing()},  # the default rule, taking the phantom's SyntheticData YES
        "listener": {"port": port, "allowed_senders": [{"ae_title": CALLING_AET}]},
        "spool": {"directory": str(work / "spool"), "quiet_period_s": 1.0, "completion_poll_s": 0.2},
        "ledger": {"url": f"sqlite:///{work / 'ledger.sqlite'}"},
        "broker": {
            "url": "filesystem://",
            "folder": str(work / "broker"),
            "enqueue_retry_s": 0.5,
            "max_retries": 2,
            "retry_backoff_s": 0.2,
            "retry_backoff_max_s": 0.5,
            "worker_memory_limit_mb": 4096,  # a decoder that asks for more gets MemoryError
        },
        "models": {"device": "cpu", "suppression_steps": 2, "intra_op_threads": 1},
        "export": {
            "destinations": [{"name": "outbox", "kind": "folder", "path": str(work / "outbox")}],
            "staging_dir": str(work / "outputs"),
            "backoff_s": 0.2,
            "backoff_max_s": 0.5,
        },
    }


class Process:
    """A child process with its log file."""

    def __init__(self, name: str, command: list[str], workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("RIBNODE_CONFIG", None)
        with self.log_path.open("a") as log:
            self.popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=_repo_root())

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=30)
            return -9

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def echo(port: int) -> bool:
    """A C-ECHO with pynetdicom: True when it succeeds."""
    from pynetdicom import AE

    ae = AE(ae_title=CALLING_AET)
    ae.add_requested_context(ECHO)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="RIBNODE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def _wait(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def _chunked_sending() -> Iterator[None]:
    """pynetdicom sends a file's bytes as they are (no decoding, no re-encoding)."""
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


@dataclass
class Sent:
    specimen: Specimen
    sop_instance_uid: str
    status: str


def send_batch(port: int, paths: list[tuple[Specimen, Path]]) -> list[Sent]:
    """C-STORE each file in one association (a new one if the listener aborts it)."""
    from pynetdicom import AE

    metas = {id(s): read_file_meta_info(p) for s, p in paths}
    out: list[Sent] = []
    pending = list(paths)
    while pending:
        ae = AE(ae_title=CALLING_AET)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class, syntax in sorted(
            {(str(metas[id(s)].MediaStorageSOPClassUID), str(metas[id(s)].TransferSyntaxUID)) for s, _ in pending}
        ):
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate("127.0.0.1", port, ae_title="RIBNODE")
        if not assoc.is_established:
            out.extend(Sent(s, str(metas[id(s)].MediaStorageSOPInstanceUID), "no association") for s, _ in pending)
            return out
        try:
            while pending and assoc.is_established:
                specimen, path = pending.pop(0)
                uid = str(metas[id(specimen)].MediaStorageSOPInstanceUID)
                try:
                    answer = assoc.send_c_store(path)
                except ValueError as exc:  # no accepted context: not sent
                    out.append(Sent(specimen, uid, f"not sent ({str(exc)[:40]})"))
                    continue
                status = f"0x{int(answer.Status):04X}" if answer and "Status" in answer else "no answer"
                out.append(Sent(specimen, uid, status))
        finally:
            if assoc.is_established:
                assoc.release()
    return out


class FuzzRun:
    """One fuzz run in ``cfg.workdir`` (see the module docstring)."""

    def __init__(self, cfg: FuzzConfig) -> None:
        self.cfg = cfg
        self.report = FuzzReport(cfg.seed)
        self.port = free_port()
        cfg.workdir.mkdir(parents=True, exist_ok=True)
        self.config = cfg.workdir / "ribnode.yaml"
        self.config.write_text(yaml.safe_dump(_settings(cfg, self.port)))
        self.sent: list[Sent] = []

    def serve(self, name: str = "serve") -> Process:
        return Process(name, [sys.executable, "-m", "ribnode", "--config", str(self.config), "serve"], self.cfg.workdir)

    def worker(self) -> Process:
        if self.cfg.models:
            command = ["-m", "ribnode", "--config", str(self.config), "worker", "-c", "1"]
        else:
            command = ["-m", "tests.e2e.fuzz.worker", "--config", str(self.config)]
        return Process("worker", [sys.executable, *command], self.cfg.workdir)

    def run(self) -> FuzzReport:
        started = time.monotonic()
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # statuses are judged here, not logged
        seeds = build_seeds(self.cfg.pydicom_data, self.cfg.large)
        mutator = Mutator(seeds, self.cfg.seed)
        serve = self.serve()
        worker: Process | None = None
        try:
            if not _wait(lambda: not serve.alive() or echo(self.port), START_S) or not serve.alive():
                self.report.violate(f"ribnode serve did not start: {serve.log()[-2000:]}")
                return self.report
            worker = self.worker()  # after serve: the ledger's tables exist
            self._send(mutator, serve)
            ledger = Ledger(f"sqlite:///{self.cfg.workdir / 'ledger.sqlite'}")
            try:
                self._settle(ledger, worker)
                if not worker.alive():
                    self.report.violate(f"the worker exited ({worker.popen.returncode})")
            finally:
                worker.stop()
                code = serve.stop()
                if code != 0:
                    self.report.violate(f"ribnode serve exited {code} on SIGTERM")
            self._check_store(ledger)
            self._check_jobs(ledger)
            self._check_restart()
            ledger.dispose()
        finally:
            processes = [serve] if worker is None else [serve, worker]
            for process in processes:
                process.stop()
            self._check_logs(*processes)
            self.report.seconds = time.monotonic() - started
        return self.report

    def _more(self, index: int, deadline: float | None) -> bool:
        if self.cfg.count is not None and index >= self.cfg.count:
            return False
        return deadline is None or time.monotonic() < deadline

    def _send(self, mutator: Mutator, serve: Process) -> None:
        folder = self.cfg.workdir / "specimens"
        folder.mkdir(exist_ok=True)
        deadline = time.monotonic() + self.cfg.seconds if self.cfg.seconds is not None else None
        index = 0
        with _chunked_sending():
            while self._more(index, deadline):
                end = index + self.cfg.batch if self.cfg.count is None else min(index + self.cfg.batch, self.cfg.count)
                batch = [mutator.specimen(i) for i in range(index, end)]
                index += len(batch)
                files = [(s, s.write(folder)) for s in batch]
                results = send_batch(self.port, files)
                for sent in results:
                    self._judge(sent)
                for _, path in files:
                    path.unlink()
                self.sent.extend(results)
                self.report.sent += len(results)
                if not serve.alive():
                    self.report.violate(f"ribnode serve exited ({serve.popen.returncode}) after specimen {index - 1}")
                    return
                if not echo(self.port):
                    self.report.violate(f"no C-ECHO answer after specimen {index - 1}")
                    return

    def _judge(self, sent: Sent) -> None:
        self.report.statuses[sent.status] += 1
        if sent.status == "0x0000" or sent.status.startswith("not sent"):
            return
        if sent.status.startswith("0x") and int(sent.status, 16) in CLEAN_REFUSALS:
            return
        self.report.violate(f"specimen {sent.specimen.index} ({sent.specimen.name}): status {sent.status}")

    def _settle(self, ledger: Ledger, worker: Process) -> None:
        """Wait until no routed instance waits for its study and every job is final."""

        def settled() -> bool:
            with ledger.session() as s:
                waiting = s.query(Instance).filter(Instance.state == str(InstanceState.PENDING)).count()
                open_jobs = s.query(Job).filter(Job.state.notin_([str(t) for t in TERMINAL_JOB_STATES])).count()
            return waiting == 0 and open_jobs == 0 and worker.alive()

        time.sleep(1.5)  # the quiet period of the last study
        if not _wait(settled, self.cfg.settle_s):
            with ledger.session() as s:
                stuck = [(j.id, j.state, j.attempts, (j.last_error or "")[:120]) for j in s.query(Job)]
            stuck = [j for j in stuck if j[1] not in TERMINAL_JOB_STATES]
            self.report.violate(f"jobs not final after {self.cfg.settle_s:g} s: {stuck[:10]}")

    def _check_store(self, ledger: Ledger) -> None:
        spool = self.cfg.workdir / "spool"
        with ledger.session() as s:
            rows = {i.sop_instance_uid: (i.path, i.state) for i in s.query(Instance)}
        for sent in self.sent:
            if sent.status == "0x0000" and sent.sop_instance_uid not in rows:
                what = f"specimen {sent.specimen.index} ({sent.specimen.name})"
                self.report.violate(f"{what} acknowledged, not in the ledger")
        paths = {path for path, _ in rows.values()}
        for path in spool.rglob("*"):
            relative = path.relative_to(spool).as_posix()
            if path.is_dir() or relative.startswith("quarantine/"):
                continue
            if relative not in paths:
                self.report.violate(f"orphan spool file {relative}")
        for uid, (path, _) in rows.items():
            if not (spool / path).is_file():
                self.report.violate(f"instance {uid}: its spool file {path} is missing")
        self.report.instances.update(state for _, state in rows.values())

    def _check_jobs(self, ledger: Ledger) -> None:
        lying = {s.sop_instance_uid for s in self.sent if s.specimen.must_not_decode and s.status == "0x0000"}
        names = {s.sop_instance_uid: s.specimen.name for s in self.sent}
        with ledger.session() as s:
            jobs = [(j.id, j.state, j.attempts, j.last_error) for j in s.query(Job)]
            checked = [
                (i.sop_instance_uid, i.validated_at, i.error, i.job_id)
                for i in s.query(Instance).filter(Instance.job_id.is_not(None))
            ]
        for job_id, state, attempts, error in jobs:
            self.report.jobs[state] += 1
            if state == JobState.DEAD:
                self.report.violate(f"job {job_id} dead (a transient error where none was): {(error or '')[:300]}")
            elif attempts > 1:
                self.report.violate(f"job {job_id} {state} after {attempts} attempts: {(error or '')[:300]}")
        states = {job_id: state for job_id, state, _, _ in jobs}
        for uid, validated, error, job_id in checked:
            if states.get(job_id) == JobState.DONE and validated is None:
                self.report.violate(f"instance {uid} ({names.get(uid)}) of done job {job_id} never decoded")
            if uid in lying and validated is not None and not error:
                self.report.violate(f"instance {uid} ({names.get(uid)}) lies, yet it was decoded without error")

    def _check_restart(self) -> None:
        """``serve`` starts again on what the run left, answers C-ECHO, quarantines nothing."""
        again = self.serve("serve-restart")
        try:
            if not _wait(lambda: not again.alive() or echo(self.port), START_S) or not again.alive():
                self.report.violate(f"ribnode serve does not start again: {again.log()[-2000:]}")
        finally:
            again.stop()
        if "quarantine" in again.log():
            self.report.violate("the restart quarantined spool files the run left")

    def _check_logs(self, *processes: Process) -> None:
        for process in processes:
            for record in log_alarms(process.log()):
                self.report.violate(f"{process.name} log: {record[:1500]}")


RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ([\w.]+):", re.MULTILINE)


def log_alarms(text: str) -> list[str]:
    """The log records that hold an alarm (``LOG_ALARMS``). pydicom's own decoder records are
    left out: it logs each decoder plugin that fails, with its traceback, before it raises the
    error that the decode path turns into a permanent failure (which the ledger checks show)."""
    starts = [m.start() for m in RECORD_START.finditer(text)]
    records = [text[a:b] for a, b in zip([0, *starts], [*starts, len(text)]) if b > a]
    alarms = []
    for record in records:
        match = RECORD_START.match(record)
        if match and match.group(1).startswith("pydicom."):
            continue
        if any(alarm in record for alarm in LOG_ALARMS):
            alarms.append(record)
    return alarms


def run_fuzz(cfg: FuzzConfig) -> FuzzReport:
    """Run one fuzz; the report says what happened and lists every violation."""
    return FuzzRun(cfg).run()
