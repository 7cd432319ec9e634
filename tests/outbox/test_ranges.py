"""Bulk leases held as seq ranges (migration 5): a backfill's lease writes one row, not one per reading.

A range holds every row of its object with lo <= seq <= hi; it is only taken where all of them were
ready to lease, and seq never goes back, so a later row can never fall into it. What could go
wrong, and is pinned here: a row appended, re-queued or of another object counted into a range (an
ack would delete it undelivered), a range's rows leased a second time or dropped by when_full,
a range forgotten by a restart while its job is still live, or kept after its job ended.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import OutboxFullError
from agent.outbox import BulkJobRecord, Outbox
from agent.outbox.store import BULK_LEASE_OF_ROW
from tests.outbox.conftest import make_records
from tests.outbox.test_objects import STATUS_OBJECT, status_records


def file_rows(db_path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the outbox file beside the open store (WAL mode: a consistent snapshot)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_a_backlog_lease_is_one_range_row_and_no_row_is_rewritten(outbox: Outbox, db_path: Path) -> None:
    recs = make_records(50)
    await outbox.append(recs)
    bulk = await outbox.lease_bulk(40)
    assert bulk is not None and bulk.count == 40
    assert file_rows(db_path, "SELECT object, lo, hi FROM bulk_ranges") == [(None, 1, 40)]
    assert file_rows(db_path, "SELECT count(*) FROM events WHERE lease_id IS NOT NULL") == [(0,)]
    assert (await outbox.stats()).leased == 40
    assert [p async for c in outbox.iter_lease(bulk, chunk_rows=7) for p in c] == [r.payload for r in recs[:40]]
    peeked = await outbox.peek(45)
    assert [r.lease_id for r in peeked] == [bulk.id] * 40 + [None] * 5
    assert file_rows(db_path, f"SELECT {BULK_LEASE_OF_ROW} FROM events WHERE seq IN (40, 41)") == [(bulk.id,), (None,)]


async def test_rows_written_after_the_lease_never_join_it(outbox: Outbox) -> None:
    old, new = make_records(30), make_records(20, start=30)
    await outbox.append(old)
    bulk = await outbox.lease_bulk(1000)
    assert bulk is not None and bulk.count == 30
    await outbox.append(new)
    stream = await outbox.lease(1000, 10**9)
    assert stream is not None and [r.event_id for r in stream.rows] == [r.event_id for r in new]
    await outbox.nack(stream, 0)                     # back in the queue, after the range
    assert await outbox.ack(bulk) == 30
    left = await outbox.peek(100)
    assert [r.event_id for r in left] == [r.event_id for r in new]
    assert (await outbox.stats()).leased == 0


async def test_a_range_of_readings_holds_no_status_record_between_them(outbox: Outbox) -> None:
    readings, status = make_records(20), status_records(3)
    for i in range(3):                                # interleaved, as the agent writes them
        await outbox.append(readings[i * 5:(i + 1) * 5])
        await outbox.append(status[i:i + 1])
    await outbox.append(readings[15:])
    bulk = await outbox.lease_bulk(1000)
    assert bulk is not None and bulk.count == 20
    st = await outbox.lease(100, 10**9, obj=STATUS_OBJECT)
    assert st is not None and [r.event_id for r in st.rows] == [r.event_id for r in status]
    assert await outbox.ack(bulk) == 20
    assert [r.event_id for r in await outbox.peek(100)] == [r.event_id for r in status]


async def test_a_row_leased_in_the_middle_makes_a_marked_lease_that_skips_it(outbox: Outbox, db_path: Path) -> None:
    recs = make_records(10)
    await outbox.append(recs)
    stream = await outbox.lease(5, 10**9)
    assert stream is not None
    await outbox.nack(stream, 0, [recs[0].event_id, recs[1].event_id])   # seq 3-5 stay stream-leased
    bulk = await outbox.lease_bulk(1000)
    assert bulk is not None and bulk.count == 7
    assert file_rows(db_path, "SELECT count(*) FROM bulk_ranges") == [(0,)]
    assert file_rows(db_path, "SELECT seq FROM events WHERE lease_id IS NOT NULL ORDER BY seq") == [
        (1,), (2,), (6,), (7,), (8,), (9,), (10,)]
    assert await outbox.ack(bulk) == 7
    assert await outbox.ack(stream) == 3
    assert (await outbox.stats()).rows == 0


async def test_a_nacked_range_goes_back_whole_and_a_partial_nack_keeps_the_rest(outbox: Outbox) -> None:
    recs = make_records(12)
    await outbox.append(recs)
    bulk = await outbox.lease_bulk(1000)
    assert bulk is not None
    assert await outbox.nack(bulk, 0) == 12
    assert (await outbox.stats()).leased == 0
    again = await outbox.lease_bulk(1000)
    assert again is not None and again.count == 12
    assert all(r.attempts == 1 for r in await outbox.peek(12))
    assert await outbox.nack(again, 0, [recs[0].event_id, recs[11].event_id]) == 2
    stream = await outbox.lease(100, 10**9)
    assert stream is not None and [r.event_id for r in stream.rows] == [recs[0].event_id, recs[11].event_id]
    assert await outbox.ack(again) == 10                 # the ten it still held, no more
    assert [r.event_id for r in await outbox.peek(100)] == [recs[0].event_id, recs[11].event_id]


async def test_when_full_never_drops_a_ranged_row(open_outbox: Callable[..., Outbox]) -> None:
    recs = make_records(10)
    async with open_outbox(max_bytes=sum(len(r.payload) for r in recs[:6]) + 10) as ob:
        await ob.append(recs[:6])
        bulk = await ob.lease_bulk(4)
        assert bulk is not None and bulk.count == 4
        await ob.append(recs[6:8])                      # full: drops seq 5 and 6, after the range
        assert [r.event_id for r in await ob.peek(100)] == [r.event_id for r in recs[:4] + recs[6:8]]
        with pytest.raises(OutboxFullError):
            await ob.append(make_records(6, start=20))  # room only by dropping leased rows: refused
        assert await ob.ack(bulk) == 4


async def test_a_restart_keeps_the_range_of_a_live_job_only(open_outbox: Callable[..., Outbox], db_path: Path) -> None:
    async with open_outbox() as ob:
        await ob.append(make_records(10))
        live = await ob.lease_bulk(4)
        ended = await ob.lease_bulk(3)
        orphan = await ob.lease_bulk(2)                 # leased, no job recorded yet: a crash here
        assert live is not None and ended is not None and orphan is not None
        await ob.save_job(BulkJobRecord(live.id, "750xx", "UploadComplete"))
        await ob.save_job(BulkJobRecord(ended.id, "751xx", "Failed"))
    async with open_outbox() as ob:
        assert file_rows(db_path, "SELECT lease_id, lo, hi FROM bulk_ranges") == [(live.id, 1, 4)]
        assert (await ob.stats()).leased == 4
        stream = await ob.lease(100, 10**9)
        assert stream is not None and stream.count == 6
        await ob.nack(stream, 0)
        await ob.delete_job(live.id)                    # the job is forgotten: its rows go back
        assert (await ob.stats()).leased == 0
        assert file_rows(db_path, "SELECT count(*) FROM bulk_ranges") == [(0,)]
        assert (await ob.lease(100, 10**9)).count == 10  # type: ignore[union-attr]
