"""The Data Cloud emulator as a test peer, for every suite that talks to Data Cloud.

    priv, pub = make_keypair(tmp_path)
    async with running_emulator(tmp_path, public_key_pem=pub) as emu:
        ...  # emu.url, emu.store, emu.set_faults(Faults(...)), await emu.wait_landed(n, 5)

``make_assertion`` builds a JWT bearer assertion the way Salesforce expects it, for tests that
talk to the token endpoints directly (not through the agent's client).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent.emulator import Emulator, EmulatorSettings

CLIENT_ID = "solar-agent"
USERNAME = "agent@solar.example"


def make_keypair(tmp_path: Path, name: str = "jwt") -> tuple[Path, bytes]:
    """A fresh RSA key: (private key PEM file with mode 0600, public key PEM bytes)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / f"{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return path, public


def make_assertion(
    private_key_path: Path, *, iss: str = CLIENT_ID, sub: str = USERNAME,
    aud: str = "https://login.salesforce.com", exp_in: float = 120, extra: dict[str, Any] | None = None,
) -> str:
    """An RS256 JWT bearer assertion (claims iss, sub, aud, exp = now + exp_in)."""
    claims: dict[str, Any] = {"iss": iss, "sub": sub, "aud": aud, "exp": int(time.time() + exp_in)}
    claims.update(extra or {})
    return jwt.encode(claims, private_key_path.read_bytes(), algorithm="RS256")


@asynccontextmanager
async def running_emulator(tmp_path: Path, **overrides: Any) -> AsyncIterator[Emulator]:
    """An emulator on a free loopback port, its store in ``tmp_path``.

    Without ``public_key_pem`` a key pair is made in ``tmp_path`` (``jwt.key``, 0600), so a test can
    sign assertions with ``tmp_path / "jwt.key"``.
    """
    if "public_key_pem" not in overrides:
        _, overrides["public_key_pem"] = make_keypair(tmp_path)
    overrides.setdefault("db_path", tmp_path / "emulator-landed.sqlite")
    async with Emulator(EmulatorSettings(**overrides)) as emu:
        yield emu
