"""Bulk jobs over real HTTP: the state machine, CSV rules, listing, delete rules, limits."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.emulator import Emulator, Faults
from tests.emulator.conftest import JOBS, dc_headers
from tests.peers.emulator import running_emulator

HEADER = "event_id,date_time,site_id,ac_power_w\n"


@pytest.fixture
async def auth(emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path) -> dict[str, str]:
    return await dc_headers(http, emu, tmp_path / "jwt.key")


async def create(http: aiohttp.ClientSession, emu: Emulator, auth: dict[str, str],
                 op: str = "upsert") -> dict[str, Any]:
    resp = await http.post(emu.url + JOBS, json={"object": "solar_panel_event", "sourceName": "solar_agent",
                                                 "operation": op}, headers=auth)
    assert resp.status == 201, await resp.text()
    job: dict[str, Any] = await resp.json()
    return job


async def upload(http: aiohttp.ClientSession, emu: Emulator, auth: dict[str, str], job_id: str, csv: str | bytes,
                 content_type: str = "text/csv") -> aiohttp.ClientResponse:
    raw = csv.encode() if isinstance(csv, str) else csv
    return await http.put(f"{emu.url}{JOBS}/{job_id}/batches", data=io.BytesIO(raw),
                          headers={**auth, "Content-Type": content_type})


async def patch(http: aiohttp.ClientSession, emu: Emulator, auth: dict[str, str], job_id: str,
                state: str) -> aiohttp.ClientResponse:
    return await http.patch(f"{emu.url}{JOBS}/{job_id}", json={"state": state}, headers=auth)


async def wait_state(http: aiohttp.ClientSession, emu: Emulator, auth: dict[str, str], job_id: str,
                     states: set[str], timeout: float = 10) -> str:
    """Poll Get Job Info until the job reaches one of ``states`` (deadline, like a client would)."""
    deadline = time.monotonic() + timeout
    while True:
        state = (await (await http.get(f"{emu.url}{JOBS}/{job_id}", headers=auth)).json())["state"]
        if state in states:
            return str(state)
        assert time.monotonic() < deadline, f"job stuck in {state}"
        await asyncio.sleep(0.02)  # polling interval of a condition with a deadline


async def test_upsert_job_lifecycle(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    job = await create(http, emu, auth)
    assert job["state"] == "Open" and job["contentType"] == "CSV" and job["operation"] == "upsert"
    assert job["contentUrl"] == f"/api/v1/ingest/jobs/{job['id']}/batches"
    resp = await upload(http, emu, auth, job["id"],
                        HEADER + "a,2024-05-01T00:00:00.000Z,s1,1.5\r\nb,2024-05-01T00:00:01Z,s1,\r\n")
    assert resp.status == 202
    resp = await upload(http, emu, auth, job["id"], HEADER + 'c,2024-05-01T00:00:02.000Z,"s,1",3\na,,,7\n')
    assert resp.status == 202
    assert emu.store.count() == 0  # nothing lands before the job completes
    resp = await patch(http, emu, auth, job["id"], "UploadComplete")
    assert resp.status == 200 and (await resp.json())["state"] == "UploadComplete"
    assert await wait_state(http, emu, auth, job["id"], {"JobComplete", "Failed"}) == "JobComplete"
    assert emu.store.keys() == {"a", "b", "c"}
    # Later rows win, updates replace the whole record (empty cell -> null).
    assert emu.store.get("a") == {**{f: None for f in emu.store.get("a")}, "event_id": "a", "ac_power_w": 7}  # type: ignore[union-attr]
    assert emu.store.get("b")["ac_power_w"] is None  # type: ignore[index]
    assert emu.store.get("c")["site_id"] == "s,1"  # type: ignore[index]
    assert emu.store.write_counts()["a"] == 2


async def test_delete_job(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    job = await create(http, emu, auth)
    await upload(http, emu, auth, job["id"], HEADER + "".join(f"k{i},,,{i}\n" for i in range(5)))
    await patch(http, emu, auth, job["id"], "UploadComplete")
    await wait_state(http, emu, auth, job["id"], {"JobComplete"})
    job = await create(http, emu, auth, op="delete")
    assert (await upload(http, emu, auth, job["id"], 'k0\n"k1","2024-05-01T00:00:00.000Z"\n')).status == 202
    await patch(http, emu, auth, job["id"], "UploadComplete")
    await wait_state(http, emu, auth, job["id"], {"JobComplete"})
    assert emu.store.keys() == {"k2", "k3", "k4"}


@pytest.mark.parametrize("csv", [
    "",                                           # no header
    "date_time,site_id\n2024-05-01T00:00:00Z,s\n",  # no primary key column
    HEADER + "a,2024-05-01T00:00:00Z,s1\n",        # short row
    HEADER + "a,2024-05-01T00:00:00Z,s1,abc\n",    # not a number
    HEADER + "a,05/01/2024,s1,1\n",                # not a datetime
    # Digits in the documented shape, but no instant (yyyy-MM-ddTHH:mm:ss.SSSZ, [SCH]/[GS]):
    HEADER + "a,2024-13-01T00:00:00.000Z,s1,1\n",  # month 13
    HEADER + "a,2024-05-32T00:00:00.000Z,s1,1\n",  # day 32
    HEADER + "a,2024-05-01T25:00:00.000Z,s1,1\n",  # hour 25
    HEADER + "a,2023-02-29T00:00:00.000Z,s1,1\n",  # February 29 of a common year
    HEADER + ',2024-05-01T00:00:00Z,s1,1\n',        # empty primary key
    HEADER + 'a,2024-05-01T00:00:00Z,"s1,1\n',      # unterminated quote
    "event_id;date_time\na;b\n",                   # semicolons are not a delimiter
])
async def test_bad_upsert_files_are_400_and_stage_nothing(
    emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str], csv: str
) -> None:
    job = await create(http, emu, auth)
    resp = await upload(http, emu, auth, job["id"], csv)
    assert resp.status == 400, await resp.text()
    assert (await upload(http, emu, auth, job["id"], HEADER + "ok,,,1\n")).status == 202
    await patch(http, emu, auth, job["id"], "UploadComplete")
    await wait_state(http, emu, auth, job["id"], {"JobComplete"})
    assert emu.store.keys() == {"ok"}


async def test_impossible_dates_are_refused_among_many_rows(emu: Emulator, http: aiohttp.ClientSession,
                                                             auth: dict[str, str]) -> None:
    """Month 13 hidden in a big plain file (the fast path judges columns by their shape) is still refused."""
    rows = "".join(f"k{i},2024-05-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}.000Z,s1,{i}\n"
                   for i in range(5000))
    job = await create(http, emu, auth)
    assert (await upload(http, emu, auth, job["id"], HEADER + rows)).status == 202
    bad = rows.replace("k4321,2024-05-01", "k4321,2024-13-01")
    resp = await upload(http, emu, auth, job["id"], HEADER + bad)
    assert resp.status == 400
    assert "[2024-13-01T" in (await resp.json())["message"]
    feb = rows.replace("k17,2024-05-01", "k17,2024-02-30")
    assert (await upload(http, emu, auth, job["id"], HEADER + feb)).status == 400


async def test_columns_not_in_the_schema_are_ignored(emu: Emulator, http: aiohttp.ClientSession,
                                                     auth: dict[str, str]) -> None:
    """[BI] "Prepare CSV Files" (atlas 252.0 c360a_api_bulk_ingestion.htm): "Results only include
    columns that are a match"; the other columns of the file are not ingested."""
    job = await create(http, emu, auth)
    csv = "event_id,nope,ac_power_w,Also_Not\na,1,2.5,x\nb,,3,\n"
    assert (await upload(http, emu, auth, job["id"], csv)).status == 202
    await patch(http, emu, auth, job["id"], "UploadComplete")
    await wait_state(http, emu, auth, job["id"], {"JobComplete"})
    landed = emu.store.get("a")
    assert landed is not None and landed["ac_power_w"] == 2.5
    assert "nope" not in landed and "Also_Not" not in landed


