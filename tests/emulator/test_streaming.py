"""Streaming insert, validation, test action and delete over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from agent.emulator import Emulator
from tests.emulator.conftest import STREAM, dc_headers, record
from tests.peers.emulator import running_emulator


@pytest.fixture
async def auth(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, str]:
    return await dc_headers(http, emu, tmp_path / "jwt.key")


async def test_insert_is_accepted_and_upserted_by_key(
    emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    resp = await http.post(emu.url + STREAM, json={"data": [record("e1"), record("e2")]}, headers=auth)
    assert (resp.status, await resp.json()) == (202, {"accepted": True})
    resp = await http.post(emu.url + STREAM, json={"data": [record("e1", ac_power_w=99)]}, headers=auth)
    assert resp.status == 202
    await emu.wait_landed(2, timeout=5)
    assert emu.store.keys() == {"e1", "e2"}
    assert emu.store.write_counts() == {"e1": 2, "e2": 1}
    assert emu.store.get("e1")["ac_power_w"] == 99  # type: ignore[index]
    # Every schema field is a column; a field the record left out is null.
    assert emu.store.get("e2")["battery_soc_pct"] is None  # type: ignore[index]


@pytest.mark.parametrize(("bad", "message"), [
    ({"ac_power_w": "12"}, "#/ac_power_w: expected type: Number, found: String"),
    ({"site_id": 7}, "#/site_id: expected type: String, found: Number"),
    ({"date_time": "2024-05-01 12:00:00"}, "#/date_time: [2024-05-01 12:00:00] is not a valid date-time"),
    ({"date_time": "2024-05-01T12:00:00+02:00"}, "is not a valid date-time"),
    ({"no_such_field": 1}, "#: extraneous key [no_such_field] is not permitted"),
    ({"event_id": None}, "#: required key [event_id] not found"),
])
async def test_schema_mismatch_rejects_the_whole_request(
    emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str], bad: dict[str, object], message: str
) -> None:
    body = {"data": [record("good"), {**record("bad"), **bad}]}
    resp = await http.post(emu.url + STREAM, json=body, headers=auth)
    err = await resp.json()
    assert resp.status == 400
    assert err["message"] == "Bad Request: JSON is properly formatted but has a mismatch with Schema."
    assert err["internalErrorCode"] == "COMMON_ERROR_GENERIC"
    [item] = err["details"]["validationReport"]
    assert json.loads(item["record"])["event_id"] == bad.get("event_id", "bad")
    assert any(message in c for c in item["causingExceptions"]), item
    assert emu.store.count() == 0  # nothing of the request landed


async def test_lenient_switches(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, validate_streaming=False, reject_unknown_fields=False) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        resp = await http.post(emu.url + STREAM, json={"data": [record("e1", ac_power_w="x")]}, headers=auth)
        assert resp.status == 202
        # /actions/test always validates, the switch only affects normal streaming.
        resp = await http.post(emu.url + STREAM + "/actions/test", json={"data": [record("e1", ac_power_w="x")]},
                               headers=auth)
        assert resp.status == 400
        resp = await http.post(emu.url + STREAM + "/actions/test", json={"data": [record("e1", extra=1)]},
                               headers=auth)
        assert resp.status == 200


async def test_malformed_bodies(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    for raw in (b"{not json", b'{"records": []}', b'{"data": {}}', b'{"data": []}', b'[1]',
                b'{"data": [{"event_id": "a", "ac_power_w": NaN}]}'):
        resp = await http.post(emu.url + STREAM, data=raw, headers={**auth, "Content-Type": "application/json"})
        assert resp.status == 400, raw
        assert (await resp.json())["error"] == "Bad Request"


async def test_body_over_limit_is_413(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    big = {"data": [record(f"e{i}", operating_state="x" * 1000) for i in range(200)]}
    raw = json.dumps(big).encode()
    assert len(raw) > 200_000
    resp = await http.post(emu.url + STREAM, data=raw, headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"] == "Request Entity Too Large"
    # Just under the limit is fine.
    ok = {"data": [record(f"e{i}", operating_state="x" * 1000) for i in range(150)]}
    assert len(json.dumps(ok)) < 200_000
    resp = await http.post(emu.url + STREAM, json=ok, headers=auth)
    assert resp.status == 202


async def test_unknown_source_or_object_is_404(
    emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]
) -> None:
    body = {"data": [record("e1")]}
    for path in ("/api/v1/ingest/sources/other/solar_panel_event", "/api/v1/ingest/sources/solar_agent/nope"):
        resp = await http.post(emu.url + path, json=body, headers=auth)
        assert resp.status == 404
        assert (await resp.json())["path"] == f"uri={path}"


async def test_actions_test_stores_nothing(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    resp = await http.post(emu.url + STREAM + "/actions/test", json={"data": [record("e1")]}, headers=auth)
    assert resp.status == 200
    assert emu.store.count() == 0


async def test_delete_by_query_and_body(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    resp = await http.post(emu.url + STREAM, json={"data": [record(f"e{i}") for i in range(5)]}, headers=auth)
    assert resp.status == 202
    await emu.wait_landed(5, timeout=5)
    resp = await http.delete(emu.url + STREAM, params={"ids": "e0,e1"}, headers=auth)
    assert (resp.status, await resp.json()) == (202, {"accepted": True})
    resp = await http.delete(emu.url + STREAM, json={"ids": ["e2"]}, headers=auth)
    assert resp.status == 202
    assert emu.store.keys() == {"e3", "e4"}
    resp = await http.delete(emu.url + STREAM, json={"ids": [f"x{i}" for i in range(201)]}, headers=auth)
    assert resp.status == 400
    resp = await http.delete(emu.url + STREAM, headers=auth)
    assert resp.status == 400
    assert emu.store.keys() == {"e3", "e4"}


@pytest.fixture
async def slow_emu(tmp_path: Path) -> AsyncIterator[Emulator]:
    async with running_emulator(tmp_path, processing_delay_seconds=0.3) as e:
        yield e


async def test_processing_delay(slow_emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    auth = await dc_headers(http, slow_emu, tmp_path / "jwt.key")
    resp = await http.post(slow_emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)
    assert resp.status == 202
    assert slow_emu.store.count() == 0  # accepted is not landed
    await slow_emu.wait_landed(1, timeout=5)
    with pytest.raises(TimeoutError):
        await slow_emu.wait_landed(2, timeout=0.1)


async def test_admin_api(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    await http.post(emu.url + STREAM, json={"data": [record("e1")]}, headers=auth)
    resp = await http.get(emu.url + "/__emulator/records", params={"count_only": "1"})
    assert await resp.json() == {"object": "solar_panel_event", "count": 1}
    body = await (await http.get(emu.url + "/__emulator/records")).json()
    assert body["records"][0]["event_id"] == "e1"
    stats = await (await http.get(emu.url + "/__emulator/stats")).json()
    assert stats["requests"]["stream_insert"] == {"202": 1}
    resp = await http.post(emu.url + "/__emulator/faults", json={"status_rates": {"503": 1.0}})
    assert resp.status == 200
    assert (await http.post(emu.url + STREAM, json={"data": [record("e2")]}, headers=auth)).status == 503
    resp = await http.post(emu.url + "/__emulator/faults", json={"bogus": 1})
    assert resp.status == 400
    assert (await http.post(emu.url + "/__emulator/faults", json={})).status == 200
    assert (await http.post(emu.url + STREAM, json={"data": [record("e2")]}, headers=auth)).status == 202
