"""Send DICOM datasets to one destination: a folder, DICOMweb STOW-RS, or a C-STORE SCP.

Each sender does one attempt and classifies what went wrong, so the export loop
(``ribnode.node.export``) can decide between retrying and giving up:

* :class:`TransientDeliveryError`: the destination may take the data later (connection refused,
  timeouts, HTTP 5xx/408/429, association rejected-transient or aborted, C-STORE "out of
  resources" 0xA7xx, a full disk).
* :class:`PermanentDeliveryError`: sending the same data again will fail again (HTTP 4xx,
  association rejected-permanent, SOP class not accepted, C-STORE 0xA9xx/0xCxxx, bad folder).

Messages name the destination (kind, name and address) and the value that failed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ribnode.config.redact import redact
from ribnode.config.settings import DestinationSettings

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

# HTTP statuses worth retrying (PS3.18 10.5 "STOW-RS": 503 busy; RFC 9110 408, 429).
TRANSIENT_HTTP = frozenset({408, 425, 429})
# C-STORE statuses (PS3.4 B.2.3, PS3.7 C): success, warnings (stored, coerced or similar).
CSTORE_WARNINGS = frozenset({0x0001, 0xB000, 0xB006, 0xB007})


class DeliveryError(RuntimeError):
    """A delivery attempt failed; ``destination`` names where it was going."""

    def __init__(self, destination: str, message: str) -> None:
        super().__init__(f"{destination}: {message}")
        self.destination = destination
        self.reason = message


class TransientDeliveryError(DeliveryError):
    """The destination may accept the data later: retry with backoff."""


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot help: the destination refuses the data or its configuration is wrong."""


def describe(destination: DestinationSettings) -> str:
    """A short human name of a destination for messages and the audit trail."""
    if destination.kind == "folder":
        address = str(destination.path)
    elif destination.kind == "stow":
        address = str(destination.url)
    else:
        tls = " TLS" if destination.tls_ca is not None else ""
        address = f"{destination.ae_title}@{destination.host}:{destination.port}{tls}"
    return f"{destination.kind} destination {destination.name!r} ({redact(address)})"


