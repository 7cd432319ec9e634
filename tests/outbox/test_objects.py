"""Two objects in one outbox (migration 4): readings and the gateway's status records.

Each row knows its object; leases, bulk leases, statistics and the bulk journal are per object;
acks, nacks, rejects, dead letters, requeue and salvage keep the object. An outbox written by the
previous version (migrations 1-3 only, readings queued, a dead letter, a leased bulk job) migrates
on open without losing a row, and its readings are still readings.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agent.config import OutboxConfig
from agent.fleet import STATUS_FIELDS, STATUS_OBJECT, StatusBuilder, Tallies
from agent.outbox import BulkJobRecord, ObjectQueue, Outbox, store
from agent.outbox import _schema as migrations
from agent.records import EncodedRecord, load_schema
from tests.outbox.conftest import Clock, make_records

STATUS_BUILDER = StatusBuilder(load_schema(None, STATUS_OBJECT, STATUS_FIELDS), "site-1", "cust-1", "test")
T0 = 1_767_225_600_000


def status_records(n: int, start_ms: int = T0) -> list[EncodedRecord]:
    doc = {"clock": {"synced": True}, "outbox": {"rows": 1}}
    return [STATUS_BUILDER.encode(doc, {"level": "ok", "reasons": []}, start_ms=start_ms + i * 60_000,
                                  interval_seconds=60.0, new=Tallies()) for i in range(n)]


def open_outbox(tmp_path: Path, clock: Clock | None = None) -> Outbox:
    return Outbox(OutboxConfig(path=tmp_path / "outbox.db"), now_ms=clock or Clock())


async def test_each_object_leases_only_its_own_rows_oldest_first(tmp_path: Path) -> None:
    async with open_outbox(tmp_path) as ob:
        readings, status = make_records(5), status_records(3)
        # Interleaved as they are written: readings, a status record, more readings, ...
        await ob.append(readings[:2])
        await ob.append(status[:1])
        await ob.append(readings[2:])
        await ob.append(status[1:])
        lease = await ob.lease(100, 10**6)
        assert lease is not None and [r.event_id for r in lease.rows] == [r.event_id for r in readings]
        assert {r.object for r in lease.rows} == {None}
        st = await ob.lease(100, 10**6, obj=STATUS_OBJECT)
        assert st is not None and [r.event_id for r in st.rows] == [r.event_id for r in status]
        assert {r.object for r in st.rows} == {STATUS_OBJECT}
        assert await ob.lease(100, 10**6) is None and await ob.lease(100, 10**6, obj=STATUS_OBJECT) is None
        assert await ob.ack(st) == 3
        assert (await ob.stats()).rows == 5


async def test_object_stats_split_the_totals(tmp_path: Path) -> None:
    clock = Clock()
    async with open_outbox(tmp_path, clock) as ob:
        await ob.append(status_records(2))
        clock.ms += 1000
        readings = make_records(4)
        await ob.append(readings)
        total = await ob.stats()
        main = await ObjectQueue(ob, None).stats()
        other = await ObjectQueue(ob, STATUS_OBJECT).stats()
        assert (main.rows, other.rows) == (4, 2)
        assert main.bytes + other.bytes == total.bytes
        assert main.oldest_enqueued_ms == clock.ms and other.oldest_enqueued_ms == clock.ms - 1000
        lease = await ob.lease_bulk(10, obj=STATUS_OBJECT)
        assert lease is not None and lease.count == 2
        assert (await ob.object_stats(STATUS_OBJECT)).leased == 2 and (await ob.object_stats()).leased == 0


async def test_reject_requeue_and_peek_keep_the_object(tmp_path: Path) -> None:
    async with open_outbox(tmp_path) as ob:
        status = status_records(2)
        await ob.append(status + make_records(1))
        lease = await ob.lease(10, 10**6, obj=STATUS_OBJECT)
        assert lease is not None
        await ob.reject(lease, {status[0].event_id: "bad"})
        [dead] = await ob.dead_letters()
        assert (dead.event_id, dead.object) == (status[0].event_id, STATUS_OBJECT)
        await ob.nack(lease, 0)
        assert await ob.requeue_dead_letters() == 1
        peeked = await ob.peek(10)
        assert [r.object for r in peeked] == [STATUS_OBJECT, None, STATUS_OBJECT]
        assert [r.object for r in await ob.peek(10, obj=None)] == [None]
        assert {r.event_id for r in await ob.peek(10, obj=STATUS_OBJECT)} == {s.event_id for s in status}


async def test_the_bulk_journal_is_per_object(tmp_path: Path) -> None:
    async with open_outbox(tmp_path) as ob:
        await ob.save_job(BulkJobRecord(1, "job-r", "Open"))
        await ob.save_job(BulkJobRecord(2, "job-s", "Open", object=STATUS_OBJECT))
        assert [j.job_id for j in await ob.jobs(None)] == ["job-r"]
        assert [j.job_id for j in await ob.jobs(STATUS_OBJECT)] == ["job-s"]
        assert len(await ob.jobs()) == 2


async def test_a_status_lease_uses_the_partial_index_not_a_scan_of_the_readings(tmp_path: Path) -> None:
    async with open_outbox(tmp_path) as ob:
        await ob.append(make_records(10))
    conn = sqlite3.connect(tmp_path / "outbox.db")
    try:
        plan = " ".join(str(r[-1]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE object = ? AND lease_id IS NULL AND retry_at_ms <= ? "
            "ORDER BY seq LIMIT 10", (STATUS_OBJECT, 0)))
        assert "events_object" in plan, plan
        plan = " ".join(str(r[-1]) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM events WHERE object IS NULL AND lease_id IS NULL AND retry_at_ms <= ? "
            "ORDER BY seq LIMIT 10", (0,)))
        assert "events_lease" in plan, plan
        # The readings' oldest row: a walk in rowid order that stops at the first one, never a sort.
        plan = " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + store._OLDEST_READING))
        assert "TEMP B-TREE" not in plan, plan
    finally:
        conn.close()


# -- an outbox of the previous version -------------------------------------------------------------------


def write_v3_outbox(path: Path, readings: list[EncodedRecord], *, with_job: bool = True) -> None:
    """What the agent before migration 4 left on disk: queued readings, a dead letter, a journaled job
    (without ``with_job``: the last two readings are plainly queued too)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                     "applied_ms INTEGER NOT NULL)")
        for mid, name, statements in migrations.MIGRATIONS[:3]:
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (mid, name))
        queued, dead, bulk = readings[:-3], readings[-3], readings[-2:]
        if not with_job:
            queued, bulk = [*queued, *bulk], []
        conn.executemany("INSERT INTO events (event_id, bytes, enqueued_ms, time_ms, payload) VALUES (?, ?, ?, ?, ?)",
                         [(r.event_id, len(r.payload), 1, r.time_ms, r.payload) for r in queued])
        # Two rows leased by a bulk job that was UploadComplete when the old agent stopped.
        conn.executemany("INSERT INTO events (event_id, bytes, enqueued_ms, time_ms, payload, lease_id) "
                         "VALUES (?, ?, ?, ?, ?, 7)", [(r.event_id, len(r.payload), 1, r.time_ms, r.payload)
                                                      for r in bulk])
        if bulk:
            conn.execute("INSERT INTO bulk_jobs VALUES (7, 'job-old', 'UploadComplete', 1, 0)")
        conn.execute("INSERT INTO dead_letters VALUES (?, ?, 'refused', 1, ?, 1)", (dead.event_id, dead.payload,
                                                                                      dead.time_ms))
        n = len(queued) + len(bulk)
        conn.execute("UPDATE meta SET rows = ?, bytes = ?, leased = ?, dead_letters = 1, next_lease_id = 8",
                     (n, sum(len(r.payload) for r in [*queued, *bulk]), len(bulk)))
    finally:
        conn.close()


