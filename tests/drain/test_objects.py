"""Two objects, two sets of lanes, one outbox: readings and gateway status records against the emulator.

Built like the runtime builds them (agent/runtime.py): one drain per object over an ObjectQueue, a
streaming client and a bulk lane on the object's endpoint, one shared request pacer and bulk job
budget. Each object lands in its own table; neither waits behind the other; a connector that does
not know (or knows an older) status object stops only the status lanes, with every row kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from agent.bulk_lane import BulkLane
from agent.config import DataCloudConfig, DrainConfig, OutboxConfig
from agent.datacloud import BulkClient, JobBudget, Pacer, StreamingClient, TokenProvider
from agent.drain import Drain
from agent.emulator import Emulator
from agent.fleet import STATUS_FIELDS, STATUS_OBJECT, StatusBuilder
from agent.outbox import ObjectQueue, Outbox
from agent.records import EncodedRecord, default_schema_path, load_schema
from tests.drain.test_drain import drain_config, records
from tests.outbox.test_objects import status_records, write_v3_outbox
from tests.peers.emulator import CLIENT_ID, USERNAME, running_emulator
from tests.waiting import wait_for as until

SCHEMA = load_schema()
STATUS_SCHEMA = load_schema(None, STATUS_OBJECT, STATUS_FIELDS)
STATUS_BUILDER = StatusBuilder(STATUS_SCHEMA, "site-1", "cust-1", "test")


@dataclass
class Rig:
    emu: Emulator
    outbox: Outbox
    readings: Drain
    status: Drain

    async def append(self, recs: list[EncodedRecord]) -> None:
        res = await self.outbox.append(recs)
        drain = self.status if recs[0].object == STATUS_OBJECT else self.readings
        drain.notify_appended(res.appended, sum(len(r.payload) for r in recs))


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, cfg: DrainConfig, *, prepared: bool = False, **emu: Any) -> AsyncIterator[Rig]:
    async with running_emulator(tmp_path, **emu) as em, \
            Outbox(OutboxConfig(path=tmp_path / "outbox.db")) as outbox, aiohttp.ClientSession() as session:
        dc = DataCloudConfig(login_url=em.url, client_id=CLIENT_ID, username=USERNAME,
                             private_key_path=tmp_path / "jwt.key", source_name="solar_agent", timeout_seconds=5.0)
        tokens = TokenProvider(dc, session)
        pacer, budget = Pacer(cfg.max_requests_per_second), JobBudget()

        def drain(obj: str | None, endpoint: str, schema: Any) -> Drain:
            queue = ObjectQueue(outbox, obj)

            async def samples() -> list[bytes]:
                sample = [STATUS_BUILDER.sample(time.time_ns() // 1_000_000).payload] if obj else []
                return [r.payload for r in await queue.peek(1)] + sample
            return Drain(queue, StreamingClient(tokens, session, "solar_agent", endpoint,
                                                max_body_bytes=cfg.batch_max_bytes),
                         BulkLane(BulkClient(tokens, session, "solar_agent", endpoint), outbox, schema,
                                  max_file_bytes=cfg.bulk_file_max_bytes, tmp_dir=tmp_path, budget=budget,
                                  poll_initial_seconds=0.05, obj=obj),
                         cfg, pacer=pacer, samples=samples)
        r = Rig(em, outbox, drain(None, "solar_panel_event", SCHEMA),
                drain(STATUS_OBJECT, STATUS_OBJECT, STATUS_SCHEMA))
        tasks = [asyncio.create_task(d.run()) for d in (r.readings, r.status)]
        try:
            yield r
        finally:
            for d in (r.readings, r.status):
                d.stop()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def _empty(outbox: Outbox) -> bool:
    stats = await outbox.stats()
    return stats.rows == 0


async def test_each_object_lands_in_its_own_table(tmp_path: Path) -> None:
    async with rig(tmp_path, drain_config(flush_interval_seconds=0.2)) as r:
        readings, status = records(30), status_records(4)
        await r.append(readings[:15])
        await r.append(status)
        await r.append(readings[15:])
        await until(lambda: _empty(r.outbox), 15, "both objects delivered")
        assert r.emu.store.keys() == {x.event_id for x in readings}
        assert r.emu.store.keys(STATUS_OBJECT) == {x.event_id for x in status}
        landed = r.emu.store.get(status[0].event_id, STATUS_OBJECT)
        assert landed is not None and landed["date_time"] == "2026-01-01T00:00:00.000Z"
        assert r.status.stream_state.sent_total == 4 and r.readings.stream_state.sent_total == 30


async def test_an_outbox_of_the_previous_version_migrates_and_delivers(tmp_path: Path) -> None:
    old = records(40)
    write_v3_outbox(tmp_path / "outbox.db", old, with_job=False)
    async with rig(tmp_path, drain_config(flush_interval_seconds=0.2)) as r:
        await r.emu.wait_landed(39, timeout=15)        # every queued reading; the dead letter stays one
        await r.append(status_records(1))
        await r.emu.wait_landed(1, timeout=15, obj=STATUS_OBJECT)
        assert r.emu.store.keys() == {x.event_id for x in old} - {old[-3].event_id}
        assert (await r.outbox.stats()).dead_letters == 1
        await until(lambda: _empty(r.outbox), 10, "the outbox empty")


async def test_status_records_go_through_a_bulk_job_of_their_own_object(tmp_path: Path) -> None:
    # bulk_after 0: every queued row is old enough for a job (the fresh window is 0 s).
    async with rig(tmp_path, drain_config(flush_interval_seconds=1.0, bulk_after_seconds=0.0,
                                          batch_max_bytes=3_000)) as r:
        status, readings = status_records(12), records(20)
        await r.outbox.append(status)
        # An operator's `drain --now --bulk`: the status backlog goes by a bulk job of its own object.
        r.status.flush_now(bulk=True)
        await r.append(readings)
        await until(lambda: r.status.bulk_state.sent_total == 12, 20, "the status rows' bulk job")
        await r.emu.wait_landed(12, timeout=10, obj=STATUS_OBJECT)
        await r.emu.wait_landed(20, timeout=10)
        assert r.emu.store.keys(STATUS_OBJECT) == {x.event_id for x in status}
        assert r.emu.store.keys() == {x.event_id for x in readings}
        assert r.status.stream_state.sent_total == 0
        # The job named the status object's endpoint; its CSV header was that object's.
        assert [j.object for j in r.emu._jobs.jobs.values()] == [STATUS_OBJECT]
        await until(lambda: _no_jobs(r.outbox), 10, "the journal entry gone")


async def _no_jobs(outbox: Outbox) -> bool:
    return await outbox.jobs() == []


async def test_a_readings_backlog_does_not_hold_up_a_status_record(tmp_path: Path) -> None:
    # A slow org (4 requests/s) and a backlog of 60 small batches of readings: a status record
    # appended behind them is sent on its own lane's next flush, not after the backlog.
    cfg = drain_config(flush_interval_seconds=0.3, batch_max_bytes=2_000, max_requests_per_second=4.0)
    async with rig(tmp_path, cfg) as r:
        await r.append(records(150))
        await until(lambda: r.readings.stream_state.sent_total > 0, 10, "the backlog started")
        [status] = status_records(1)
        await r.append([status])
        await r.emu.wait_landed(1, timeout=10, obj=STATUS_OBJECT)
        assert r.emu.store.count() < 150, "the status record waited for the whole readings backlog"
        # ... and a queue of status records does not hold up readings either.
        more = status_records(50, start_ms=1_800_000_000_000)
        await r.append(more)
        fresh = records(1, start_ms=1_900_000_000_000)
        await r.append(fresh)
        await r.emu.wait_landed(151, timeout=60)
        await r.emu.wait_landed(51, timeout=30, obj=STATUS_OBJECT)


def _schema_without_status(tmp_path: Path, *, older: bool) -> Path:
    doc = yaml.safe_load(default_schema_path().read_text())
    if older:    # the status object as a future version will see this one: a field short
        del doc["components"]["schemas"][STATUS_OBJECT]["properties"]["readings_new"]
    else:        # a connector still on the one-object schema file
        del doc["components"]["schemas"][STATUS_OBJECT]
    path = tmp_path / "uploaded.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def test_a_connector_without_the_status_object_keeps_the_status_rows_and_delivers_readings(
        tmp_path: Path) -> None:
    schema = _schema_without_status(tmp_path, older=False)
    async with rig(tmp_path, drain_config(flush_interval_seconds=0.2), schema_path=schema) as r:
        status, readings = status_records(3), records(10)
        await r.append(status)
        await r.append(readings)
        await r.emu.wait_landed(10, timeout=15)
        await until(lambda: r.status.stream_state.consecutive_failures >= 1, 10, "the status lane failing")
        assert "404" in r.status.stream_state.last_error
        st = await r.outbox.object_stats(STATUS_OBJECT)
        assert st.rows == 3 and (await r.outbox.stats()).dead_letters == 0    # kept, not dead-lettered


async def test_an_older_status_object_stops_only_the_status_lanes(tmp_path: Path) -> None:
    schema = _schema_without_status(tmp_path, older=True)
    async with rig(tmp_path, drain_config(flush_interval_seconds=0.2), schema_path=schema) as r:
        status, readings = status_records(3), records(10)
        await r.append(status)
        await r.append(readings)
        await r.emu.wait_landed(10, timeout=15)
        await until(lambda: bool(r.status.guard.mismatch), 10, "the status object's schema mismatch")
        assert "readings_new" in r.status.guard.mismatch and not r.readings.guard.mismatch
        assert r.status.lane == "stopped" and r.readings.lane == "stream"
        st = await r.outbox.object_stats(STATUS_OBJECT)
        assert st.rows == 3 and (await r.outbox.stats()).dead_letters == 0
