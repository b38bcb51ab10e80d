"""What the fuzz found, each pinned by a test that failed before its fix.

1. A Pixel Data whose element length lies (0xFFFFFFFE in an 8 MB instance: "length:PixelData=max"
   of ``specimens.m_length_lie``) was acknowledged 0x0000 by C-STORE and accepted by STOW-RS:
   pydicom reads a value cut short by the end of the data without a word, and the bytes present
   matched Rows x Columns. The worker's full read of the spool file then asked for 4 GB: under
   ``broker.worker_memory_limit_mb`` a MemoryError (transient: retried, then the job dead),
   without a limit a lying image decoded and processed. Now the listener and STOW-RS refuse it
   (0xC210) and the decode path refuses such a file as permanent.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ribnode.dicom_checks import UndecodableError
from ribnode.ledger.store import Ledger
from ribnode.node.http.stow import decode_part
from ribnode.workers.jobs import process_instance
from tests.e2e.fuzz.harness import CALLING_AET, _chunked_sending, send_batch
from tests.e2e.fuzz.specimens import Specimen
from tests.node.helpers import dx_dataset, make_settings, running_listener, write_dataset
from tests.peers.fixtures import free_port

PIXEL_DATA_OW = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0"


def lying_pixel_data_length(tmp: Path, name: str = "lie.dcm") -> tuple[Path, str]:
    """A valid 256 x 256 DX whose Pixel Data length says 0xFFFFFFFE bytes."""
    ds = dx_dataset(rows=256, columns=256)
    path = write_dataset(ds, tmp / name)
    data = bytearray(path.read_bytes())
    at = data.rindex(PIXEL_DATA_OW)
    data[at + 8 : at + 12] = struct.pack("<I", 0xFFFFFFFE)
    path.write_bytes(bytes(data))
    return path, str(ds.SOPInstanceUID)


def test_c_store_refuses_a_lying_pixel_data_length(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, free_port(), **{"listener.allowed_senders": [{"ae_title": CALLING_AET}]})
    ledger = Ledger(settings.ledger.url)
    path, uid = lying_pixel_data_length(tmp_path)
    with running_listener(settings, ledger) as listener, _chunked_sending():  # the bytes as they are
        [sent] = send_batch(listener.port, [(Specimen(0, "lie", path.read_bytes()), path)])
    assert sent.status == "0xC210"
    assert ledger.instance(uid) is None
    assert not any(Path(settings.spool.directory).rglob("*.dcm"))
    ledger.dispose()


def test_stow_rs_part_with_a_lying_pixel_data_length_is_undecodable(tmp_path: Path) -> None:
    path, _ = lying_pixel_data_length(tmp_path)
    with pytest.raises(UndecodableError, match="declares 4294967294 bytes"):
        decode_part(path)


def test_the_decode_path_refuses_a_lying_pixel_data_length_as_permanent(tmp_path: Path) -> None:
    path, _ = lying_pixel_data_length(tmp_path)
    check = process_instance(path, None)  # an error in the check: permanent, never retried
    assert check.error is not None and "declares 4294967294 bytes" in check.error
