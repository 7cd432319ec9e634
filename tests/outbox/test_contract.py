"""The outbox contract, on a real SQLite file: every operation, its edge cases and restarts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import OutboxError, OutboxFatalError
from agent.outbox import AppendResult, BulkJobRecord, Outbox, read_stats
from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema
from agent.sources.profiles.opendtu import OpenDtuDecoder
from tests.outbox.conftest import Clock, make_records


def ids(rows: object) -> list[str]:
    return [r.event_id for r in rows]  # type: ignore[attr-defined]


async def test_append_is_stored_and_counted(outbox: Outbox, db_path: Path) -> None:
    recs = make_records(5)
    assert await outbox.append(recs) == AppendResult(5, 0, 0)
    st = await outbox.stats()
    assert (st.rows, st.bytes, st.leased, st.dead_letters) == (5, sum(len(r.payload) for r in recs), 0, 0)
    assert ids(await outbox.peek()) == [r.event_id for r in recs]
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
    assert st.file_bytes > 0


async def test_a_replay_keeps_the_queued_row(outbox: Outbox) -> None:
    recs = make_records(3)
    await outbox.append(recs)
    result = await outbox.append([recs[0], *make_records(1, start=3), make_records(1, start=3)[0]])
    assert result == AppendResult(1, 2, 0)
    assert ids(await outbox.peek()) == [r.event_id for r in make_records(4)]
    st = await outbox.stats()
    assert st.rows == 4
    assert st.bytes == sum(len(r.payload) for r in make_records(4))


# A topic-per-field feed (Victron, SolarAssistant) whose fields come more than the idle time apart:
# the cycle is flushed with what came, then emitted again with every field and the same time, so
# the same event id (sources/profiles/_base.py, Assembler). The queued row must end up with both.
_CYCLE = RecordBuilder(load_schema(), "site-union", "001UNION", "0.1.0")


def _cycle(**metrics: float) -> EncodedRecord:
    return _CYCLE.encode(Reading("victron-hq1", 1_700_000_000_000, "victron", metrics))


def _fields(payload: bytes) -> dict[str, object]:
    return {k: v for k, v in json.loads(payload).items() if v is not None}


async def test_a_fuller_copy_completes_the_queued_row(outbox: Outbox) -> None:
    first, whole = _cycle(ac_power_w=1200.0), _cycle(ac_power_w=1200.0, battery_soc_pct=81.0)
    assert first.event_id == whole.event_id
    await outbox.append([first])
    assert await outbox.append([whole]) == AppendResult(0, 1, 0)       # no new reading: the same one, fuller
    rows = await outbox.peek()
    assert len(rows) == 1 and _fields(rows[0].payload) == _fields(whole.payload)
    # A fragment of it arriving later (a redelivered message after a restart) takes nothing away.
    await outbox.append([_cycle(battery_soc_pct=81.0)])
    assert _fields((await outbox.peek())[0].payload) == _fields(whole.payload)
    st = await outbox.stats()
    assert (st.rows, st.bytes, st.leased) == (1, len(rows[0].payload), 0)
    # A copy with another value for a field already stored (assembled again from redelivered
    # messages, one of another cycle mixed in) changes none: only the field it alone has is added.
    await outbox.append([_cycle(ac_power_w=999.0, battery_voltage_v=52.1)])
    got = _fields((await outbox.peek())[0].payload)
    assert (got["ac_power_w"], got["battery_soc_pct"], got["battery_voltage_v"]) == (1200.0, 81.0, 52.1)


async def test_an_idle_flushed_cycle_and_its_rest_land_whole(outbox: Outbox) -> None:
    # The decoder's own two emits (tests/sources/test_profiles.py: test_idle_flush_keeps_the_cycle_whole),
    # committed in turn while the first still waits for the next flush.
    d = OpenDtuDecoder(idle_ms=1000)
    d.feed("solar/114182912345/status/last_update", b"1732860000", 1_732_860_000_000)
    d.feed("solar/114182912345/0/power", b"1", 1_732_860_000_000)
    first = d.tick(1_732_860_001_500)
    d.feed("solar/114182912345/0/voltage", b"230", 1_732_860_001_600)
    rest = d.tick(1_732_860_003_000)
    await outbox.append([_CYCLE.encode(r) for r in first])
    await outbox.append([_CYCLE.encode(r) for r in rest])
    rows = await outbox.peek()
    assert len(rows) == 1
    assert {"ac_power_w": 1.0, "ac_voltage_v": 230.0}.items() <= _fields(rows[0].payload).items()


@pytest.mark.parametrize("lane", ["stream", "bulk"])
async def test_a_fuller_copy_of_a_row_in_flight_is_queued_after_it(outbox: Outbox, lane: str) -> None:
    first, whole = _cycle(ac_power_w=1200.0), _cycle(ac_power_w=1200.0, battery_soc_pct=81.0)
    await outbox.append([first, *make_records(2)])
    lease = await (outbox.lease(10, 1_000_000) if lane == "stream" else outbox.lease_bulk(10))
    assert lease is not None and lease.count == 3
    await outbox.append([whole])                    # while the partial copy is on its way
    assert await outbox.ack(lease) == 2             # the partial copy is no longer queued; the rest is
    st = await outbox.stats()
    assert (st.rows, st.leased) == (1, 0)
    again = await outbox.lease(10, 1_000_000)
    assert again is not None and [_fields(r.payload) for r in again.rows] == [_fields(whole.payload)]


async def test_group_commit_shares_one_transaction(outbox: Outbox) -> None:
    gate = threading.Event()
    writer = outbox._writer
    assert writer is not None
    blocked = writer.call(gate.wait)          # hold the writer so the appends pile up
    before = outbox.append_commits
    tasks = [asyncio.ensure_future(outbox.append(make_records(2, start=2 * i))) for i in range(50)]
    # Scheduled after the tasks' first steps, which queue their appends behind the blocker.
    asyncio.get_running_loop().call_soon(gate.set)
    await blocked
    results = await asyncio.gather(*tasks)
    assert all(r.appended == 2 for r in results)
    assert outbox.append_commits - before == 1
    assert (await outbox.stats()).rows == 100


async def test_concurrent_appends_use_fewer_commits_than_calls(outbox: Outbox) -> None:
    before = outbox.append_commits
    await asyncio.gather(*(outbox.append(make_records(1, start=i)) for i in range(200)))
    assert (await outbox.stats()).rows == 200
    assert outbox.append_commits - before < 200


async def test_lease_oldest_first_with_record_and_byte_limits(outbox: Outbox) -> None:
    recs = make_records(10)
    await outbox.append(recs)
    size = len(recs[0].payload)
    lease = await outbox.lease(max_records=4, max_bytes=10_000_000)
    assert lease is not None and ids(lease.rows) == [r.event_id for r in recs[:4]]
    assert lease.count == 4 and lease.payload_bytes == sum(len(r.payload) for r in recs[:4])
    lease2 = await outbox.lease(max_records=100, max_bytes=2 * size + size // 2)
    assert lease2 is not None and ids(lease2.rows) == [r.event_id for r in recs[4:6]]
    assert lease2.id != lease.id
    # A single row bigger than max_bytes still goes out alone, never blocks the queue.
    lease3 = await outbox.lease(max_records=100, max_bytes=1)
    assert lease3 is not None and ids(lease3.rows) == [recs[6].event_id]
    assert (await outbox.stats()).leased == 7


async def test_lease_empty_and_invalid(outbox: Outbox) -> None:
    assert await outbox.lease(10, 1000) is None
    with pytest.raises(OutboxError):
        await outbox.lease(0, 1000)


async def test_ack_deletes_all_or_some(outbox: Outbox) -> None:
    recs = make_records(6)
    await outbox.append(recs)
    lease = await outbox.lease(6, 10**9)
    assert lease is not None
    assert await outbox.ack(lease, [recs[0].event_id, recs[1].event_id, "not-there"]) == 2
    st = await outbox.stats()
    assert (st.rows, st.leased) == (4, 4)
    assert await outbox.ack(lease) == 4
    st = await outbox.stats()
    assert (st.rows, st.bytes, st.leased, st.oldest_enqueued_ms) == (0, 0, 0, None)
    assert await outbox.ack(lease) == 0


async def test_nack_hides_rows_until_retry_time(outbox: Outbox, clock: Clock) -> None:
    recs = make_records(3)
    await outbox.append(recs)
    lease = await outbox.lease(3, 10**9)
    assert lease is not None
    assert await outbox.nack(lease, clock.ms + 5000, [recs[0].event_id]) == 1
    assert await outbox.nack(lease, clock.ms + 1000) == 2
    assert await outbox.lease(10, 10**9) is None
    clock.ms += 1000
    again = await outbox.lease(10, 10**9)
    assert again is not None and ids(again.rows) == [recs[1].event_id, recs[2].event_id]
    assert [r.attempts for r in again.rows] == [1, 1]
    clock.ms += 4000
    last = await outbox.lease(10, 10**9)
    assert last is not None and ids(last.rows) == [recs[0].event_id]


async def test_older_than_keeps_to_old_rows(outbox: Outbox, clock: Clock) -> None:
    await outbox.append(make_records(3))
    clock.ms += 60_000
    await outbox.append(make_records(2, start=3))
    lease = await outbox.lease(10, 10**9, older_than_ms=clock.ms - 30_000)
    assert lease is not None and lease.count == 3
    assert await outbox.lease(10, 10**9, older_than_ms=clock.ms - 30_000) is None


async def test_reject_moves_to_dead_letters_and_requeue_brings_back(outbox: Outbox, clock: Clock) -> None:
    recs = make_records(4)
    await outbox.append(recs)
    lease = await outbox.lease(4, 10**9)
    assert lease is not None
    n = await outbox.reject(lease, {recs[1].event_id: "bad field ac_power_w", "unknown": "x"})
    assert n == 1
    st = await outbox.stats()
    assert (st.rows, st.leased, st.dead_letters) == (3, 3, 1)
    dead = await outbox.dead_letters()
    assert [(d.event_id, d.payload, d.reason, d.rejected_ms) for d in dead] == [
        (recs[1].event_id, recs[1].payload, "bad field ac_power_w", clock.ms)
    ]
    assert await outbox.ack(lease) == 3       # the others stayed leased
    assert await outbox.requeue_dead_letters() == 1
    st = await outbox.stats()
    assert (st.rows, st.bytes, st.dead_letters) == (1, len(recs[1].payload), 0)
    again = await outbox.lease(10, 10**9)
    assert again is not None and again.rows[0].payload == recs[1].payload


async def test_requeue_selected_dead_letters(outbox: Outbox) -> None:
    recs = make_records(3)
    await outbox.append(recs)
    lease = await outbox.lease(3, 10**9)
    assert lease is not None
    await outbox.reject(lease, {r.event_id: "no" for r in recs})
    assert await outbox.requeue_dead_letters([recs[2].event_id]) == 1
    assert set(ids(await outbox.dead_letters())) == {recs[0].event_id, recs[1].event_id}
    assert (await outbox.stats()).dead_letters == 2


async def test_bulk_lease_and_iter_lease(outbox: Outbox) -> None:
    recs = make_records(120)
    await outbox.append(recs)
    bulk = await outbox.lease_bulk(100)
    assert bulk is not None and bulk.rows == () and bulk.count == 100
    assert bulk.payload_bytes == sum(len(r.payload) for r in recs[:100])
    chunks = [c async for c in outbox.iter_lease(bulk, chunk_rows=30)]
    assert [len(c) for c in chunks] == [30, 30, 30, 10]
    assert [p for c in chunks for p in c] == [r.payload for r in recs[:100]]
    stream = await outbox.lease(100, 10**9)
    assert stream is not None and stream.count == 20          # bulk rows are invisible to others
    assert await outbox.ack(bulk) == 100
    assert (await outbox.stats()).rows == 20


async def test_bulk_lease_byte_limit(outbox: Outbox) -> None:
    recs = make_records(10)
    await outbox.append(recs)
    size3 = sum(len(r.payload) for r in recs[:3])
    bulk = await outbox.lease_bulk(100, max_bytes=size3 + 10)
    assert bulk is not None and (bulk.count, bulk.payload_bytes) == (3, size3)
    one = await outbox.lease_bulk(100, max_bytes=1)
    assert one is not None and one.count == 1
    assert [p async for c in outbox.iter_lease(one) for p in c] == [recs[3].payload]


async def test_leases_released_on_reopen(open_outbox: Callable[..., Outbox]) -> None:
    async with open_outbox() as ob:
        await ob.append(make_records(10))
        assert await ob.lease(5, 10**9) is not None
        assert await ob.lease_bulk(3) is not None
        assert (await ob.stats()).leased == 8
    async with open_outbox() as ob:
        st = await ob.stats()
        assert (st.rows, st.leased) == (10, 0)
        lease = await ob.lease(100, 10**9)
        assert lease is not None and lease.count == 10


async def test_job_journal_survives_reopen_and_keeps_its_rows(open_outbox: Callable[..., Outbox]) -> None:
    async with open_outbox() as ob:
        await ob.append(make_records(10))
        live = await ob.lease_bulk(4)
        done = await ob.lease_bulk(3)
        assert live is not None and done is not None
        await ob.save_job(BulkJobRecord(live.id, None, "creating"))
        await ob.save_job(BulkJobRecord(live.id, "750xx", "UploadComplete", files_uploaded=1, updated_ms=5))
        await ob.save_job(BulkJobRecord(done.id, "751xx", "Failed"))
    async with open_outbox() as ob:
        assert await ob.jobs() == [
            BulkJobRecord(live.id, "750xx", "UploadComplete", 1, 5),
            BulkJobRecord(done.id, "751xx", "Failed", 0, 0),
        ]
        assert (await ob.stats()).leased == 4            # the live job's rows wait for the bulk lane
        assert [len(c) async for c in ob.iter_lease(live)] == [4]
        assert await ob.ack(live) == 4
        await ob.delete_job(live.id)
        await ob.delete_job(done.id)
        assert await ob.jobs() == []
        nxt = await ob.lease(100, 10**9)
        assert nxt is not None and nxt.count == 6 and nxt.id > done.id   # ids never repeat


async def test_dropped_total_and_counters_persist(open_outbox: Callable[..., Outbox], db_path: Path) -> None:
    async with open_outbox(max_bytes=len(make_records(1)[0].payload) * 3) as ob:
        for rec in make_records(5):
            await ob.append([rec])
        first = await ob.stats()
    assert first.dropped_total == 2
    async with open_outbox() as ob:
        again = await ob.stats()
    assert (again.rows, again.bytes, again.dropped_total) == (first.rows, first.bytes, 2)
    with sqlite3.connect(db_path) as conn:
        from agent.outbox._schema import LATEST
        assert conn.execute("SELECT id FROM schema_migrations").fetchall() == [(i,) for i in range(1, LATEST + 1)]
        assert conn.execute("SELECT count(*), total(bytes) FROM events").fetchone() == (again.rows, again.bytes)


async def test_second_writer_is_refused(outbox: Outbox, open_outbox: Callable[..., Outbox]) -> None:
    with pytest.raises(OutboxError, match="another process"):
        await open_outbox().open()
    assert (await outbox.stats()).rows == 0       # the first one is untouched


async def test_not_open_is_an_error(open_outbox: Callable[..., Outbox]) -> None:
    ob = open_outbox()
    with pytest.raises(OutboxError, match="not open"):
        await ob.append(make_records(1))
    await ob.close()                                # closing an unopened outbox is harmless


async def test_parent_directory_is_created(tmp_path: Path, clock: Clock) -> None:
    from agent.config import OutboxConfig

    path = tmp_path / "a" / "b" / "outbox.db"
    async with Outbox(OutboxConfig(path=path), now_ms=clock) as ob:
        await ob.append(make_records(1))
    assert path.is_file()


async def test_disk_full_while_committing_is_fatal(outbox: Outbox, open_outbox: Callable[..., Outbox]) -> None:
    await outbox.append(make_records(5))
    writer = outbox._writer
    assert writer is not None and outbox._conn is not None
    conn = outbox._conn
    # SQLite's own page limit gives a real SQLITE_FULL without filling the test machine's disk.
    await writer.call(lambda: conn.execute("PRAGMA max_page_count=40"))
    with pytest.raises(OutboxFatalError) as info:
        for i in range(100):
            await outbox.append(make_records(20, start=100 + 20 * i))
    assert "SQLITE_FULL" in str(info.value) and info.value.hint
    with pytest.raises(OutboxFatalError):
        await outbox.stats()                        # never guess past a fatal error
    await outbox.close()
    async with open_outbox() as ob:                 # what committed before is intact
        st = await ob.stats()
        assert st.rows >= 5
        assert ids(await ob.peek(5)) == [r.event_id for r in make_records(5)]


async def test_read_stats_while_open_and_after(outbox: Outbox, db_path: Path) -> None:
    await outbox.append(make_records(7))
    lease = await outbox.lease(2, 10**9)
    assert lease is not None
    live = await outbox.stats()
    seen = await asyncio.to_thread(read_stats, db_path)
    assert (seen.rows, seen.bytes, seen.leased, seen.oldest_enqueued_ms) == (
        live.rows, live.bytes, live.leased, live.oldest_enqueued_ms)
    await outbox.append(make_records(1, start=7))     # the reader did not block the writer
    await outbox.close()
    files = sorted(p.name for p in db_path.parent.iterdir())
    before = db_path.stat()
    after_close = read_stats(db_path)
    assert after_close.rows == 8
    assert sorted(p.name for p in db_path.parent.iterdir()) == files
    assert (db_path.stat().st_mtime_ns, db_path.stat().st_size) == (before.st_mtime_ns, before.st_size)


def test_read_stats_missing_file_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="no outbox"):
        read_stats(tmp_path / "nope.db")
    assert list(tmp_path.iterdir()) == []
