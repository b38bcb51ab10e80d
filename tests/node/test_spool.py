"""The spool: atomic durable writes, safe names, and a full disk."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from ribnode.node.spool import Spool, safe_name


def test_write_is_atomic_and_named_by_uids(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rel = spool.write("1.2.3", "1.2.3.4", b"DICM-bytes")
    assert rel == "1.2.3/1.2.3.4.dcm"
    assert spool.path(rel).read_bytes() == b"DICM-bytes"
    assert [p.name for p in (tmp_path / "spool" / "1.2.3").iterdir()] == ["1.2.3.4.dcm"]
    spool.write("1.2.3", "1.2.3.4", b"second")  # replace, never a partial file
    assert spool.path(rel).read_bytes() == b"second"


@pytest.mark.parametrize("uid", ["../../etc", "1.2/3", "a" * 80, "1.2.3 ", ""])
def test_unsafe_uids_never_escape_the_spool(tmp_path: Path, uid: str) -> None:
    name = safe_name(uid)
    assert "/" not in name and ".." not in name and name.startswith("x")
    spool = Spool(tmp_path / "spool")
    path = spool.path(spool.write(uid, uid, b"x"))
    assert path.resolve().is_relative_to((tmp_path / "spool").resolve())


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 256 KiB tmpfs (root can mount here); unmounted at teardown."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:  # not root: test_listener's RLIMIT_FSIZE test covers the failure path
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_raises_and_leaves_nothing(tiny_fs: Path) -> None:
    spool = Spool(tiny_fs)
    with pytest.raises(OSError) as info:
        spool.write("1.2.3", "1.2.3.4", b"\0" * (1 << 20))
    assert info.value.errno == errno.ENOSPC
    assert list((tiny_fs / "1.2.3").iterdir()) == []
    assert spool.path(spool.write("1.2.3", "1.2.3.5", b"small")).read_bytes() == b"small"
