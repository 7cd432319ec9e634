"""Fleet visibility end to end: the agent process reports itself as solar_gateway_status through an
outage of several report intervals, and once the link is back the emulator holds one status row
per interval, the outage's included, next to every reading: nothing lost, nothing duplicated in
either object. The agent's own ledger (a trigger inside its append transactions, tests/peers/site.py)
says what it committed; the emulator's tables say what landed."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import signal
import time
from pathlib import Path

import pytest

from agent.emulator import Faults
from tests.peers.site import Site, iso_ms, wait_for

pytestmark = pytest.mark.slow

STATUS = "solar_gateway_status"
INTERVAL_S = 2.0
INTERVAL_MS = int(INTERVAL_S * 1000)
OUTAGE_INTERVALS = 4


def _ms(iso: str) -> int:
    return int(dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() * 1000)


async def test_an_outage_is_reported_interval_by_interval_when_the_link_is_back(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2)) as site:
        site.write_config(flush_interval_seconds=0.5, fleet_interval_seconds=INTERVAL_S)
        agent = await site.start_agent()
        watcher = site.watch()
        await wait_for(lambda: site.emu.store.count(STATUS) >= 2, 30, "two status rows landed")

        # The link goes down for several report intervals; the gateway keeps reporting into its outbox.
        site.emu.set_faults(Faults(outage=True))
        down_ms = time.time_ns() // 1_000_000

        async def reported_during_outage() -> bool:
            await watcher.snapshot()
            ends = [_ms(t) + INTERVAL_MS for _, t in watcher.seen_status.values()]
            return sum(1 for e in ends if e > down_ms + 1000) >= OUTAGE_INTERVALS
        await wait_for(reported_during_outage, 40, f"{OUTAGE_INTERVALS} status records written in the outage")
        landed_during = site.emu.store.count(STATUS)
        up_ms = time.time_ns() // 1_000_000
        site.emu.set_faults(Faults())

        # Stop the reports (a reload with interval 0, same process) so that "everything committed
        # landed" has an end; then let both objects drain.
        site.write_config(flush_interval_seconds=0.5, fleet_interval_seconds=0)
        agent.signal(signal.SIGHUP)

        async def reporting_off() -> bool:
            st = await agent.status()
            return bool(st and st.get("fleet", {}).get("enabled") is False)
        await wait_for(reporting_off, 20, "the reload that turns the reports off")
        site.silence()
        await site.wait_delivered(watcher, within=60)

        async def status_landed() -> bool:
            await watcher.snapshot()
            return set(watcher.seen_status) <= site.emu.store.keys(STATUS)
        await wait_for(status_landed, 30, "every committed status record landed")

        # Readings: nothing lost, invented or duplicated (as every e2e test checks).
        rec = site.reconcile(watcher)
        assert rec.ok, str(rec)
        # Status records: exactly the committed ones landed, one row per interval, no gap.
        rows = site.emu.store.rows(obj=STATUS)
        landed = {str(r["event_id"]): r for r in rows}
        assert set(landed) == set(watcher.seen_status), "a status row lost or invented"
        starts = sorted(_ms(str(r["date_time"])) for r in rows)
        assert len(set(starts)) == len(starts), "two rows for one interval"
        assert {b - a for a, b in itertools.pairwise(starts)} == {INTERVAL_MS}, starts
        assert all(r["site_id"] == "e2e-site" and r["interval_seconds"] == INTERVAL_S for r in rows)
        # The outage's intervals were delivered after it, and say what the gateway saw then.
        outage = [r for r in rows if down_ms + 1000 < _ms(str(r["date_time"])) + INTERVAL_MS <= up_ms]
        assert len(outage) >= OUTAGE_INTERVALS - 1, (down_ms, up_ms, starts)
        assert landed_during < len(rows)
        for r in outage:
            assert r["delivery_lane"] == "retrying", r
            assert r["backlog_rows"] > 0, r
            assert r["stream_last_success"] is None or str(r["stream_last_success"]) < iso_ms(down_ms + 1000), r
            assert r["devices_total"] >= 2 and r["clock_state"] == "synced", r
        backlogs = [r["backlog_rows"] for r in sorted(outage, key=lambda r: str(r["date_time"]))]
        assert backlogs == sorted(backlogs), "the backlog grows through the outage"
        assert sum(int(r["readings_new"]) for r in rows) > 0
        writes = site.emu.store.write_counts(STATUS)
        assert set(writes) == set(landed)
        await asyncio.to_thread(agent.kill)
