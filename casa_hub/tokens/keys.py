"""Signing keys for the facility token issuer.

Keys are PEM files (one private key each), parsed once when loaded. A key's ``kid`` is its
RFC 7638 JWK thumbprint, so the same key always has the same id wherever it is published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SUPPORTED_ALGORITHMS = ("ES256", "RS256")

# RFC 7638 section 3.2: the required members of each key type, in lexicographic order.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


class KeyError_(ValueError):
    """A signing key file is missing, unreadable or of an unsupported type."""


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise KeyError_(f"cannot compute a thumbprint for key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class SigningKey:
    """One parsed private key with its algorithm, kid and public JWK."""

    private_key: Any = field(repr=False)
    alg: str
    kid: str
    public_jwk: dict[str, Any]
    source: str = ""

    @classmethod
    def from_private_key(cls, private_key: Any, source: str = "") -> SigningKey:
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            if not isinstance(private_key.curve, ec.SECP256R1):
                raise KeyError_(f"{source}: EC keys must use curve P-256 for ES256")
            alg = "ES256"
            jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        elif isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < 2048:
                raise KeyError_(f"{source}: RSA keys must have at least 2048 bits")
            alg = "RS256"
            jwk = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
        else:
            raise KeyError_(f"{source}: only EC P-256 (ES256) and RSA (RS256) keys are supported")
        kid = jwk_thumbprint(jwk)
        public = dict(jwk, kid=kid, alg=alg, use="sig")
        return cls(private_key=private_key, alg=alg, kid=kid, public_jwk=public, source=source)

    @classmethod
    def from_pem_file(cls, path: str | os.PathLike[str]) -> SigningKey:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise KeyError_(f"cannot read signing key {path}: {e.strerror}") from None
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyError_(f"{path} is not an unencrypted PEM private key") from None
        return cls.from_private_key(private_key, source=str(path))


def generate_private_key_pem(alg: str = "ES256") -> bytes:
    """A new private key for ``alg`` as unencrypted PKCS#8 PEM."""
    if alg == "ES256":
        key: Any = ec.generate_private_key(ec.SECP256R1())
    elif alg == "RS256":
        key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    else:
        raise KeyError_(f"unsupported algorithm {alg!r}; choose one of {SUPPORTED_ALGORITHMS}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_new_key(path: str | os.PathLike[str], alg: str = "ES256") -> SigningKey:
    """Create a new private key file (mode 0600) and return it parsed."""
    pem = generate_private_key_pem(alg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return SigningKey.from_pem_file(path)


def load_key_dir(directory: str | os.PathLike[str]) -> list[SigningKey]:
    """All ``*.pem`` private keys in a directory (e.g. a mounted Secret), sorted by file name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyError_(f"signing key directory {directory} does not exist")
    return [SigningKey.from_pem_file(p) for p in sorted(directory.glob("*.pem"))]
