"""A real mosquitto broker for tests: own config in a tmp dir, a free loopback port, killed by pid.

Use ``mosquitto_broker`` (plain, persistence on so persistent sessions survive ``restart()``) or
``mosquitto_tls`` (one mqtts listener with a self-signed CA made with ``cryptography``). Import
the fixtures into a test module or a conftest: ``from tests.peers.mosquitto import mosquitto_broker``.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.simulators.broker import Broker, find_mosquitto, free_port

__all__ = ["Broker", "find_mosquitto", "free_port"]


def _make_tls(workdir: Path) -> Path:
    """A self-signed CA and a server cert for 127.0.0.1/localhost; returns the CA file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "solar-agent test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (workdir / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                                           serialization.NoEncryption()))
    ca_file = workdir / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_file


def _broker(tmp_path_factory: pytest.TempPathFactory, tls: bool) -> Iterator[Broker]:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto binary not found in PATH or /usr/sbin (apt-get install mosquitto)")
    workdir = tmp_path_factory.mktemp("mosquitto-tls" if tls else "mosquitto")
    broker = Broker(binary, workdir, free_port(), tls=tls)
    if tls:
        broker.ca_file = _make_tls(workdir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def mosquitto_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A plain mqtt:// broker on 127.0.0.1, shared by a test module. Use unique topics per test."""
    yield from _broker(tmp_path_factory, tls=False)


@pytest.fixture(scope="module")
def mosquitto_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """An mqtts:// broker with a self-signed CA (``broker.ca_file``)."""
    yield from _broker(tmp_path_factory, tls=True)
