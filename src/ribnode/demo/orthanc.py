"""Start and drive a real Orthanc PACS (the Debian ``orthanc`` package) on loopback.

ribnode talks to a PACS; the demo and the tests need one that is real, not a mock. This module
starts the ``Orthanc`` binary with a JSON configuration written to a work directory (storage,
index, log and config all inside it), loads only the DICOMweb plugin, waits until the REST API
and the DICOM port answer, and stops it cleanly. It is product code (``ribnode demo`` may start
its own Orthanc), so it imports no test library, and it stays torch-free like all of
``ribnode.node``.

Orthanc 1.10 cannot bind its HTTP server to one address; ``RemoteAccessAllowed: false`` makes
it refuse every client that is not on loopback, which is what we want beside a test or demo.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc"))
HOST = "127.0.0.1"


class OrthancError(RuntimeError):
    """Orthanc could not be started, or answered a REST call with an error."""


@dataclass(frozen=True)
class DicomModality:
    """A remote DICOM node Orthanc knows by name (``DicomModalities``)."""

    ae_title: str
    host: str
    port: int

    def as_config(self) -> dict[str, Any]:
        """The Orthanc JSON form; store and echo allowed, no transcoding surprises."""
        return {
            "AET": self.ae_title,
            "Host": self.host,
            "Port": self.port,
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": True,
            "AllowMove": True,
            "AllowGet": True,
        }


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux; else the default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now, chosen *outside* the kernel's ephemeral
    range: a port handed out for a server that starts later (or restarts) cannot then be taken
    by some outgoing connection in between, only by another explicit pick (rare)."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10000, 32768) if not low <= p <= high] or list(range(1024, low))
    for _ in range(200):
        port = random.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # crowded: let the kernel pick
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_dicomweb_plugin(dirs: Iterable[Path] = PLUGIN_DIRS) -> Path:
    """The DICOMweb plugin shared library of the Debian ``orthanc-dicomweb`` package."""
    for folder in dirs:
        for candidate in sorted(folder.glob("libOrthancDicomWeb.so*")):
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise OrthancError(
        f"Orthanc DICOMweb plugin not found in {searched}; install the Debian package 'orthanc-dicomweb' (make system)"
    )


def _port_open(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _as_modality(value: DicomModality | tuple[str, str, int]) -> DicomModality:
    if isinstance(value, DicomModality):
        return value
    ae_title, host, port = value
    return DicomModality(ae_title=ae_title, host=host, port=int(port))


class OrthancServer:
    """One Orthanc process with its own storage, index, config and log under ``work_dir``.

    Use as a context manager::

        with OrthancServer(tmp / "pacs", modalities={"RIBNODE": ("RIBNODE", "127.0.0.1", 11112)}) as pacs:
            oid = pacs.upload(Path("RG1_UNCR.dcm"))
            pacs.send_to_modality("RIBNODE", [oid])

    Ports left as ``None`` are picked free; if Orthanc then fails to bind them (another process
    took one in between) the start is retried with new ports.
    """

    def __init__(
        self,
        work_dir: Path | str,
        *,
        http_port: int | None = None,
        dicom_port: int | None = None,
        ae_title: str = "ORTHANC",
        modalities: Mapping[str, DicomModality | tuple[str, str, int]] | None = None,
        username: str | None = None,
        password: str | None = None,
        overwrite_instances: bool = True,
        dicomweb: bool = True,
        binary: str = "Orthanc",
        startup_timeout_s: float = 30.0,
        request_timeout_s: float = 60.0,
        extra_config: Mapping[str, Any] | None = None,
        fixed_ports: bool = False,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("username and password must be given together (or neither)")
        self.work_dir = Path(work_dir).resolve()
        # Keep the ports even on a clash (fail instead) once they are handed out.
        self._fixed_ports = fixed_ports or (http_port is not None and dicom_port is not None)
        self.http_port = http_port if http_port is not None else free_port()
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.ae_title = ae_title
        self.modalities = {k: _as_modality(v) for k, v in (modalities or {}).items()}
        self.username = username
        self.password = password
        self.overwrite_instances = overwrite_instances
        self.dicomweb = dicomweb
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.request_timeout_s = request_timeout_s
        self.extra_config = dict(extra_config or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._session = requests.Session()
        if username is not None and password is not None:
            self._session.auth = (username, password)

    # -- paths and URLs -------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        """The JSON configuration file Orthanc was started with."""
        return self.work_dir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        """Orthanc's stdout and stderr (its log)."""
        return self.work_dir / "orthanc.log"

    @property
    def storage_dir(self) -> Path:
        """Orthanc's storage area and SQLite index."""
        return self.work_dir / "db"

    @property
    def url(self) -> str:
        """Base URL of the REST API, without a trailing slash."""
        return f"http://{HOST}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        """Base URL of the DICOMweb services (QIDO-RS, WADO-RS, STOW-RS)."""
        return f"{self.url}/dicom-web"

    @property
    def running(self) -> bool:
        """True while the Orthanc process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Orthanc's log, for error messages."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- configuration --------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this server runs with."""
        cfg: dict[str, Any] = {
            "Name": f"ribnode-{self.ae_title}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.username is not None,
            "RegisteredUsers": ({self.username: self.password} if self.username is not None else {}),
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpDescribeErrors": True,
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {k: m.as_config() for k, m in self.modalities.items()},
            "DicomAssociationCloseDelay": 0,
            "DicomScuTimeout": 30,
            "UnknownSopClassAccepted": True,
            "OverwriteInstances": self.overwrite_instances,
            "StableAge": 2,
            "SaveJobs": False,
            "MetricsEnabled": False,
            "DeidentifyLogs": False,
            "LuaScripts": [],
            "Plugins": [str(find_dicomweb_plugin())] if self.dicomweb else [],
            "DicomWeb": {"Enable": self.dicomweb, "Root": "/dicom-web/", "EnableWado": True},
        }
        cfg.update(self.extra_config)
        return cfg

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> OrthancServer:
        """Write the config, start Orthanc, wait until it answers; retry on a port clash."""
        if self.running:
            return self
        if shutil.which(self.binary) is None:
            raise OrthancError(
                f"Orthanc binary {self.binary!r} not on PATH; install the Debian package 'orthanc' (make system)"
            )
        attempts = 1 if self._fixed_ports else 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                self._fixed_ports = True  # a restart must come back on the same ports
                return self
            except OrthancError:
                self.stop()
                if attempt == attempts:
                    raise
                logger.warning("Orthanc did not start (attempt %d); retrying on new ports", attempt)
                self.http_port, self.dicom_port = free_port(), free_port()
        return self

    def _start_once(self) -> None:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                [self.binary, str(self.config_path)],
                cwd=self.work_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "LC_ALL": "C"},
            )
        finally:
            log.close()
        self._wait_ready()
        logger.info(
            "Orthanc %s up: http %d, dicom %d (%s)",
            self.ae_title,
            self.http_port,
            self.dicom_port,
            self.work_dir,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                code = self._process.returncode if self._process else None
                raise OrthancError(
                    f"Orthanc exited with code {code} while starting; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                answer = self._session.get(f"{self.url}/system", timeout=1.0)
                if answer.status_code == 200 and _port_open(self.dicom_port):
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise OrthancError(
            f"Orthanc did not answer {self.url}/system within {self.startup_timeout_s} s; "
            f"log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate Orthanc (SIGTERM), wait, then kill it if it does not exit.

        Orthanc needs about 3 s to shut down (its HTTP and DICOM servers poll); to stop
        several at once, call ``request_stop()`` on each, then ``stop()``.
        """
        self.request_stop()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("Orthanc %s ignored SIGTERM for %.0f s; killing", self.ae_title, timeout_s)
            process.kill()
            process.wait(timeout=timeout_s)

    def request_stop(self) -> None:
        """Send SIGTERM without waiting (``stop()`` waits)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self._session.close()  # open keep-alive connections delay Orthanc's HTTP shutdown
        process.terminate()

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- REST -----------------------------------------------------------------------------
    def rest(self, method: str, path: str, check: bool = True, **kw: Any) -> requests.Response:
        """One REST call (``requests`` keyword arguments pass through).

        Raises ``OrthancError`` on an HTTP error status unless ``check`` is false.
        """
        kw.setdefault("timeout", self.request_timeout_s)
        url = f"{self.url}/{path.lstrip('/')}"
        answer = self._session.request(method, url, **kw)
        if check and answer.status_code >= 400:
            raise OrthancError(f"Orthanc {method} {path} answered HTTP {answer.status_code}: {answer.text[:500]}")
        return answer

    def upload(self, source: Path | str | bytes) -> str:
        """Store one DICOM file (path or bytes) with POST /instances; its Orthanc ID."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        answer = self.rest("POST", "/instances", data=data, headers={"Content-Type": "application/dicom"}).json()
        return str(answer["ID"])

    def add_modality(self, name: str, ae_title: str, host: str, port: int) -> None:
        """Declare (or replace) a DICOM modality at run time (PUT /modalities/{name})."""
        modality = DicomModality(ae_title=ae_title, host=host, port=port)
        self.rest("PUT", f"/modalities/{name}", json=modality.as_config())
        self.modalities[name] = modality

    def send_to_modality(self, name: str, resources: list[str]) -> dict[str, Any]:
        """C-STORE the given Orthanc resources (any level) to a modality; waits until done."""
        if name not in self.modalities:
            known = ", ".join(sorted(self.modalities)) or "none"
            raise OrthancError(f"modality {name!r} is not configured in Orthanc (known: {known})")
        answer = self.rest(
            "POST",
            f"/modalities/{name}/store",
            json={"Resources": list(resources), "Synchronous": True},
        )
        result: dict[str, Any] = answer.json()
        return result

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return [str(i) for i in self.rest("GET", "/instances").json()]

    def find_study(self, study_uid: str) -> str | None:
        """The Orthanc ID of the study with this Study Instance UID, or None."""
        found = self.rest(
            "POST",
            "/tools/find",
            json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
        ).json()
        return str(found[0]) if found else None

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        """The series of a study (Orthanc's expanded series records); empty if no such study."""
        study_id = self.find_study(study_uid)
        if study_id is None:
            return []
        series: list[dict[str, Any]] = self.rest("GET", f"/studies/{study_id}/series").json()
        return series
