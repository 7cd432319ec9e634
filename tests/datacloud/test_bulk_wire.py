"""Bulk jobs against the emulator: the uploader end to end, job failures, aborts, and resume from
every journaled state."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from agent.datacloud import BulkUploader, JobBudget
from agent.emulator import Emulator, EmulatorSettings, Faults
from agent.errors import DataCloudError, JobError, RejectedError, ThrottledError
from agent.outbox.types import BulkJobRecord
from agent.records import CsvEncoder
from tests.datacloud.conftest import SCHEMA, Clients, make_rows


class Journal:
    def __init__(self) -> None:
        self.saved: list[BulkJobRecord] = []

    async def save(self, job: BulkJobRecord) -> None:
        self.saved.append(job)

    def states(self) -> list[tuple[str, int]]:
        return [(j.state, j.files_uploaded) for j in self.saved]


async def chunks_of(payloads: Sequence[bytes], size: int = 500) -> AsyncIterator[list[bytes]]:
    for i in range(0, len(payloads), size):
        yield list(payloads[i:i + size])


def uploader(c: Clients, journal: Journal, tmp_path: Path, **kw: object) -> BulkUploader:
    kw.setdefault("poll_initial_seconds", 0.01)
    kw.setdefault("poll_max_seconds", 0.05)
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    return BulkUploader(c.bulk, CsvEncoder(SCHEMA), journal, tmp_dir=spool, **kw)  # type: ignore[arg-type]


async def test_backfill_several_files(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    rows = make_rows(3000)
    journal = Journal()
    result = await uploader(clients, journal, tmp_path, max_file_bytes=100_000).run(7, chunks_of([p for _, p in rows]))
    assert result.state == "JobComplete" and result.rows == 3000 and result.exhausted
    assert result.payload_bytes == sum(len(p) for _, p in rows)
    assert result.files >= 4
    await emu.wait_landed(3000, timeout=5)
    assert emu.store.keys() == {k for k, _ in rows}
    states = journal.states()
    assert states[:2] == [("creating", 0), ("Open", 0)]
    assert [n for s, n in states if s == "uploading"] == list(range(1, result.files + 1))
    after = states.index(("UploadComplete", result.files))
    assert after == len(states) - 2 or states[after + 1][0] == "InProgress"  # seen while polling, maybe
    assert states[-1] == ("JobComplete", result.files)
    assert all(j.job_id == result.job_id for j in journal.saved[1:]) and journal.saved[0].job_id is None
    assert list((tmp_path / "spool").iterdir()) == []  # temp files are gone


async def test_csv_and_json_bodies_land_identically(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    """Awkward strings (commas, quotes, newlines, unicode) survive both lanes unchanged."""
    rows = make_rows(6)
    tricky = ['a,b', 'say "hi"', "two\nlines", "Ünïcødé ☀", "", " lead space"]
    records = []
    for (_, p), text in zip(rows, tricky, strict=True):
        rec = json.loads(p)
        rec["operating_state"] = text
        rec["event_flags"] = 3
        records.append(rec)
    stream_half, bulk_half = records[:3], records[3:]
    await clients.streaming.send([json.dumps(r).encode() for r in stream_half])
    result = await uploader(clients, Journal(), tmp_path).run(1, chunks_of([json.dumps(r).encode() for r in bulk_half]))
    assert result.state == "JobComplete"
    await emu.wait_landed(6, timeout=5)
    for rec in stream_half:
        assert emu.store.get(rec["event_id"]) == rec
    for rec in bulk_half:
        landed = emu.store.get(rec["event_id"])
        assert landed is not None
        # CSV has no null: an empty cell is null in Data Cloud (datacloud-api.md §3.8).
        expected = {k: (None if v == "" else v) for k, v in rec.items()}
        assert landed == expected, (landed, expected)


async def test_failed_job(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    emu.set_faults(Faults(fail_next_jobs=1))
    journal = Journal()
    result = await uploader(clients, journal, tmp_path).run(1, chunks_of([p for _, p in make_rows(50)]))
    assert result.state == "Failed" and journal.saved[-1].state == "Failed"
    assert emu.store.count() == 0


async def test_file_limit_stops_the_job_and_reports_consumption(emu: Emulator, clients: Clients,
                                                                tmp_path: Path) -> None:
    rows = make_rows(1000)
    payloads = [p for _, p in rows]
    up = uploader(clients, Journal(), tmp_path, max_file_bytes=30_000, max_files=3)
    first = await up.run(1, chunks_of(payloads, 100))
    assert first.files == 3 and not first.exhausted and 0 < first.rows < 1000
    assert first.payload_bytes == sum(len(p) for p in payloads[:first.rows])
    rest = await uploader(clients, Journal(), tmp_path).run(2, chunks_of(payloads[first.rows:]))
    assert rest.exhausted and first.rows + rest.rows == 1000
    await emu.wait_landed(1000, timeout=5)
    assert all(n == 1 for n in emu.store.write_counts().values())


async def test_empty_iterator_creates_no_job(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    result = await uploader(clients, Journal(), tmp_path).run(1, chunks_of([]))
    assert result.job_id is None and result.rows == 0
    assert emu.stats.count("job_create") == 0


async def test_upload_error_aborts_the_job(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    journal = Journal()
    bad = [p for _, p in make_rows(5)] + [b'{"event_id":"x","ac_power_w":"lots"}']
    with pytest.raises(RejectedError):
        await uploader(clients, journal, tmp_path).run(1, chunks_of(bad))
    job_id = journal.saved[-1].job_id
    assert job_id is not None and emu.job_state(job_id) == "Aborted"
    assert journal.saved[-1].state == "Aborted"


async def test_client_calls_and_errors(emu: Emulator, clients: Clients) -> None:
    job = await clients.bulk.create_job()
    assert job["state"] == "Open"
    assert [j["id"] for j in await clients.bulk.list(states=("Open",))] == [job["id"]]
    with pytest.raises(JobError) as info:
        await clients.bulk.delete_job(job["id"])  # an Open job can't be deleted
    assert info.value.status == 409
    assert (await clients.bulk.abort(job["id"]))["state"] == "Aborted"
    with pytest.raises(JobError):
        await clients.bulk.close(job["id"])
    await clients.bulk.delete_job(job["id"])
    with pytest.raises(DataCloudError) as gone:
        await clients.bulk.get(job["id"])
    assert gone.value.status == 404


async def test_concurrency_limit_is_a_throttle(key_files: tuple[Path, bytes], session: aiohttp.ClientSession,
                                               tmp_path: Path) -> None:
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1], max_concurrent_jobs=1)
    async with Emulator(settings) as e:
        c = Clients(e, key_files[0], session)
        await c.bulk.create_job()  # someone else's open job
        budget = JobBudget()
        with pytest.raises(ThrottledError) as info:
            await uploader(c, Journal(), tmp_path, budget=budget).run(1, chunks_of([p for _, p in make_rows(5)]))
        assert info.value.retry_after is not None
        assert budget.active == 0  # the slot was given back


# --- resume ------------------------------------------------------------------------------------

async def _job_with_one_file(c: Clients, n: int = 20) -> tuple[str, list[tuple[str, bytes]]]:
    rows = make_rows(n)
    enc = CsvEncoder(SCHEMA)
    job = await c.bulk.create_job()
    await c.bulk.upload(job["id"], enc.header() + enc.rows([p for _, p in rows]))
    return str(job["id"]), rows


async def test_resume_creating_reports_reupload(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    journal = Journal()
    assert await uploader(clients, journal, tmp_path).resume(BulkJobRecord(3, None, "creating")) == "Aborted"
    assert journal.saved[-1].state == "Aborted"


@pytest.mark.parametrize("state", ["Open", "uploading"])
async def test_resume_open_aborts(emu: Emulator, clients: Clients, tmp_path: Path, state: str) -> None:
    job_id, _ = await _job_with_one_file(clients)
    journal = Journal()
    got = await uploader(clients, journal, tmp_path).resume(BulkJobRecord(3, job_id, state, files_uploaded=1))
    assert got == "Aborted" and emu.job_state(job_id) == "Aborted"
    assert journal.saved[-1].state == "Aborted" and emu.store.count() == 0


async def test_resume_uploading_after_close_went_through(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    """The journal said 'uploading' but the job is already closed remotely: poll it, don't abort."""
    job_id, rows = await _job_with_one_file(clients)
    await clients.bulk.close(job_id)
    got = await uploader(clients, Journal(), tmp_path).resume(BulkJobRecord(3, job_id, "uploading"))
    assert got == "JobComplete"
    await emu.wait_landed(len(rows), timeout=5)


