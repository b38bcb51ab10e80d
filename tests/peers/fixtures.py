"""Fixtures that start real peers for the tests (owned by the peers/export engineer).

Registered for the whole suite in ``tests/conftest.py``. Everything here talks to a real
program or server on loopback: Orthanc (Debian package, DICOMweb plugin), dcmtk, dicom3tools,
PostgreSQL and Redis (``make services`` starts the last two).

Helpers importable by tests (``from tests.peers.fixtures import ...``):
    free_port() -> int                            pydicom_data_dir() -> Path
    dciodvfy(path) -> (errors, warnings)   (raw)  assert_dicom_valid(path) -> warnings
    dcmdump(path, *options) -> str                dsrdump(path, *options) -> str
    echoscu(port, called_aet=..., calling_aet=..., host=...) -> CompletedProcess
    storescu(paths, port, called_aet=..., calling_aet=..., host=..., options=()) -> CompletedProcess
Fixtures:
    free_port (int), orthanc_factory, orthanc, rg1_files, rg3_files,
    postgres_url, postgres_fresh_url, redis_url
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ribnode.demo.orthanc import OrthancServer
from ribnode.demo.orthanc import free_port as _free_port

POSTGRES_URL = "postgresql+psycopg://ribnode:ribnode@127.0.0.1:5432/ribnode_test"
REDIS_BASE = "redis://127.0.0.1:6379"
RG_NAMES = ("UNCR", "UNCI", "J2KR", "J2KI")
TOOL_TIMEOUT_S = 120


# -- plain helpers --------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, outside the kernel's ephemeral port range."""
    return _free_port()


def _run_tool(args: Sequence[str | os.PathLike[str]], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command-line tool, capturing text output; fail with its output when it fails."""
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(str(a) for a in args)} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Run dicom3tools ``dciodvfy`` on a file: its (error lines, warning lines)."""
    result = _run_tool(["dciodvfy", "-new", path], check=False)
    lines = (result.stdout + "\n" + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


#: dicom3tools 2022 (Debian) predates Synthetic Data (0008,001C, DICOM 2024b) and reports it as
#: an unknown even-group attribute, an "Error" that is only its old dictionary
#: (../shared/guides/dicom-outputs.md, "Viewer pitfalls"). Exactly that line is tolerated.
KNOWN_DICTIONARY_GAPS = ("(0008,001c)",)


def _dictionary_gap(line: str) -> bool:
    return "not a recognized standard attribute" in line and any(tag in line.lower() for tag in KNOWN_DICTIONARY_GAPS)


def assert_dicom_valid(path: Path | str) -> list[str]:
    """Fail the test if ``dciodvfy`` reports any ``Error`` line (other than the Synthetic Data
    dictionary gap of dicom3tools 2022); return its warnings."""
    errors, warnings = dciodvfy(path)
    errors = [line for line in errors if not _dictionary_gap(line)]
    if errors:
        pytest.fail(f"dciodvfy reports {len(errors)} error(s) in {path}:\n" + "\n".join(errors))
    return warnings


def dcmdump(path: Path | str, *options: str) -> str:
    """dcmtk ``dcmdump`` output of a file."""
    return _run_tool(["dcmdump", *options, path]).stdout


def dsrdump(path: Path | str, *options: str) -> str:
    """dcmtk ``dsrdump`` output of a structured report (fails if dcmtk cannot parse the SR)."""
    return _run_tool(["dsrdump", *options, path]).stdout


def echoscu(
    port: int,
    called_aet: str = "ANY-SCP",
    calling_aet: str = "ECHOSCU",
    host: str = "127.0.0.1",
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """dcmtk ``echoscu`` (C-ECHO) against host:port; returncode 0 means success."""
    return _run_tool(["echoscu", "-aet", calling_aet, "-aec", called_aet, host, str(port)], check=check)


def storescu(
    paths: Sequence[Path | str],
    port: int,
    called_aet: str = "ANY-SCP",
    calling_aet: str = "STORESCU",
    host: str = "127.0.0.1",
    options: Sequence[str] = (),
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """dcmtk ``storescu`` (C-STORE) of files to host:port; returncode 0 means all stored.

    ``options`` pass through (``-xv`` to propose JPEG 2000 lossless, ``-xw`` lossy,
    ``+sd`` to scan directories, ...).
    """
    return _run_tool(
        ["storescu", "-aet", calling_aet, "-aec", called_aet, *options, host, str(port), *paths],
        check=check,
    )


def pydicom_data_dir() -> Path:
    """The folder of the pydicom-data package's DICOM files (``data_store/data``)."""
    try:
        import data_store
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("pydicom-data is not installed; run `make venv`") from exc
    folder = Path(data_store.__file__).parent / "data"
    if not folder.is_dir():
        raise RuntimeError(f"pydicom-data folder {folder} does not exist")
    return folder


def _rg_files(prefix: str) -> dict[str, Path]:
    folder = pydicom_data_dir()
    files = {f"{prefix}_{kind}": folder / f"{prefix}_{kind}.dcm" for kind in RG_NAMES}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        pytest.fail(f"pydicom-data files missing: {', '.join(missing)}")
    return files


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(name="free_port")
def _free_port_fixture() -> int:
    """A TCP port free on 127.0.0.1 (the fixture form of ``free_port()``)."""
    return free_port()


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., OrthancServer]]:
    """A function that starts Orthanc servers in ``tmp_path``; all are stopped at teardown.

    Keyword arguments go to ``OrthancServer`` (``modalities``, ``ae_title``, ``username``...).
    The returned server is started, unless ``start=False``: then its ports and URLs are known
    but nothing listens yet (a PACS that is down; ``server.start()`` brings it up).
    """
    servers: list[OrthancServer] = []

    def make(start: bool = True, **kw: Any) -> OrthancServer:
        if not start:
            kw.setdefault("fixed_ports", True)  # its address is handed out before it runs
        server = OrthancServer(tmp_path / f"orthanc-{len(servers)}", **kw)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.request_stop()
    for server in servers:
        server.stop()


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., OrthancServer]) -> OrthancServer:
    """One started Orthanc (AE ``ORTHANC``, DICOMweb on, no modalities, no auth)."""
    return orthanc_factory()


