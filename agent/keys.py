"""Key material for the JWT bearer flow: an RSA key pair and the self-signed certificate that is
uploaded to the connected app ("Use digital signatures"). Used by `solar-agent keygen` and the demo."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class KeyPair:
    private_key_path: Path      # PEM, mode 0600: the agent signs assertions with it
    certificate_path: Path      # PEM X.509: upload to the connected app
    public_key_pem: bytes


def generate_keypair(directory: Path, name: str = "solar-agent", *, bits: int = 2048,
                     common_name: str = "solar-agent", days: int = 3650) -> KeyPair:
    """Write ``<name>.key`` (0600) and ``<name>.crt`` into ``directory``; refuses to overwrite a key."""
    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / f"{name}.key"
    crt_path = directory / f"{name}.crt"
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: never clobber a key that a connected app may already trust.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256())
    )
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(key_path, crt_path, public_pem)