@pytest.mark.parametrize("state", ["UploadComplete", "InProgress"])
async def test_resume_closed_polls_to_terminal(key_files: tuple[Path, bytes], session: aiohttp.ClientSession,
                                               tmp_path: Path, state: str) -> None:
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1], bulk_processing_seconds=0.3)
    async with Emulator(settings) as e:
        c = Clients(e, key_files[0], session)
        job_id, rows = await _job_with_one_file(c)
        await c.bulk.close(job_id)
        journal = Journal()
        got = await uploader(c, journal, tmp_path).resume(BulkJobRecord(3, job_id, state, files_uploaded=1))
        assert got == "JobComplete" and journal.saved[-1].state == "JobComplete"
        assert e.store.count() == len(rows)


async def test_a_close_that_never_landed_is_journaled_open_and_aborted_on_resume(
        emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    # Flaky LTE: the close and then the abort are lost on the way; the job stays Open remotely.
    rows = make_rows(50)
    journal = Journal()
    emu.set_faults(Faults(answers={"job_patch": "html_400"}))
    with pytest.raises(DataCloudError):
        await uploader(clients, journal, tmp_path).run(7, chunks_of([p for _, p in rows]))
    last = journal.saved[-1]
    assert last.state == "Open" and last.job_id is not None and emu.job_state(last.job_id) == "Open"
    emu.set_faults(Faults())
    async with asyncio.timeout(10):
        assert await uploader(clients, Journal(), tmp_path).resume(last) == "Aborted"
    assert emu.job_state(last.job_id) == "Aborted" and emu.store.count() == 0


async def test_resume_of_a_job_journaled_closed_but_still_open_aborts_it(
        emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    # A journal written before the fix above said UploadComplete for a close that never landed: polling
    # that Open job would hold the bulk lane until Data Cloud purges the job, 7 days later.
    job_id, _ = await _job_with_one_file(clients)
    journal = Journal()
    async with asyncio.timeout(10):
        got = await uploader(clients, journal, tmp_path).resume(BulkJobRecord(3, job_id, "UploadComplete"))
    assert got == "Aborted" and emu.job_state(job_id) == "Aborted"
    assert journal.saved[-1].state == "Aborted" and emu.store.count() == 0


async def test_resume_terminal_and_vanished(emu: Emulator, clients: Clients, tmp_path: Path) -> None:
    up = uploader(clients, Journal(), tmp_path)
    assert await up.resume(BulkJobRecord(3, "whatever", "JobComplete")) == "JobComplete"
    assert await up.resume(BulkJobRecord(3, "00000000-0000-0000-0000-000000000000", "InProgress")) == "Aborted"


def test_csv_spool_output_parses_as_rfc4180(tmp_path: Path) -> None:
    """What the uploader writes is what a CSV reader reads back (header + one row per record)."""
    enc = CsvEncoder(SCHEMA)
    data = enc.header() + enc.rows([p for _, p in make_rows(3)])
    parsed = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert parsed[0] == list(SCHEMA.names) and len(parsed) == 4 and data.endswith(b"\r\n")


def test_a_job_is_polled_after_a_quarter_of_its_age_within_bounds() -> None:
    from agent.datacloud.bulk import poll_wait

    assert poll_wait(0.0, 0.5, 30.0) == 0.5           # a young job: the first interval
    assert poll_wait(20.0, 0.5, 30.0) == 5.0          # its end is seen at most 25 % late
    assert poll_wait(3600.0, 0.5, 30.0) == 30.0       # an old one: never rarer than the cap
    # Over a 5 s landing the polls stay few (no spinning): 0.5 s until 2 s, then 25 % steps.
    age, polls = 0.0, 0
    while age < 5.0:
        age += poll_wait(age, 0.5, 30.0)
        polls += 1
    assert polls <= 10 and age < 5.0 * 1.25 + 0.5
