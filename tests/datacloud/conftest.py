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


# --- the emulator as the real peer -------------------------------------------------------------

import itertools  # noqa: E402

from agent.datacloud import BulkClient, StreamingClient, TokenProvider  # noqa: E402
from agent.emulator import Emulator, EmulatorSettings  # noqa: E402
from agent.records import Reading, RecordBuilder, load_schema  # noqa: E402

SCHEMA = load_schema()
_BUILDER = RecordBuilder(SCHEMA, site_id="site-1", customer_id="001XX000003DGb2")
_prefix = itertools.count()


def make_rows(n: int, *, bad: frozenset[int] = frozenset(), device: str | None = None) -> list[tuple[str, bytes]]:
    """``n`` valid encoded records with fresh keys; indices in ``bad`` carry a string in a number field."""
    dev = device or f"inv-{next(_prefix)}"
    rows = []
    for i in range(n):
        rec = _BUILDER.encode(Reading(dev, 1_700_000_000_000 + i * 1000, "sunspec-rtu",
                                      {"ac_power_w": float(i), "operating_state": "MPPT"}))
        payload = rec.payload
        if i in bad:
            payload = payload.replace(b'"ac_power_w":' + str(float(i)).encode(), b'"ac_power_w":"lots"')
            assert payload != rec.payload
        rows.append((rec.event_id, payload))
    return rows


@pytest.fixture
async def emu(key_files: tuple[Path, bytes]) -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1])) as e:
        yield e


class Clients:
    def __init__(self, emu: Emulator, key_path: Path, session: aiohttp.ClientSession, **cfg: object) -> None:
        self.tokens = TokenProvider(make_config(emu.url, key_path, ca_file=emu.ca_file, **cfg), session)
        self.streaming = StreamingClient(self.tokens, session, "solar_agent", "solar_panel_event")
        self.bulk = BulkClient(self.tokens, session, "solar_agent", "solar_panel_event")


@pytest.fixture
def clients(emu: Emulator, key_files: tuple[Path, bytes], session: aiohttp.ClientSession) -> Clients:
    return Clients(emu, key_files[0], session)
