"""Signals to the agent process: SIGTERM during a streaming flush, SIGHUP with a good and a bad config."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from agent.emulator import Faults
from tests.peers.site import Site, outbox_meta, wait_for

pytestmark = pytest.mark.slow


async def test_sigterm_during_a_flush_exits_0_and_loses_nothing(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2)) as site:
        site.write_config(flush_interval_seconds=0.5)
        agent = await site.start_agent()
        ledger = site.watch()
        await wait_for(lambda: site.emu.store.count() > 0, 20, "first readings landed")
        site.emu.set_faults(Faults(latency_seconds=3.0))

        async def request_in_flight() -> bool:
            return (await asyncio.to_thread(outbox_meta, site.outbox_path))["leased"] > 0
        await wait_for(request_in_flight, 10, "a streaming request in flight (leased rows)")
        agent.signal(signal.SIGTERM)
        assert await agent.wait(30) == 0, agent.log_text()[-3000:]
        site.emu.set_faults(Faults())
        # Every committed row is either landed or still queued (not leased: the lease was given back).
        seen = await ledger.snapshot()
        rows = await asyncio.to_thread(outbox_meta, site.outbox_path)
        landed = site.emu.store.keys()
        assert rows["leased"] == 0
        assert len(set(seen) - landed) <= rows["rows"]
        site.silence()
        await site.start_agent()
        await site.wait_delivered(ledger, within=30)
        rec = site.reconcile(ledger)
        assert rec.ok, str(rec)


async def test_sighup_reloads_a_valid_config_and_keeps_a_broken_one_out(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1,)) as site:
        site.write_config(flush_interval_seconds=0.5)
        agent = await site.start_agent()
        ledger = site.watch()
        await wait_for(lambda: site.emu.store.count() > 0, 20, "first readings landed")

        site.write_config(flush_interval_seconds=0.8)
        agent.signal(signal.SIGHUP)
        await wait_for(lambda: "is valid, restarting sources and drain" in agent.log_text(), 10, "reload logged")
        n = site.emu.store.count()
        await wait_for(lambda: site.emu.store.count() > n + 3, 15, "delivery after the reload")

        good = site.config_path.read_text()
        site.config_path.write_text(good.replace("flush_interval_seconds = 0.8", "flush_interval_seconds = -1"))
        agent.signal(signal.SIGHUP)
        await wait_for(lambda: "keeping the running config" in agent.log_text(), 10, "reload refused")
        line = next(x for x in agent.log_text().splitlines() if "keeping the running config" in x)
        assert "drain.flush_interval_seconds" in agent.log_text(), line
        n = site.emu.store.count()
        await wait_for(lambda: site.emu.store.count() > n + 3, 15, "delivery goes on with the old config")
        assert agent.alive()

        site.silence()
        await site.wait_delivered(ledger, within=30)
        rec = site.reconcile(ledger)
        assert rec.ok, str(rec)
        agent.signal(signal.SIGTERM)
        assert await agent.wait(30) == 0
