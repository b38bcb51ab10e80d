"""Helpers of the console tests: a ledger filled by really running the demo, more jobs added
through the ledger's own API, ``ribnode serve`` with the console over HTTPS, a TLS syslog
receiver, and headless Debian Chromium driven by Selenium through Debian's chromedriver."""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.uid import generate_uid

from ribnode.config.settings import Settings
from ribnode.console.auth import hash_password, new_token
from ribnode.ledger.store import JobState, Ledger, ReceivedInstance
from tests.node.test_tls import _cert, _write
from tests.peers.fixtures import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PASSWORDS = {"alice": "alice-qa-password", "tom": "tom-tech-password"}


def require_browser() -> None:
    """Skip unless Debian's chromium and chromedriver are installed (``make test`` installs
    them: deploy/scripts/ensure-system.sh test)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install chromium chromium-driver)")


@dataclass(frozen=True)
class DemoStudy:
    """The study that went through the whole node: its UID and the settings it ran under."""

    study_uid: str
    settings: Settings


def run_real_job(tmp: Path) -> DemoStudy:
    """A synthetic chest study through a whole node (listener, completion, Celery worker, the
    shipped models, folder export), as ``ribnode demo`` does; returns once its job is done."""
    import pydicom

    from ribnode.phantom import generate_chest, write_dicom_study
    from tests.e2e.helpers import e2e_settings, job_of_study, running_node
    from tests.node.helpers import c_store, wait_for

    settings = e2e_settings(tmp / "node")
    [source] = write_dicom_study(generate_chest(42, (512, 512)), tmp / "study", 42)
    study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
    with running_node(settings) as node:
        assert c_store(node.listener.port, [source]) == [0]
        wait_for(lambda: job_of_study(node.ledger, study_uid, JobState.DONE), 600, "the demo study's job to be done")
    return DemoStudy(study_uid, settings)


def add_jobs(ledger: Ledger, count: int) -> list[tuple[str, int, str]]:
    """``count`` more studies with one job each, moved through real ledger transitions (no
    worker: these jobs fail or die with an error), for the list's filters, sort and pages.
    Returns (study UID, job id, final state) of each."""
    made = []
    for i in range(count):
        study_uid = generate_uid()
        ledger.record_instance(
            ReceivedInstance(
                study_instance_uid=study_uid,
                series_instance_uid=generate_uid(),
                sop_instance_uid=generate_uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                modality="DX",
                path=f"absent/{i}.dcm",
                size_bytes=1,
                calling_aet="STORESCU",
                routed=True,
                patient_id=f"PAT-{i}",
                accession_number=f"ACC-{i}",
            )
        )
        study = ledger.study(study_uid)
        assert study is not None
        job = ledger.create_job(study.id, {"test": str(i)})
        assert job is not None
        ledger.transition(job.id, JobState.QUEUED)
        ledger.transition(job.id, JobState.RUNNING)
        final = JobState.FAILED if i % 2 == 0 else JobState.DEAD
        ledger.transition(job.id, final, error=f"test error {i}: not a chest radiograph")
        made.append((study_uid, job.id, str(final)))
    return made


@dataclass
class SyslogReceiver:
    """A TLS syslog collector (RFC 5425) on loopback that keeps every framed message."""

    cert: Path
    key: Path
    port: int = field(default_factory=free_port)
    messages: list[bytes] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(self.cert), str(self.key))
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._read, args=(raw,), daemon=True).start()

    def _read(self, raw: socket.socket) -> None:
        try:
            conn = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        buffer = b""
        with conn:
            conn.settimeout(0.5)
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except (ssl.SSLError, OSError):
                    return
                if not chunk:
                    return
                buffer += chunk
                buffer = self._split(buffer)

    def _split(self, buffer: bytes) -> bytes:
        """RFC 5425 octet counting: ``MSG-LEN SP SYSLOG-MSG``."""
        while b" " in buffer:
            length, rest = buffer.split(b" ", 1)
            assert length.isdigit(), f"not RFC 5425 framing: {buffer[:40]!r}"
            if len(rest) < int(length):
                break
            self.messages.append(rest[: int(length)])
            buffer = rest[int(length) :]
        return buffer

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


@dataclass
class ConsoleNode:
    """``ribnode serve`` with the console on the demo's ledger."""

    url: str  # https://127.0.0.1:PORT/console
    ca: Path
    work: Path
    ledger: Ledger
    token: str  # alice's bearer token
    added: list[tuple[str, int, str]]
    syslog: SyslogReceiver
    config: dict[str, Any]

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return requests.get(self.url + path, headers=headers, verify=str(self.ca), timeout=30, **kwargs)


