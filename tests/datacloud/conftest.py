"""Fixtures for the Data Cloud client tests: a key pair on disk, a config, an HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.config import DataCloudConfig


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def key_files(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> tuple[Path, bytes]:
    """(private key path with mode 0600, public key PEM)."""
    path = tmp_path / "agent.key"
    path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    path.chmod(0o600)
    public = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, public


def make_config(login_url: str, key_path: Path, **overrides: object) -> DataCloudConfig:
    cfg = DataCloudConfig(login_url=login_url, client_id="solar-agent", username="agent@solar.example",
                          private_key_path=key_path, source_name="solar_agent", timeout_seconds=5.0)
    return replace(cfg, **overrides)  # type: ignore[arg-type]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s
