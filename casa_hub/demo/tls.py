"""A throwaway CA and a ``localhost`` server certificate for the demo's data cache and the XRootD tests.

The CA is never added to the machine's trust store: the XRootD servers see it in a private mount
namespace, the facility's clients through ``X509_CERT_DIR`` / ``REQUESTS_CA_BUNDLE`` (see
``casa_hub.demo.data_cache``). Its private key is never written."""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_test_ca(directory: Path, days: int = 1) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``localhost`` (127.0.0.1, ::1).

    Returns (ca.pem, server.pem, server.key); the CA's private key is never written."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"casa-hub local CA {secrets.token_hex(4)}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(_pem_key(key))
    os.chmod(key_pem, 0o600)
    return ca_pem, cert_pem, key_pem


def hashed_ca_dir(ca_pem: Path, directory: Path) -> Path:
    """An OpenSSL-style CA directory (``<subject hash>.0``), as XRootD's clients expect."""
    directory.mkdir(mode=0o755)
    digest = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(ca_pem)],
                            capture_output=True, text=True, check=True).stdout.strip()
    shutil.copy(ca_pem, directory / f"{digest}.0")
    return directory
