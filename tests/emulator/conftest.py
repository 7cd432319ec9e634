"""Fixtures: a running emulator and a plain aiohttp session (never the agent's client)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.emulator import Emulator
from tests.peers.emulator import make_assertion, running_emulator

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CDP = "urn:salesforce:grant-type:external:cdp"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
STREAM = "/api/v1/ingest/sources/solar_agent/solar_panel_event"
JOBS = "/api/v1/ingest/jobs"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with running_emulator(tmp_path) as e:
        yield e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def core_login(http: aiohttp.ClientSession, emu: Emulator, key: Path, **claims: Any) -> dict[str, Any]:
    resp = await http.post(f"{emu.url}/services/oauth2/token",
                           data={"grant_type": JWT_BEARER, "assertion": make_assertion(key, **claims)})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def exchange(http: aiohttp.ClientSession, instance_url: str, core_token: str) -> aiohttp.ClientResponse:
    return await http.post(f"{instance_url}/services/a360/token",
                           data={"grant_type": CDP, "subject_token": core_token, "subject_token_type": ACCESS})


async def dc_headers(http: aiohttp.ClientSession, emu: Emulator, key: Path) -> dict[str, str]:
    """A Bearer header with a fresh Data Cloud token, through both token steps."""
    core = await core_login(http, emu, key)
    resp = await exchange(http, core["instance_url"], core["access_token"])
    assert resp.status == 200
    return {"Authorization": f"Bearer {(await resp.json())['access_token']}"}


def record(event_id: str, **fields: Any) -> dict[str, Any]:
    """A valid solar_panel_event (a few fields); ``fields`` override or add."""
    return {"event_id": event_id, **_BASE, **fields}


_BASE: dict[str, Any] = {"date_time": "2024-05-01T12:00:00.000Z", "site_id": "s1",
            "device_id": "d1", "ac_power_w": 1234.5}