async def test_unknown_columns_can_be_refused(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    """The other reading of "must be the same as the Datasource Object's field names" ([BI])."""
    async with running_emulator(tmp_path, reject_unknown_csv_columns=True) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        job = await create(http, emu, auth)
        resp = await upload(http, emu, auth, job["id"], "event_id,nope\na,1\n")
        assert resp.status == 400
        assert "nope" in (await resp.json())["message"]


async def test_bad_files_other_cases(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    job = await create(http, emu, auth)
    assert (await upload(http, emu, auth, job["id"], b"event_id\n\xff\xfe\n")).status == 400  # not UTF-8
    assert (await upload(http, emu, auth, job["id"], HEADER, content_type="application/json")).status == 400
    djob = await create(http, emu, auth, op="delete")
    assert (await upload(http, emu, auth, djob["id"], "a,2024-05-01T00:00:00Z,x\n")).status == 400
    assert (await upload(http, emu, auth, djob["id"], "a,yesterday\n")).status == 400


async def test_state_machine_conflicts(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    job = await create(http, emu, auth)
    jid = job["id"]
    assert (await patch(http, emu, auth, jid, "JobComplete")).status == 400
    resp = await http.delete(f"{emu.url}{JOBS}/{jid}", headers=auth)
    assert resp.status == 409  # Open can't be deleted; abort first
    assert (await patch(http, emu, auth, jid, "Aborted")).status == 200
    assert (await patch(http, emu, auth, jid, "UploadComplete")).status == 409
    assert (await patch(http, emu, auth, jid, "Aborted")).status == 409
    resp = await upload(http, emu, auth, jid, HEADER + "a,,,1\n")
    assert resp.status == 409
    assert "unable" in (await resp.json())["message"]
    assert (await http.delete(f"{emu.url}{JOBS}/{jid}", headers=auth)).status == 204
    assert (await http.get(f"{emu.url}{JOBS}/{jid}", headers=auth)).status == 404
    assert (await http.delete(f"{emu.url}{JOBS}/{jid}", headers=auth)).status == 404
    assert (await patch(http, emu, auth, "no-such-job", "Aborted")).status == 404
    assert (await upload(http, emu, auth, "no-such-job", HEADER)).status == 404


async def test_aborted_job_lands_nothing(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    job = await create(http, emu, auth)
    await upload(http, emu, auth, job["id"], HEADER + "a,,,1\n")
    await patch(http, emu, auth, job["id"], "Aborted")
    later = await create(http, emu, auth)
    await patch(http, emu, auth, later["id"], "UploadComplete")
    await wait_state(http, emu, auth, later["id"], {"JobComplete"})
    assert emu.store.count() == 0


async def test_slow_processing_states_and_delete_rules(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, bulk_processing_seconds=0.6) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        job = await create(http, emu, auth)
        await upload(http, emu, auth, job["id"], HEADER + "a,,,1\n")
        await patch(http, emu, auth, job["id"], "UploadComplete")
        assert await wait_state(http, emu, auth, job["id"], {"InProgress"}) == "InProgress"
        assert (await http.delete(f"{emu.url}{JOBS}/{job['id']}", headers=auth)).status == 409
        assert await wait_state(http, emu, auth, job["id"], {"JobComplete"}) == "JobComplete"
        assert (await http.delete(f"{emu.url}{JOBS}/{job['id']}", headers=auth)).status == 204
        # Deleting a queued (UploadComplete) job removes its data: nothing lands.
        job = await create(http, emu, auth)
        await upload(http, emu, auth, job["id"], HEADER + "b,,,1\n")
        await patch(http, emu, auth, job["id"], "UploadComplete")
        assert (await http.delete(f"{emu.url}{JOBS}/{job['id']}", headers=auth)).status == 204
        assert emu.store.keys() == {"a"}


async def test_failed_job_fault(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    emu.set_faults(Faults(fail_next_jobs=1))
    job = await create(http, emu, auth)
    await upload(http, emu, auth, job["id"], HEADER + "a,,,1\n")
    await patch(http, emu, auth, job["id"], "UploadComplete")
    assert await wait_state(http, emu, auth, job["id"], {"JobComplete", "Failed"}) == "Failed"
    assert emu.store.count() == 0
    assert (await http.delete(f"{emu.url}{JOBS}/{job['id']}", headers=auth)).status == 204
    job = await create(http, emu, auth)
    await upload(http, emu, auth, job["id"], HEADER + "a,,,1\n")
    await patch(http, emu, auth, job["id"], "UploadComplete")
    assert await wait_state(http, emu, auth, job["id"], {"JobComplete", "Failed"}) == "JobComplete"


async def test_list_paging_and_state_filter(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, max_concurrent_jobs=10) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        ids = [(await create(http, emu, auth))["id"] for _ in range(4)]
        await patch(http, emu, auth, ids[0], "Aborted")
        await patch(http, emu, auth, ids[1], "UploadComplete")
        await wait_state(http, emu, auth, ids[1], {"JobComplete"})

        async def listing(**q: str) -> list[dict[str, Any]]:
            resp = await http.get(emu.url + JOBS, params=q, headers=auth)
            assert resp.status == 200, await resp.text()
            data: list[dict[str, Any]] = (await resp.json())["data"]
            return data

        assert {j["id"] for j in await listing()} == set(ids)
        page1 = await listing(limit="2", offset="0", orderBy="createdDate")
        page2 = await listing(limit="2", offset="2", orderBy="createdDate")
        assert [j["id"] for j in page1 + page2] == ids
        assert [j["id"] for j in await listing(states="Open")] == ids[2:]
        assert {j["id"] for j in await listing(states="Aborted,JobComplete")} == set(ids[:2])
        for bad in ({"limit": "101"}, {"limit": "0"}, {"offset": "-1"}, {"states": "Bogus"}, {"orderBy": "x"}):
            assert (await http.get(emu.url + JOBS, params=bad, headers=auth)).status == 400


async def test_create_validation(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    url = emu.url + JOBS
    bad_op = {"object": "solar_panel_event", "sourceName": "solar_agent", "operation": "insert"}
    assert (await http.post(url, json=bad_op, headers=auth)).status == 400
    unknown = {"object": "nope", "sourceName": "solar_agent", "operation": "upsert"}
    assert (await http.post(url, json=unknown, headers=auth)).status == 404
    assert (await http.post(url, json={"object": "solar_panel_event"}, headers=auth)).status == 400


async def test_concurrent_job_limit(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    ids = [(await create(http, emu, auth))["id"] for _ in range(5)]
    resp = await http.post(emu.url + JOBS, json={"object": "solar_panel_event", "sourceName": "solar_agent",
                                                 "operation": "upsert"}, headers=auth)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    await patch(http, emu, auth, ids[0], "Aborted")
    await create(http, emu, auth)


async def test_jobs_per_hour_limit(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, max_concurrent_jobs=100) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        for _ in range(20):
            job = await create(http, emu, auth)
            await patch(http, emu, auth, job["id"], "Aborted")
        resp = await http.post(emu.url + JOBS, json={"object": "solar_panel_event", "sourceName": "solar_agent",
                                                     "operation": "upsert"}, headers=auth)
        assert resp.status == 429
        assert 3500 <= int(resp.headers["Retry-After"]) <= 3601


async def test_files_per_job_and_file_size_limits(http: aiohttp.ClientSession, tmp_path: Path) -> None:
    async with running_emulator(tmp_path, max_files_per_job=100, max_file_bytes=10_000) as emu:
        auth = await dc_headers(http, emu, tmp_path / "jwt.key")
        job = await create(http, emu, auth)
        for i in range(100):
            assert (await upload(http, emu, auth, job["id"], HEADER + f"k{i},,,1\n")).status == 202
        resp = await upload(http, emu, auth, job["id"], HEADER + "k100,,,1\n")
        assert resp.status == 400 and "100 files" in (await resp.json())["message"]
        job = await create(http, emu, auth)
        resp = await upload(http, emu, auth, job["id"], HEADER + "".join(f"k{i},,,{i}\n" for i in range(2000)))
        assert resp.status == 413


async def test_big_backfill_lands_fast(emu: Emulator, http: aiohttp.ClientSession, auth: dict[str, str]) -> None:
    """100k rows of a full-width record: upload + processing well under a few seconds."""
    fields = ["event_id", "date_time", "site_id", "device_id", "source", "ac_power_w", "ac_energy_wh",
              "ac_voltage_v", "ac_current_a", "ac_frequency_hz", "dc_power_w", "temperature_c", "operating_state"]
    rows = "".join(
        f"ev-{i:08d},2024-05-01T00:00:{i % 60:02d}.000Z,site-1,inv-1,sunspec-rtu,{i}.5,{i * 10},230.1,4.2,50.01,"
        f"1234.5,41.5,MPPT\n" for i in range(100_000))
    started = time.monotonic()
    job = await create(http, emu, auth)
    assert (await upload(http, emu, auth, job["id"], ",".join(fields) + "\n" + rows)).status == 202
    await patch(http, emu, auth, job["id"], "UploadComplete")
    await emu.wait_landed(100_000, timeout=30)
    assert time.monotonic() - started < 10