# -- folder -----------------------------------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(dataset: pydicom.Dataset, target: Path) -> None:
    """Write to a temp file in the target folder, fsync, rename over the target."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".dcm", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _uid_component(dataset: pydicom.Dataset, keyword: str) -> str:
    """A UID safe as a path component (PS3.5 9.1: digits and dots, at most 64 characters);
    the study UID comes from the sender, so anything else (``..``, ``/``) is refused."""
    value = str(dataset.get(keyword, "") or "")
    if len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{keyword} {value!r} is not a valid DICOM UID")
    return value


def folder_path(root: Path, dataset: pydicom.Dataset) -> Path:
    """``<root>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``; raises ``ValueError`` for a malformed UID."""
    return (
        root
        / _uid_component(dataset, "StudyInstanceUID")
        / _uid_component(dataset, "SeriesInstanceUID")
        / f"{_uid_component(dataset, 'SOPInstanceUID')}.dcm"
    )


def send_folder(datasets: Sequence[pydicom.Dataset], destination: DestinationSettings) -> None:
    """Write each dataset atomically into the destination folder (a re-send replaces)."""
    name = describe(destination)
    root = Path(str(destination.path))
    for dataset in datasets:
        try:
            target = folder_path(root, dataset)
        except ValueError as exc:
            raise PermanentDeliveryError(name, str(exc)) from exc
        try:
            write_atomic(dataset, target)
        except (PermissionError, NotADirectoryError, IsADirectoryError) as exc:
            raise PermanentDeliveryError(name, f"cannot write {target}: {exc}") from exc
        except OSError as exc:
            # ENOSPC, EIO, EDQUOT, a network mount gone: the folder may work again later.
            kind = errno.errorcode.get(exc.errno or 0, "OSError")
            raise TransientDeliveryError(name, f"cannot write {target} ({kind}): {exc}") from exc
        logger.debug("wrote %s", target)


# -- DICOMweb STOW-RS -------------------------------------------------------------------------
class _VerifyingSession(requests.Session):
    """A session whose ``verify`` wins. Plain requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE
    in the environment replace a session's CA bundle (psf/requests#3829), which would make a
    configured ``tls_ca`` silently ineffective; passing it per request keeps it."""

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self.verify)
        return super().request(*args, **kwargs)


def _stow_session(destination: DestinationSettings) -> requests.Session:
    session = _VerifyingSession()
    if destination.username is not None:
        password = destination.password.get_secret_value() if destination.password else ""
        session.auth = (destination.username, password)
    if destination.bearer_token is not None:
        token = destination.bearer_token.get_secret_value()
        session.headers["Authorization"] = f"Bearer {token}"
    if destination.tls_ca is not None:
        session.verify = str(destination.tls_ca)
    else:
        session.verify = destination.tls_verify
    if destination.tls_cert is not None:
        session.cert = (str(destination.tls_cert), str(destination.tls_key))
    return session


def _stow_failures(name: str, answer: pydicom.Dataset) -> None:
    """Raise for instances listed in the STOW-RS Failed SOP Sequence (PS3.18 10.5.3)."""
    failed = list(getattr(answer, "FailedSOPSequence", []) or [])
    if not failed:
        return
    reasons = [int(getattr(item, "FailureReason", 0x0110)) for item in failed]
    listing = ", ".join(
        f"{getattr(item, 'ReferencedSOPInstanceUID', '?')} (0x{reason:04X})" for item, reason in zip(failed, reasons)
    )
    message = f"STOW-RS refused {len(failed)} instance(s): {listing}"
    if all(0xA700 <= r <= 0xA7FF or r == 0x0110 for r in reasons):
        raise TransientDeliveryError(name, message)
    raise PermanentDeliveryError(name, message)


def send_stow(datasets: Sequence[pydicom.Dataset], destination: DestinationSettings) -> None:
    """POST the datasets in one STOW-RS request (dicomweb-client), classifying failures."""
    from dicomweb_client import DICOMwebClient

    name = describe(destination)
    session = _stow_session(destination)
    try:
        client = DICOMwebClient(str(destination.url), session=session, timeout=destination.timeout_s)
        client.set_http_retry_params(retry=False)  # our own backoff decides
        answer = client.store_instances(list(datasets))
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        body = exc.response.text[:300] if exc.response is not None else ""
        message = f"STOW-RS answered HTTP {status}: {body}"
        if status >= 500 or status in TRANSIENT_HTTP:
            raise TransientDeliveryError(name, message) from exc
        raise PermanentDeliveryError(name, message) from exc
    except requests.exceptions.SSLError as exc:
        raise PermanentDeliveryError(name, f"TLS failure: {exc}") from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientDeliveryError(name, redact(f"cannot reach {destination.url}: {exc}")) from exc
    finally:
        session.close()
    _stow_failures(name, answer)


# -- DIMSE C-STORE ----------------------------------------------------------------------------
def _transfer_syntax(dataset: pydicom.Dataset) -> str:
    meta = getattr(dataset, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid else str(ExplicitVRLittleEndian)


def _tls_args(destination: DestinationSettings) -> tuple[ssl.SSLContext, str] | None:
    """Client TLS context for DICOM TLS (PS3.15 B.1): verify the SCP, optional client cert."""
    if destination.tls_ca is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(destination.tls_ca))
    if destination.tls_cert is not None:
        context.load_cert_chain(str(destination.tls_cert), str(destination.tls_key))
    return context, str(destination.host)


def _association_failure(name: str, assoc: object) -> DeliveryError:
    """Explain why an association was not established (PS3.8 9.3.4 A-ASSOCIATE-RJ)."""
    if getattr(assoc, "is_rejected", False):
        primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
        result = getattr(primitive, "result", None)
        source = getattr(primitive, "result_source", None)
        diagnostic = getattr(primitive, "diagnostic", None)
        message = f"association rejected (result 0x{result or 0:02X}, source {source}, reason {diagnostic})"
        if result == 0x02:  # rejected-transient
            return TransientDeliveryError(name, message)
        return PermanentDeliveryError(name, message)
    rejected = list(getattr(assoc, "rejected_contexts", []) or [])
    if rejected and not list(getattr(assoc, "accepted_contexts", []) or []):
        # The SCP answered but took none of our SOP classes; pynetdicom then aborts.
        classes = sorted({str(cx.abstract_syntax) for cx in rejected})
        return PermanentDeliveryError(name, f"SOP class(es) {', '.join(classes)} not accepted by the SCP")
    # pynetdicom reports a refused TCP connection as an abort too.
    return TransientDeliveryError(name, "no association (connection refused, timed out or aborted by the peer)")


def _store_status(name: str, dataset: pydicom.Dataset, status: pydicom.Dataset) -> None:
    """Raise for a failed C-STORE response (PS3.4 B.2.3; empty: no response, aborted)."""
    sop = dataset.SOPInstanceUID
    if "Status" not in status:
        raise TransientDeliveryError(name, f"no C-STORE response for {sop} (timeout or abort)")
    code = int(status.Status)
    if code == 0x0000:
        return
    if code in CSTORE_WARNINGS:
        logger.warning("%s: C-STORE of %s stored with warning 0x%04X", name, sop, code)
        return
    comment = getattr(status, "ErrorComment", "")
    message = f"C-STORE of {sop} failed with status 0x{code:04X} {comment}".rstrip()
    if 0xA700 <= code <= 0xA7FF:  # out of resources
        raise TransientDeliveryError(name, message)
    raise PermanentDeliveryError(name, message)


def send_cstore(
    datasets: Sequence[pydicom.Dataset],
    destination: DestinationSettings,
    calling_ae_title: str = "RIBNODE",
) -> None:
    """C-STORE the datasets over one association (pynetdicom SCU), classifying failures."""
    from pynetdicom import AE

    name = describe(destination)
    ae = AE(ae_title=destination.calling_ae_title or calling_ae_title)
    ae.acse_timeout = destination.timeout_s
    ae.dimse_timeout = destination.timeout_s
    ae.network_timeout = destination.timeout_s
    ae.connection_timeout = destination.timeout_s
    contexts: dict[str, set[str]] = {}
    for dataset in datasets:
        syntaxes = contexts.setdefault(str(dataset.SOPClassUID), set())
        syntaxes.update({_transfer_syntax(dataset), str(ExplicitVRLittleEndian)})
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes) + [str(ImplicitVRLittleEndian)])
    try:
        tls = _tls_args(destination)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentDeliveryError(name, f"cannot load TLS files: {exc}") from exc
    assoc = ae.associate(
        str(destination.host),
        int(destination.port or 0),
        ae_title=str(destination.ae_title),
        tls_args=tls,
    )
    if not assoc.is_established:
        raise _association_failure(name, assoc)
    try:
        for dataset in datasets:
            _store_one(name, assoc, dataset)
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(name: str, assoc: object, dataset: pydicom.Dataset) -> None:
    try:
        status = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except ValueError as exc:
        # pynetdicom: no accepted presentation context for this SOP class / transfer syntax.
        raise PermanentDeliveryError(name, f"SOP class {dataset.SOPClassUID} not accepted by the SCP: {exc}") from exc
    except RuntimeError as exc:  # association released or aborted under us
        raise TransientDeliveryError(name, f"association lost: {exc}") from exc
    _store_status(name, dataset, status)
