"""Several objects of one schema file, as Data Cloud keeps them: one table each ([DS]: one data
stream per object of a connector). The shipped file holds solar_panel_event and
solar_gateway_status; both are reachable, land apart, and the admin API lists each one."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from agent.emulator import Emulator
from agent.emulator.store import LandedStore
from tests.emulator.conftest import JOBS, STREAM, dc_headers, record

STATUS_STREAM = "/api/v1/ingest/sources/solar_agent/solar_gateway_status"


def status(event_id: str, **fields: Any) -> dict[str, Any]:
    """A solar_gateway_status record with a few fields (the others are null)."""
    return {"event_id": event_id, "date_time": "2026-01-01T00:05:00.000Z", "site_id": "s1",
            "health_level": "degraded", "backlog_rows": 12, **fields}


async def test_both_objects_land_in_their_own_table(emu: Emulator, http: aiohttp.ClientSession,
                                                      tmp_path: Path) -> None:
    auth = await dc_headers(http, emu, tmp_path / "jwt.key")
    assert (await http.post(emu.url + STREAM, json={"data": [record("r1"), record("same")]}, headers=auth)).status \
        == 202
    resp = await http.post(emu.url + STATUS_STREAM, json={"data": [status("g1"), status("same")]}, headers=auth)
    assert resp.status == 202
    await emu.wait_landed(2, timeout=5, obj="solar_gateway_status")
    # The same primary key in two objects is two rows: one per table.
    assert emu.store.keys() == {"r1", "same"} and emu.store.keys("solar_gateway_status") == {"g1", "same"}
    landed = emu.store.get("g1", "solar_gateway_status")
    assert landed is not None and landed["backlog_rows"] == 12 and landed["readings_new"] is None
    assert "ac_power_w" not in landed          # each table has its own object's columns
    body = await (await http.get(emu.url + "/__emulator/records",
                                 params={"object": "solar_gateway_status"})).json()
    assert body["object"] == "solar_gateway_status" and {r["event_id"] for r in body["records"]} == {"g1", "same"}
    objects = await (await http.get(emu.url + "/__emulator/objects")).json()
    assert objects == {"objects": [
        {"object": "solar_gateway_status", "endpoints": ["solar_gateway_status"], "count": 2},
        {"object": "solar_panel_event", "endpoints": ["solar_panel_event"], "count": 2}]}
    resp = await http.get(emu.url + "/__emulator/records", params={"object": "nope"})
    assert resp.status == 404


async def test_a_status_record_is_checked_against_its_own_object(emu: Emulator, http: aiohttp.ClientSession,
                                                                   tmp_path: Path) -> None:
    auth = await dc_headers(http, emu, tmp_path / "jwt.key")
    resp = await http.post(emu.url + STATUS_STREAM, json={"data": [status("g1", ac_power_w=5.0)]}, headers=auth)
    assert resp.status == 400
    assert "extraneous key [ac_power_w]" in str((await resp.json())["details"])
    resp = await http.post(emu.url + STATUS_STREAM, json={"data": [status("g2", backlog_rows="12")]}, headers=auth)
    assert resp.status == 400


async def test_a_bulk_job_lands_in_the_object_it_names(emu: Emulator, http: aiohttp.ClientSession,
                                                         tmp_path: Path) -> None:
    auth = await dc_headers(http, emu, tmp_path / "jwt.key")
    job = await (await http.post(emu.url + JOBS, json={"object": "solar_gateway_status", "sourceName": "solar_agent",
                                                       "operation": "upsert"}, headers=auth)).json()
    csv = b"event_id,date_time,site_id,backlog_rows\r\ng1,2026-01-01T00:05:00.000Z,s1,7\r\n"
    resp = await http.put(f"{emu.url}{JOBS}/{job['id']}/batches", data=csv,
                          headers={**auth, "Content-Type": "text/csv"})
    assert resp.status == 202
    await http.patch(f"{emu.url}{JOBS}/{job['id']}", json={"state": "UploadComplete"}, headers=auth)
    await emu.wait_landed(1, timeout=10, obj="solar_gateway_status")
    assert emu.store.count() == 0 and emu.store.get("g1", "solar_gateway_status")["backlog_rows"] == 7  # type: ignore[index]


def test_a_store_file_of_the_one_object_emulator_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "landed.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE landed (pk TEXT PRIMARY KEY, record JSON NOT NULL, writes INT NOT NULL)")
    conn.execute("INSERT INTO landed VALUES ('r1', '{\"event_id\": \"r1\"}', 2)")
    conn.commit()
    conn.close()
    store = LandedStore(path, "solar_panel_event")
    try:
        assert store.keys() == {"r1"} and store.write_counts() == {"r1": 2}
        assert store.counts() == {"solar_panel_event": 1}
    finally:
        store.close()