def console_config(settings: Settings, pki: dict[str, Path], port: int, syslog_port: int) -> tuple[dict[str, Any], str]:
    """The job's settings with the HTTP service on HTTPS and the console on."""
    config = settings.model_dump(mode="json")
    token, digest = new_token()
    config["http"] = {
        **config.get("http", {}),
        "port": port,
        "bind_address": "127.0.0.1",
        "tls_cert": str(pki["server"]),
        "tls_key": str(pki["server_key"]),
    }
    config["console"] = {
        "enabled": True,
        "page_size": 2,
        "login_max_failures": 3,
        "login_window_s": 120,
        "users": [
            {"name": "alice", "role": "qa", "password_hash": hash_password(PASSWORDS["alice"]), "token_sha256": digest},
            {"name": "tom", "role": "technical", "password_hash": hash_password(PASSWORDS["tom"])},
        ],
        "syslog": {"host": "127.0.0.1", "port": syslog_port, "tls_ca": str(pki["ca"]), "poll_s": 0.5},
    }
    return config, token


@contextmanager
def serve_console(config_path: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``ribnode serve --no-dimse`` reading ``config_path``; stopped with SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIBNODE_")}
    argv = [sys.executable, "-m", "ribnode", "--config", str(config_path), "serve", "--no-dimse"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_up(url: str, ca: Path, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ribnode serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, verify=str(ca), timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"ribnode serve did not answer {url}:\n{log.read_text()[-3000:]}")


def chromium(download_dir: Path) -> Any:
    """Headless Debian Chromium through Debian's chromedriver (Selenium Manager never runs:
    both paths are given, nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.accept_insecure_certs = True  # the test CA's server certificate
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def screenshot(driver: Any, folder: Path, name: str) -> Path:
    """Save a screenshot (also to $RIBNODE_SCREENSHOTS when set, for the README)."""
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    extra = os.environ.get("RIBNODE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def make_pki(folder: Path) -> dict[str, Path]:
    """A test CA and a server certificate it signed, written under ``folder``."""
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ribnode test CA", ca_key, "ribnode test CA", ca_key, ca=True, server=False)
    out = {}
    out["ca"], _ = _write(folder, "ca", ca, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    out["server"], out["server_key"] = _write(
        folder, "server", _cert("server", key, "ribnode test CA", ca_key, False, True), key
    )
    return out


def check_audit_message(message: ET.Element, codes: set[str]) -> None:
    """The structure of PS3.15 A.5.1: element order, required attributes, coded values."""
    assert message.tag == "AuditMessage"
    tags = [child.tag for child in message]
    assert tags[0] == "EventIdentification"
    i = 1
    while i < len(tags) and tags[i] == "ActiveParticipant":
        i += 1
    assert i > 1, "at least one ActiveParticipant"
    assert tags[i] == "AuditSourceIdentification"
    assert set(tags[i + 1 :]) <= {"ParticipantObjectIdentification"}
    event = message[0]
    assert event.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event.get("EventDateTime", ""))
    assert event.get("EventOutcomeIndicator") in {"0", "4", "8", "12"}
    event_id = event.find("EventID")
    assert event_id is not None and event_id.get("codeSystemName") == "DCM" and event_id.get("csd-code") in codes
    for participant in message.findall("ActiveParticipant"):
        assert participant.get("UserID") and participant.get("UserIsRequestor") in {"true", "false"}
        role = participant.find("RoleIDCode")
        assert role is not None and role.get("csd-code") and role.get("codeSystemName") == "DCM"
    source = message.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID")
    for obj in message.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID") and obj.get("ParticipantObjectTypeCode") in {"1", "2", "3", "4"}
        assert obj[0].tag == "ParticipantObjectIDTypeCode" and obj[0].get("csd-code")