async def test_an_outbox_of_the_previous_version_migrates_and_its_readings_stay_readings(tmp_path: Path) -> None:
    readings = make_records(20)
    write_v3_outbox(tmp_path / "outbox.db", readings)
    async with open_outbox(tmp_path) as ob:
        stats = await ob.stats()
        assert (stats.rows, stats.leased, stats.dead_letters) == (19, 2, 1)
        assert (await ob.object_stats(STATUS_OBJECT)).rows == 0
        # The old bulk job is a readings job: the readings' lane resumes it, not the status lane's.
        assert [j.job_id for j in await ob.jobs(None)] == ["job-old"] and await ob.jobs(STATUS_OBJECT) == []
        lease = await ob.lease(100, 10**6)
        assert lease is not None and [r.event_id for r in lease.rows] == [r.event_id for r in readings[:-3]]
        assert await ob.requeue_dead_letters() == 1
        [again] = [r for r in await ob.peek(100) if r.event_id == readings[-3].event_id]
        assert again.object is None
        await ob.append(status_records(1))
        assert (await ob.object_stats(STATUS_OBJECT)).rows == 1
    conn = sqlite3.connect(tmp_path / "outbox.db")
    try:
        applied = [r[0] for r in conn.execute("SELECT id FROM schema_migrations ORDER BY id")]
        assert applied == [m[0] for m in migrations.MIGRATIONS]
        assert json.loads(conn.execute("SELECT payload FROM events WHERE object IS NULL LIMIT 1").fetchone()[0])[
            "site_id"] == "site-1"
    finally:
        conn.close()
