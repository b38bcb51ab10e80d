"""Bounded decoding (issue 29, failures 2, 3 and 7): a compressed stream's own header is checked
against the DICOM header before any decoder runs, and whatever the file's fault is ends the job
as failed at once, never retried."""

from __future__ import annotations

import random
import struct
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import JPEG2000Lossless, RLELossless

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.listener import DicomListener
from ribnode.workers.decode_guard import PixelStreamError, check_pixel_stream
from ribnode.workers.jobs import process_instance, run_job
from tests.node.helpers import c_store, dx_dataset
from tests.workers.test_jobs import make_job

BUDGET = 8192 * 8192


def _frame(ds: pydicom.Dataset) -> bytes:
    return b"".join(list(generate_fragments(ds.PixelData))[1:])


def _with_frame(ds: pydicom.Dataset, frame: bytes) -> pydicom.Dataset:
    ds.PixelData = encapsulate([frame])
    return ds


def j2k_bomb(rows: int = 256, columns: int = 256, claim: int = 60000) -> pydicom.Dataset:
    """A valid JPEG 2000 instance whose codestream SIZ marker claims ``claim`` x ``claim``."""
    ds = dx_dataset(rows=rows, columns=columns)
    ds.compress(JPEG2000Lossless)
    frame = bytearray(_frame(ds))
    siz = frame.index(b"\xff\x4f\xff\x51") + 4
    frame[siz + 4 : siz + 12] = struct.pack(">II", claim, claim)  # Xsiz, Ysiz
    return _with_frame(ds, bytes(frame))


def test_valid_streams_pass(rg1_files: dict[str, Path]) -> None:
    for name in ("RG1_UNCR", "RG1_J2KR", "RG1_J2KI"):
        check_pixel_stream(pydicom.dcmread(rg1_files[name]), BUDGET)
    for name in ("JPEG-LL.dcm", "JPGExtended.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm"):
        check_pixel_stream(pydicom.dcmread(get_testdata_file(name)), BUDGET)
    for syntax in (JPEG2000Lossless, RLELossless):
        ds = dx_dataset(rows=96, columns=80)
        ds.compress(syntax)
        check_pixel_stream(ds, BUDGET)


def test_header_mismatches_are_refused() -> None:
    with pytest.raises(PixelStreamError, match="SIZ says 60000x60000"):
        check_pixel_stream(j2k_bomb(), BUDGET)
    jpeg = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))
    jpeg.Rows = jpeg.Rows // 2  # the SOF still says the full height
    with pytest.raises(PixelStreamError, match="JPEG frame header says"):
        check_pixel_stream(jpeg, BUDGET)
    truncated = pydicom.dcmread(get_testdata_file("JPEG-LL.dcm"))
    _with_frame(truncated, _frame(truncated)[:-200])
    with pytest.raises(PixelStreamError, match="EOI"):
        check_pixel_stream(truncated, BUDGET)
    rle = dx_dataset(rows=96, columns=80)
    rle.compress(RLELossless)
    frame = bytearray(_frame(rle))
    frame[0:4] = struct.pack("<I", 3)  # 3 segments for 1 sample of 16 bits
    with pytest.raises(PixelStreamError, match="RLE header has 3 segment"):
        check_pixel_stream(_with_frame(rle, bytes(frame)), BUDGET)
    lying = dx_dataset(rows=96, columns=80)
    lying.PixelData = lying.PixelData + b"\0" * 2048  # length disagrees with the matrix
    with pytest.raises(PixelStreamError, match="Pixel Data holds"):
        check_pixel_stream(lying, BUDGET)
    with pytest.raises(PixelStreamError, match="over the budget"):
        check_pixel_stream(dx_dataset(rows=96, columns=80), 80 * 80)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 256x256 instance whose stream claims 8000x8000: refused from its header, with no
    allocation of the claimed size (a decoder would need 8000 * 8000 * 4 = 256 MB)."""
    path = tmp_path / "bomb.dcm"
    j2k_bomb(claim=8000).save_as(path, enforce_file_format=True)
    tracemalloc.start()
    try:
        check = process_instance(path, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert check.error is not None and "SIZ says 8000x8000" in check.error
    assert peak < 32 * 1024 * 1024, peak


def rle_that_panics(seed: int = 0) -> pydicom.Dataset:
    """An RLE instance with a valid header whose corrupted segments make the Rust RLE decoder
    panic (pyo3_runtime.PanicException, a BaseException)."""
    rng = random.Random(seed)
    for _ in range(500):
        ds = dx_dataset(rows=64, columns=64, seed=1)
        ds.compress(RLELossless)
        frame = bytearray(_frame(ds))
        for _ in range(rng.randint(1, 20)):
            frame[rng.randrange(64, len(frame))] = rng.randrange(256)
        _with_frame(ds, bytes(frame))
        try:
            _ = ds.pixel_array
        except BaseException as exc:  # noqa: B036 - looking for exactly that panic
            if type(exc).__name__ == "PanicException":
                return ds
    raise AssertionError("no panicking RLE stream found")


def test_corrupted_rle_fails_the_job_at_once(node_settings: Settings, ledger: Ledger, listener: DicomListener) -> None:
    ds = rle_that_panics()
    assert c_store(listener.port, [ds]) == [0]
    job = make_job(node_settings, ledger)
    run_job(job.id, node_settings, ledger)  # must not raise (the task would retry it)
    row = ledger.job_row(job.id)
    assert row.state == JobState.FAILED and row.attempts == 1
    assert "panicked" in ledger.instance(ds.SOPInstanceUID).error


def test_worker_memory_limits_come_from_the_settings(tmp_path: Path) -> None:
    """Celery replaces a pool process grown past ``broker.worker_max_memory_per_child_mb``;
    ``broker.worker_memory_limit_mb`` caps a pool process's address space (RLIMIT_AS), so an
    oversized allocation is a MemoryError, not the OOM killer."""
    import subprocess
    import sys

    from ribnode.workers.app import make_celery
    from tests.node.helpers import make_settings
    from tests.peers.fixtures import free_port

    settings = make_settings(tmp_path, free_port(), **{"broker.worker_max_memory_per_child_mb": 3000})
    assert make_celery(settings).conf.worker_max_memory_per_child == 3000 * 1024
    code = (
        "import sys\n"
        "from tests.node.helpers import make_settings\n"
        "from ribnode.workers.app import make_celery, limit_child_memory\n"
        "from pathlib import Path\n"
        f"make_celery(make_settings(Path({str(tmp_path)!r}), 1, **{{'broker.worker_memory_limit_mb': 1536}}))\n"
        "limit_child_memory()\n"
        "try:\n"
        "    bytearray(2 * 1024 ** 3)\n"
        "except MemoryError:\n"
        "    sys.exit(3)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 3, out.stderr[-2000:]
