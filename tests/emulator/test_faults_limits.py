"""Rate limit, injected faults and TLS, over real HTTP."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest

from agent.emulator import Emulator, Faults
from tests.emulator.conftest import STREAM, core_login, dc_headers, record
from tests.peers.emulator import running_emulator


@pytest.fixture
async def auth(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, str]:
    return await dc_headers(http, emu, tmp_path / "jwt.key")


async def test_rate_limit_answers_429_with_retry_after(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, rate_limit_rps=5) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        statuses = []
        for i in range(12):
            resp = await http.post(emu.url + STREAM, json={"data": [record(f"e{i}")]}, headers=auth)
            statuses.append(resp.status)
            if resp.status == 429:
                assert int(resp.headers["Retry-After"]) >= 1
                assert (await resp.json())["error"] == "Too Many Requests"
        assert statuses.count(202) >= 5 and 429 in statuses
        assert emu.stats.rate_limited == statuses.count(429)
        assert emu.stats.count("stream_insert", 429) == statuses.count(429)
        assert emu.store.count() == statuses.count(202)
        assert emu.stats.peak_rps >= 5


async def test_injected_statuses_and_retry_after(emu: Emulator, http: aiohttp.ClientSession,
                                                 auth: dict[str, str]) -> None:
    emu.set_faults(Faults(status_rates={429: 1.0}, retry_after_seconds=2.5))
    resp = await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)
    assert resp.status == 429 and resp.headers["Retry-After"] == "3"
    emu.set_faults(Faults(status_rates={500: 0.5, 503: 0.5}, seed=7))
    seen = {(await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)).status
            for _ in range(20)}
    assert seen == {500, 503}
    assert emu.store.count() == 0
    # Seeded faults repeat exactly.
    emu.set_faults(Faults(status_rates={500: 0.3}, seed=1))
    first = [(await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)).status for _ in range(10)]
    emu.set_faults(Faults(status_rates={500: 0.3}, seed=1))
    again = [(await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)).status for _ in range(10)]
    assert first == again and 500 in first and 202 in first


async def test_token_endpoints_are_not_status_injected(emu: Emulator, http: aiohttp.ClientSession,
                                                       tmp_path: Path) -> None:
    emu.set_faults(Faults(status_rates={500: 1.0}))
    await dc_headers(http, emu, tmp_path / "jwt.key")


async def test_lose_response_lands_the_records(emu: Emulator, http: aiohttp.ClientSession,
                                               auth: dict[str, str]) -> None:
    emu.set_faults(Faults(lose_response_rate=1.0))
    with pytest.raises(aiohttp.ClientError):
        await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)
    await emu.wait_landed(1, timeout=5)
    emu.set_faults(Faults())
    # The client retries: at-least-once on the wire, exactly once in the table.
    assert (await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)).status == 202
    assert emu.store.write_counts() == {"e1": 2}
    assert emu.stats.lost_responses == 1


async def test_reset_lands_nothing(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    emu.set_faults(Faults(reset_rate=1.0))
    with pytest.raises(aiohttp.ClientError):
        await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)
    assert emu.store.count() == 0 and emu.stats.resets == 1


async def test_outage_until_cleared(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str],
                                    tmp_path: Path) -> None:
    emu.set_faults(Faults(outage=True))
    with pytest.raises(aiohttp.ClientError):
        await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)
    with pytest.raises(aiohttp.ClientError):
        await core_login(http, emu, tmp_path / "jwt.key")
    # The admin API stays up, so an outage can be cleared from outside.
    resp = await http.post(emu.url + "/__emulator/faults", json={"outage": False})
    assert resp.status == 200
    assert (await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)).status == 202


async def test_latency(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    emu.set_faults(Faults(latency_seconds=0.3))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)).status == 202
    assert loop.time() - started >= 0.3


def test_faults_validation() -> None:
    with pytest.raises(ValueError):
        Faults(status_rates={200: 0.5})
    with pytest.raises(ValueError):
        Faults(reset_rate=1.5)
    with pytest.raises(ValueError):
        Faults(status_rates={500: 0.7, 503: 0.7})
    with pytest.raises(ValueError):
        Faults.from_json({"nope": 1})
    assert Faults.from_json({"status_rates": {"503": 0.1}}).status_rates == {503: 0.1}


async def test_tls_with_generated_ca(tmp_path: Path) -> None:
    async with running_emulator(tmp_path, tls_dir=tmp_path / "tls") as emu:
        assert emu.url.startswith("https://127.0.0.1:") and emu.ca_file is not None
        assert oct((tmp_path / "tls" / "server.key").stat().st_mode & 0o777) == "0o600"
        trusting = ssl.create_default_context(cafile=str(emu.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as http:
            core = await core_login(http, emu, tmp_path / "jwt.key")
            resp = await http.post(f"{core['instance_url']}/services/a360/token", data={
                "grant_type": "urn:salesforce:grant-type:external:cdp", "subject_token": core["access_token"],
                "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"})
            body = await resp.json()
            # Real Data Cloud answers a bare host; it means https.
            assert body["instance_url"] == emu.url.removeprefix("https://")
            headers = {"Authorization": f"Bearer {body['access_token']}"}
            resp = await http.post(f"https://{body['instance_url']}{STREAM}", json={"data": [record("e1")]},
                                   headers=headers)
            assert resp.status == 202
        async with aiohttp.ClientSession() as untrusting:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await untrusting.get(emu.url + "/__emulator/stats")
    # A second start reuses the CA, so a configured ca_file keeps working across restarts.
    ca_before = (tmp_path / "tls" / "ca.pem").read_bytes()
    async with running_emulator(tmp_path, tls_dir=tmp_path / "tls", dc_instance_url_style="scheme") as emu:
        assert emu.ca_file is not None and emu.ca_file.read_bytes() == ca_before
