"""The spool: durable, atomic storage of received instances, one folder per study.

An instance is written to a temporary file in its study folder, fsynced, renamed into place
with ``os.replace`` (atomic on POSIX) and the folder is fsynced, all before the C-STORE success
status goes back. Readers therefore never see a partial file, and a crash after "success" never
loses the instance. Layout: ``<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# PS3.5 9.1: a UID is digits and dots, at most 64 characters.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# Owner only, whatever the umask: the spool holds patient data. Listener and workers run as
# the same service user (deploy/systemd).
FILE_MODE = 0o600
DIR_MODE = 0o700
#: Folder of the spool (``<spool>/quarantine``) where start-up recovery moves files it cannot
#: register; never a study folder name (those are UIDs or ``x`` + hash).
QUARANTINE = "quarantine"
# Folder of instances still arriving over the network (STOW-RS parts), before their UIDs are known.
INCOMING = ".incoming"


def safe_name(uid: str) -> str:
    """A file-system name for a UID. Valid UIDs are used as they are; anything else (which
    could hold ``/`` or ``..``) becomes ``x`` plus a hash, so a sender can never write outside
    the spool."""
    if len(uid) <= 64 and _UID.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) and make it 0700 whatever the umask. An existing
    folder is tightened too: the spool and the ledger hold patient data."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(path, DIR_MODE)
    except PermissionError as exc:  # a folder (mount point) owned by another user: say so, go on
        logger.warning("cannot make %s private (0700): %s", path, exc)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool folder. ``write`` is safe to call from many association threads at once."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).resolve()
        make_private_dir(self.directory)

    def relative_path(self, study_uid: str, sop_uid: str) -> str:
        """Where an instance lives, relative to the spool folder (stored in the ledger)."""
        return f"{safe_name(study_uid)}/{safe_name(sop_uid)}.dcm"

    def path(self, relative: str) -> Path:
        """The absolute path of a spool-relative path from the ledger."""
        return self.directory / relative

    def write(self, study_uid: str, sop_uid: str, data: bytes) -> str:
        """Write ``data`` durably and atomically; return the spool-relative path.

        Raises OSError (ENOSPC, EDQUOT, EIO, ...) with no partial file left behind."""
        relative = self.relative_path(study_uid, sop_uid)
        target = self.path(relative)
        folder = target.parent
        if not folder.is_dir():
            folder.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(folder, DIR_MODE)  # mkdir's mode is masked by the umask
            _fsync_dir(self.directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), FILE_MODE)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(Path(tmp))
            raise
        _fsync_dir(folder)
        return relative

    def incoming(self) -> tuple[BinaryIO, Path]:
        """A new temporary file for an instance whose UIDs are not known yet (a STOW-RS part
        streamed from the network): ``<spool>/.incoming/.part.*.tmp``, open for writing. Hand
        it to :meth:`adopt` once written, or delete it. Spool recovery removes leftovers."""
        folder = self.directory / INCOMING
        if not folder.is_dir():
            make_private_dir(folder)
            _fsync_dir(self.directory)
        fd, tmp = tempfile.mkstemp(prefix=".part.", suffix=".tmp", dir=folder)
        os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, "wb"), Path(tmp)

    def adopt(self, tmp: Path, study_uid: str, sop_uid: str) -> str:
        """Make a closed file from :meth:`incoming` durable and move it atomically into place,
        exactly as :meth:`write` does (fsync, ``os.replace``, fsync the folder); return the
        spool-relative path. Raises OSError with the temporary file removed."""
        relative = self.relative_path(study_uid, sop_uid)
        target = self.path(relative)
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            if not target.parent.is_dir():
                make_private_dir(target.parent)
                _fsync_dir(self.directory)
            os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(target.parent)
        return relative

    def quarantine(self, path: Path) -> Path:
        """Move a spool file to ``<spool>/quarantine/<its study folder>/`` (same file system:
        an atomic rename); returns where it went."""
        target_dir = self.directory / QUARANTINE / path.parent.name
        make_private_dir(target_dir)
        target = target_dir / path.name
        os.replace(path, target)
        _fsync_dir(target_dir)
        return target

    def exists(self, relative: str) -> bool:
        """True when the spool file for a ledger path is present."""
        return self.path(relative).is_file()


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:  # the original write error matters more; log this one
        logger.warning("could not remove temporary spool file %s: %s", path, exc)
