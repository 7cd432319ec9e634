"""Reliability: kill -9 at random moments, emulator faults, broker restarts, serial garbage, a full outbox.

``make test`` runs the short versions (a few cycles each); ``@pytest.mark.soak`` runs the long ones.
Every scenario ends with the reconciliation: each committed reading landed exactly once, nothing
was invented, no (device, time) twice; writes > 1 only where a response was lost or a process died.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from pathlib import Path

import pytest

from agent.emulator import Faults
from tests.peers.site import OutboxWatcher, Site, metric_value, outbox_meta, wait_for

pytestmark = pytest.mark.slow


async def _settle(site: Site, ledger: OutboxWatcher, within: float = 60) -> None:
    site.emu.set_faults(Faults())
    site.silence()
    await site.wait_delivered(ledger, within=within)
    rec = site.reconcile(ledger)
    assert rec.ok, str(rec)
    assert rec.produced > 0


async def _run_for(seconds: float, site: Site, publish: bool) -> None:
    """Let the site run; the OpenDTU feed publishes a cycle every 0.5 s meanwhile."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if publish:
            await site.publish_cycle()
        await asyncio.sleep(0.5)  # the feed's publish cadence


async def _kill_cycles(tmp_path: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    async with Site(tmp_path, rtu_units=(1, 2), tcp=True, mqtt=True,
                    emulator={"bulk_processing_seconds": 1.0}) as site:
        site.write_config(flush_interval_seconds=0.5, bulk_after_seconds=1.0)
        agent = await site.start_agent()
        ledger = site.watch()
        await _run_for(1.0, site, publish=True)   # the persistent MQTT session exists from here on
        for i in range(cycles):
            # Some cycles run through an outage, so kills also hit backlogs and bulk jobs.
            site.emu.set_faults(Faults(outage=rng.random() < 0.4))
            await _run_for(rng.uniform(0.3, 2.5), site, publish=True)
            site.emu.set_faults(Faults())
            await _run_for(rng.uniform(0.0, 1.5), site, publish=True)
            agent.kill()
            await _run_for(rng.uniform(0.0, 1.0), site, publish=True)   # MQTT held by the broker meanwhile
            agent = await site.start_agent()
            assert i >= 0
        await _run_for(1.0, site, publish=False)
        await _settle(site, ledger)


async def test_kill9_at_random_moments_short(tmp_path: Path) -> None:
    await _kill_cycles(tmp_path, cycles=3, seed=1)


@pytest.mark.soak
async def test_kill9_at_random_moments_soak(tmp_path: Path) -> None:
    await _kill_cycles(tmp_path, cycles=50, seed=2)


async def _faulty_link(tmp_path: Path, seconds: float) -> None:
    async with Site(tmp_path, rtu_units=(1, 2), tcp=True, emulator={"bulk_processing_seconds": 0.5}) as site:
        site.write_config(flush_interval_seconds=0.5, bulk_after_seconds=1.0, retry_max_seconds=1.0)
        agent = await site.start_agent()
        ledger = site.watch()
        phases = [
            Faults(status_rates={429: 0.15}, seed=1),
            Faults(status_rates={429: 0.15}, retry_after_seconds=0.3, seed=2),
            Faults(status_rates={500: 0.15, 503: 0.15}, seed=3),
            Faults(reset_rate=0.2, seed=4),
            Faults(lose_response_rate=0.7, seed=5),
            Faults(expire_tokens=True),
            Faults(outage=True),                    # long enough to pass bulk_after and the fresh window
            Faults(),                               # the link back: the old backlog goes to a bulk job
            Faults(status_rates={500: 0.1}, lose_response_rate=0.1, seed=6),
        ]
        per_phase = seconds / len(phases)
        for faults in phases:
            site.emu.set_faults(faults)
            await _run_for(max(per_phase, 7.0) if faults.outage else per_phase, site, publish=False)
        assert agent.alive(), agent.log_text()[-3000:]
        await _settle(site, ledger)
        stats = site.emu.stats
        assert stats.lost_responses > 0 and stats.injected > 0 and stats.resets > 0
        assert stats.count("stream_insert", 401) >= 1, stats.as_dict()   # the expired token was noticed


async def test_emulator_faults_whole_run_short(tmp_path: Path) -> None:
    await _faulty_link(tmp_path, seconds=8)


@pytest.mark.soak
async def test_emulator_faults_whole_run_soak(tmp_path: Path) -> None:
    await _faulty_link(tmp_path, seconds=240)


async def test_broker_restart_loses_no_mqtt_reading(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(), mqtt=True) as site:
        site.write_config(flush_interval_seconds=0.5)
        await site.start_agent()
        ledger = site.watch()
        await _run_for(1.5, site, publish=True)
        assert site.broker is not None and site.publisher is not None
        publisher = site.publisher
        for _ in range(2):
            await asyncio.to_thread(site.broker.restart)
            # The simulator's paho client reconnects by itself; publish only once it has.
            await wait_for(lambda: publisher._client is not None and publisher._client.is_connected(), 15,
                           "the OpenDTU simulator reconnected")
            # The publisher and the agent reconnect; cycles published from here must still land.
            await _run_for(2.0, site, publish=True)
        await _run_for(3.0, site, publish=False)   # the idle tick closes the last cycle
        await _settle(site, ledger)
        assert len(site.mqtt_expected()) >= 3 * 6


async def test_serial_garbage_is_counted_and_polling_goes_on(tmp_path: Path) -> None:
    rng = random.Random(7)

    def mangle(direction: str, data: bytes) -> bytes:
        # Inverter -> agent: flip a byte in about one frame in five (CRC errors), sometimes add noise.
        if direction == "a->b" and data and rng.random() < 0.05:
            i = rng.randrange(len(data))
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            if rng.random() < 0.3:
                data += bytes(rng.randrange(256) for _ in range(3))
        return data

    async with Site(tmp_path, rtu_units=(1, 2), mangle=mangle) as site:
        assert site.rtu_sim is not None
        site.write_config(flush_interval_seconds=0.5, poll_interval_seconds=0.1)
        agent = await site.start_agent()
        ledger = site.watch()
        site.rtu_sim.corrupt_next(1, times=5)
        await _run_for(6.0, site, publish=False)
        st = await agent.status()
        assert st is not None
        errors = sum(sum(d["errors"].values()) for d in st["devices"])
        readings = sum(d["readings"] for d in st["devices"])
        assert errors > 0 and readings > 10, st["devices"]
        assert agent.alive()
        await _settle(site, ledger)


async def test_full_outbox_drops_oldest_and_counts_every_drop(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2), tcp=True) as site:
        site.write_config(flush_interval_seconds=0.5, outbox_max_bytes=30_000, poll_interval_seconds=0.1)
        agent = await site.start_agent()
        ledger = site.watch()
        site.emu.set_faults(Faults(outage=True))

        async def dropping() -> bool:
            return (await asyncio.to_thread(outbox_meta, site.outbox_path))["dropped_total"] > 30
        await wait_for(dropping, 30, "the outbox at its cap, dropping the oldest rows")
        site.emu.set_faults(Faults())
        site.silence()
        seen = await ledger.snapshot()

        async def drained() -> bool:
            return (await asyncio.to_thread(outbox_meta, site.outbox_path))["rows"] == 0
        await wait_for(drained, 30, "the outbox drained")
        seen = await ledger.snapshot()
        landed = site.emu.store.keys()
        meta = await asyncio.to_thread(outbox_meta, site.outbox_path)
        dropped = set(seen) - landed
        metrics = await agent.metrics()
        counted = metric_value(metrics, "solar_agent_events_discarded_total", reason="outbox_full")
        # With every row leased by an in-flight request there is nothing to drop, and the outbox
        # refuses the new readings instead (logged, and counted in the same metric).
        refused = sum(int(m) for m in re.findall(r"outbox: full, (\d+) new readings refused", agent.log_text()))
        # committed = landed + dropped, exactly; every drop is counted in the file and in the metric.
        assert len(seen) == len(landed & set(seen)) + len(dropped)
        assert len(dropped) == meta["dropped_total"], (len(dropped), meta)
        assert counted == meta["dropped_total"] + refused, (counted, meta, refused)
        assert not landed - set(seen)
        rec = site.reconcile(ledger, dropped=dropped)
        assert rec.ok, str(rec)