@pytest.fixture(scope="session")
def rg1_files() -> dict[str, Path]:
    """The RG1 CR chest radiograph of pydicom-data: RG1_UNCR, RG1_UNCI, RG1_J2KR, RG1_J2KI."""
    return _rg_files("RG1")


@pytest.fixture(scope="session")
def rg3_files() -> dict[str, Path]:
    """The RG3 extremity radiograph of pydicom-data: RG3_UNCR, RG3_UNCI, RG3_J2KR, RG3_J2KI."""
    return _rg_files("RG3")


def _check_postgres(url: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {url}: {exc.orig}. Run `make services` "
            "(starts PostgreSQL and Redis and creates role ribnode / database ribnode_test)."
        )
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the shared test database; fails (never skips) when PostgreSQL is down."""
    _check_postgres(POSTGRES_URL)
    return POSTGRES_URL


@pytest.fixture
def postgres_fresh_url(postgres_url: str) -> Iterator[str]:
    """A brand-new empty PostgreSQL database for one test, dropped afterwards.

    Engineers and CI runs share ``ribnode_test``; a private database keeps a test's
    ``create_all``/migrations from racing another run's.
    """
    import sqlalchemy

    name = f"ribnode_t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


_CLAIM_KEY = "ribnode:test-claim"


@pytest.fixture
def redis_url() -> Iterator[str]:
    """``redis://127.0.0.1:6379/<n>``: a database number claimed for this test and flushed.

    Several test runs share one Redis, so a database 1-15 is claimed with ``SET NX`` (expiring
    after 15 minutes, in case a run is killed) and flushed before and after the test.
    """
    import redis

    client = redis.Redis.from_url(f"{REDIS_BASE}/0", socket_connect_timeout=3)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_BASE}: {exc}. Run `make services`.")
    finally:
        client.close()
    token = f"{os.getpid()}-{uuid.uuid4().hex}"
    for db in range(1, 16):
        conn = redis.Redis.from_url(f"{REDIS_BASE}/{db}")
        try:
            if not conn.set(_CLAIM_KEY, token, nx=True, ex=900):
                continue
            conn.flushdb()
            conn.set(_CLAIM_KEY, token, ex=900)
            yield f"{REDIS_BASE}/{db}"
            conn.flushdb()
            return
        finally:
            conn.close()
    pytest.fail("all Redis databases 1-15 are claimed by other test runs; try again later")
