"""DICOM TLS (PS3.15 B.1): a CA, a server and a client certificate made here with
`cryptography`; dcmtk storescu/echoscu over TLS and client-certificate verification."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ribnode.ledger.store import Ledger
from tests.node.helpers import c_store, dx_dataset, make_settings, running_listener, write_dataset
from tests.peers.fixtures import free_port, storescu


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool, server: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        usage = x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """CA, server (127.0.0.1) and client certificates, PEM files."""
    folder = tmp_path / "pki"
    folder.mkdir()
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ribnode test CA", ca_key, "ribnode test CA", ca_key, ca=True, server=False)
    out = {}
    out["ca"], _ = _write(folder, "ca", ca, ca_key)
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        out[name], out[f"{name}_key"] = _write(
            folder, name, _cert(name, key, "ribnode test CA", ca_key, False, server), key
        )
    return out


def tls_settings(tmp_path: Path, pki: dict[str, Path], verify_client: bool):
    return make_settings(
        tmp_path,
        free_port(),
        **{
            "listener.tls_cert": str(pki["server"]),
            "listener.tls_key": str(pki["server_key"]),
            "listener.tls_ca": str(pki["ca"]),
            "listener.tls_verify_client": verify_client,
        },
    )


def test_storescu_over_tls_with_client_certificate(tmp_path: Path, pki) -> None:
    settings = tls_settings(tmp_path, pki, verify_client=True)
    ledger = Ledger(settings.ledger.url)
    path = write_dataset(dx_dataset(), tmp_path / "a.dcm")
    tls = ["+tls", str(pki["client_key"]), str(pki["client"]), "+cf", str(pki["ca"])]
    with running_listener(settings, ledger) as lst:
        result = storescu([path], lst.port, called_aet="RIBNODE", options=tls)
        assert result.returncode == 0, result.stderr
        plain = storescu([path], lst.port, called_aet="RIBNODE")  # no TLS: refused
        assert plain.returncode != 0
    assert ledger.summary().instances == {"pending": 1}


def test_client_without_certificate_refused_when_verification_on(tmp_path: Path, pki) -> None:
    settings = tls_settings(tmp_path, pki, verify_client=True)
    ledger = Ledger(settings.ledger.url)
    path = write_dataset(dx_dataset(), tmp_path / "a.dcm")
    with running_listener(settings, ledger) as lst:
        anonymous = storescu([path], lst.port, called_aet="RIBNODE", options=["+tla", "+cf", str(pki["ca"])])
        assert anonymous.returncode != 0
    assert ledger.summary().instances == {}


def test_pynetdicom_tls_client_without_verification(tmp_path: Path, pki) -> None:
    settings = tls_settings(tmp_path, pki, verify_client=False)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"]))
    client.check_hostname = False
    with running_listener(settings) as lst:
        assert c_store(lst.port, [dx_dataset()], ssl_context=client) == [0]
