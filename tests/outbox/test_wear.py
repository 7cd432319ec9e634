"""What the outbox writes to the file, beyond the rows themselves (SD-card wear, issue #14).

* A stream lease lives in the writer's TEMP table: the rows' pages are not rewritten; the file
  shows the lease only in the totals row.
* An ack whose lease holds every queued row empties the table without a row-by-row delete; the
  FIFO order (AUTOINCREMENT) and the totals stay right, and rows outside the lease never go.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema


def _records(n: int, start: int = 0) -> list[EncodedRecord]:
    builder = RecordBuilder(load_schema(), "site-wear", "001WEAR", "0.1.0")
    return [builder.encode(Reading(f"inv{i % 3}", 1_700_000_000_000 + (start + i) * 1000, "test",
                                   {"ac_power_w": float(i)})) for i in range(n)]


def _file(path: Path) -> tuple[int, int, int]:
    """(rows marked leased in the file, totals-row leased count, max seq) as another reader sees them."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        marked = conn.execute("SELECT count(lease_id) FROM events").fetchone()[0]
        leased = conn.execute("SELECT leased FROM meta").fetchone()[0]
        top = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    finally:
        conn.close()
    return marked, leased, top


async def test_a_stream_lease_does_not_rewrite_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(OutboxConfig(path=path)) as box:
        await box.append(_records(10))
        lease = await box.lease(4, 10**9)
        assert lease is not None and lease.count == 4
        assert _file(path)[:2] == (0, 4)
        again = await box.lease(100, 10**9)               # the leased rows are not handed out twice
        assert again is not None and {r.event_id for r in again.rows}.isdisjoint(r.event_id for r in lease.rows)
        assert [r.lease_id for r in await box.peek(10)][:4] == [lease.id] * 4
        assert await box.nack(lease, 0) == 4
        assert await box.ack(again) == 6
        back = await box.lease(100, 10**9)
        assert back is not None and back.count == 4 and all(r.attempts == 1 for r in back.rows)


async def test_an_ack_of_every_queued_row_empties_the_table_and_keeps_fifo(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    async with Outbox(OutboxConfig(path=path)) as box:
        await box.append(_records(30))
        lease = await box.lease(1000, 10**9)
        assert lease is not None and lease.count == 30
        top = _file(path)[2]
        assert await box.ack(lease) == 30
        st = await box.stats()
        assert (st.rows, st.bytes, st.leased) == (0, 0, 0)
        await box.append(_records(5, start=100))
        peek = await box.peek(10)
        assert len(peek) == 5 and min(r.rowid for r in peek) > top   # seq never goes back


async def test_an_ack_leaves_the_rows_outside_its_lease(tmp_path: Path) -> None:
    async with Outbox(OutboxConfig(path=tmp_path / "o.db")) as box:
        await box.append(_records(10))
        lease = await box.lease(6, 10**9)
        assert lease is not None
        await box.append(_records(3, start=50))
        assert await box.ack(lease) == 6
        st = await box.stats()
        assert st.rows == 7 and st.bytes == sum(len(r.payload) for r in [*_records(10)[6:], *_records(3, start=50)])


async def test_an_ack_of_most_rows_keeps_the_others_as_they_were(tmp_path: Path) -> None:
    async with Outbox(OutboxConfig(path=tmp_path / "o.db")) as box:
        await box.append(_records(40))
        big = await box.lease(40, 10**9)
        await box.append(_records(5, start=100))
        other = await box.lease(2, 10**9)                 # two of the newer rows, in another lease
        assert big is not None and other is not None and big.count == 40
        before = {r.event_id: (r.rowid, r.lease_id) for r in await box.peek(100)}
        assert await box.ack(big) == 40
        after = {r.event_id: (r.rowid, r.lease_id) for r in await box.peek(100)}
        assert after == {k: v for k, v in before.items() if v[1] != big.id}    # same seq, same leases
        assert await box.ack(other) == 2
        rest = await box.lease(100, 10**9)
        assert rest is not None and rest.count == 3
        st = await box.stats()
        assert (st.rows, st.leased) == (3, 3) and st.bytes == sum(len(r.payload) for r in _records(5, start=100)[2:])


async def test_an_ack_of_a_bulk_lease_keeps_the_rows_that_came_after_it(tmp_path: Path) -> None:
    # A bulk lease marks its rows (lease_id in the row): the rows outside it have lease_id NULL, where
    # "NOT (lease_id = ?)" is NULL, not true. The e2e restart test lost the fresh readings of a site that
    # way (a resumed bulk job's ack emptied the table); this is that case on the outbox alone.
    async with Outbox(OutboxConfig(path=tmp_path / "o.db")) as box:
        await box.append(_records(40))
        bulk = await box.lease_bulk(40, None)
        assert bulk is not None and bulk.count == 40
        await box.append(_records(5, start=100))
        stream = await box.lease(2, 10**9)              # two of the fresh rows in a stream lease, three in none
        assert stream is not None and stream.count == 2
        assert await box.ack(bulk) == 40
        st = await box.stats()
        assert (st.rows, st.leased) == (5, 2)
        assert sorted(r.event_id for r in await box.peek(100)) == sorted(r.event_id for r in _records(5, start=100))
        assert await box.ack(stream) == 2
        rest = await box.lease(100, 10**9)
        assert rest is not None and rest.count == 3
