"""The two answers the documents allow for invalid streamed records, and the date-time rule, over HTTP.

Streaming ingestion is fire-and-forget, "processed asynchronously approximately every 3 minutes"
([SI] https://developer.salesforce.com/docs/data/data-cloud-int/references/data-cloud-ingestionapi-ref/c360-a-api-streaming-ingestion.md),
and per-record feedback is documented only for the synchronous validation endpoint
(/actions/test, [VAL]). Whether the normal insert ever answers 400 is not documented, so the
emulator plays both: ``fire_and_forget=False`` (a synchronous 400 with a report, the default) and
``fire_and_forget=True`` (202, then the invalid records are dropped when processed).
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.emulator.conftest import STREAM, dc_headers, record
from tests.peers.emulator import running_emulator

# Digits in the documented shape yyyy-MM-ddTHH:mm:ss.SSSZ ([SCH], [GS]) that name no instant.
IMPOSSIBLE = ["2024-13-01T00:00:00.000Z", "2024-05-32T00:00:00.000Z", "2024-05-01T25:00:00.000Z",
              "2024-02-30T00:00:00.000Z", "2023-02-29T12:00:00Z", "2024-05-01T12:60:00Z", "0000-01-01T00:00:00Z"]


@pytest.mark.parametrize("when", IMPOSSIBLE)
async def test_impossible_date_times_are_a_schema_mismatch(http: aiohttp.ClientSession, tmp_path: Path,
                                                           when: str) -> None:
    async with running_emulator(tmp_path) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        for path in (STREAM, STREAM + "/actions/test"):
            resp = await http.post(emu.url + path, json={"data": [record("e1", date_time=when)]}, headers=auth)
            assert resp.status == 400, (path, when)
            [item] = (await resp.json())["details"]["validationReport"]
            assert item["causingExceptions"] == [
                f"#/date_time: [{when}] is not a valid date-time. Expected [yyyy-MM-dd'T'HH:mm:ss.SSS'Z']"]
        # A real leap day is fine.
        resp = await http.post(emu.url + STREAM, json={"data": [record("e2", date_time="2024-02-29T23:59:59.999Z")]},
                               headers=auth)
        assert resp.status == 202


async def test_fire_and_forget_accepts_then_drops_invalid_records(http: aiohttp.ClientSession,
                                                                  tmp_path: Path) -> None:
    async with running_emulator(tmp_path, fire_and_forget=True) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        body = {"data": [record("good"), record("bad-type", ac_power_w="lots"),
                         record("bad-date", date_time="2024-13-01T00:00:00.000Z"), "not an object"]}
        resp = await http.post(emu.url + STREAM, json=body, headers=auth)
        assert resp.status == 202 and await resp.json() == {"accepted": True}
        await emu.wait_dropped(3, timeout=5)
        await emu.wait_landed(1, timeout=5)
        assert emu.store.keys() == {"good"}
        dropped = await (await http.get(emu.url + "/__emulator/dropped")).json()
        assert dropped["count"] == 3
        by_id = {json.loads(r["record"]).get("event_id") if r["record"].startswith("{") else r["record"]: r
                 for r in dropped["records"]}
        assert by_id["bad-type"]["reasons"] == ["#/ac_power_w: expected type: Number, found: String"]
        assert by_id["bad-type"]["object"] == "solar_panel_event"
        assert by_id["bad-type"]["endpoint"] == "solar_panel_event"
        assert "is not a valid date-time" in by_id["bad-date"]["reasons"][0]
        assert by_id['"not an object"']["reasons"] == ["#: expected type: JSONObject, found: String"]
        # The synchronous validation endpoint still answers per record (as documented, [VAL]).
        resp = await http.post(emu.url + STREAM + "/actions/test", json={"data": [record("x", ac_power_w="lots")]},
                               headers=auth)
        assert resp.status == 400
        # A malformed envelope is still refused at once: only the records are judged later.
        resp = await http.post(emu.url + STREAM, json={"records": []}, headers=auth)
        assert resp.status == 400


async def test_fire_and_forget_drops_only_when_processed(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, fire_and_forget=True, processing_delay_seconds=0.3) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        resp = await http.post(emu.url + STREAM, json={"data": [record("b", ac_power_w="x")]}, headers=auth)
        assert resp.status == 202
        assert emu.dropped.total == 0  # accepted, not yet processed
        await emu.wait_dropped(1, timeout=5)
        assert emu.store.count() == 0


async def test_synchronous_mode_is_the_default(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        resp = await http.post(emu.url + STREAM, json={"data": [record("b", ac_power_w="x")]}, headers=auth)
        assert resp.status == 400
        assert (await (await http.get(emu.url + "/__emulator/dropped")).json()) == {"count": 0, "records": []}
