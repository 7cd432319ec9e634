"""Issue 4 "done when": a site (two RTU inverters and a dead unit on a pty bus, one TCP inverter, an
OpenDTU feed on mosquitto) runs in-process; readings match what the simulators served, the dead
unit is counted and not fatal, and everything committed lands exactly once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from agent.clock import ClockGuard
from agent.config import load_config
from agent.records import EncodedRecord
from agent.runtime import Agent
from tests.peers.site import OPENDTU_SERIAL, OutboxWatcher, Site, iso_ms, prepare_outbox, reconcile, wait_for

pytestmark = pytest.mark.slow

# schema field -> SunSpec point (what the simulator serves)
FIELDS = {"ac_power_w": "W", "ac_energy_wh": "WH", "ac_voltage_v": "PhVphA", "ac_current_a": "A",
          "ac_frequency_hz": "Hz", "ac_apparent_power_va": "VA", "ac_reactive_power_var": "VAr",
          "power_factor_pct": "PF", "dc_power_w": "DCW", "dc_voltage_v": "DCV", "dc_current_a": "DCA",
          "temperature_c": "TmpCab", "event_flags": "Evt1"}


def expected_fields(served: dict[str, object]) -> dict[str, object]:
    out = {f: served[p] for f, p in FIELDS.items() if served[p] is not None}
    out["operating_state"] = {4: "MPPT", 2: "SLEEPING"}[served["St"]]  # type: ignore[index]
    return out


async def test_site_readings_match_the_simulators(tmp_path: Path) -> None:
    async with Site(tmp_path, rtu_units=(1, 2), dead_units=(3,), tcp=True, mqtt=True) as site:
        assert site.rtu_sim is not None and site.tcp_sim is not None
        cfg = load_config(site.write_config(flush_interval_seconds=0.5))
        # The ledger, not the on_committed hook, decides what was committed: a source cancelled while
        # its append is in the writer thread commits rows the hook never hears of.
        await prepare_outbox(site.outbox_path)
        ledger = OutboxWatcher(site.outbox_path)
        committed: dict[str, dict[str, object]] = {}

        def on_committed(records: Sequence[EncodedRecord]) -> None:
            for r in records:
                committed[r.event_id] = json.loads(r.payload)

        agent = Agent(cfg, on_committed=on_committed, status_enabled=False, clock=ClockGuard(assume_synced=True))
        task = asyncio.create_task(agent.run(), name="e2e[agent]")
        try:
            await asyncio.wait_for(agent.ready.wait(), 20)
            rtu = {u: f"SunSpecSim-{site.rtu_sim.serial_number(u)}" for u in (1, 2)}
            tcp_dev = f"FloatSim-{site.tcp_sim.serial_number(1)}"

            def devices() -> set[object]:
                return {rec["device_id"] for rec in committed.values()}
            await wait_for(lambda: {*rtu.values(), tcp_dev} <= devices(), 15, "every live inverter read")
            # The subscription is up once a retained-free cycle can arrive: publish a few cycles.
            for _ in range(3):
                await site.publish_cycle()
                await asyncio.sleep(0.3)  # a publish cadence (the OpenDTU firmware's round), not a wait
            expected_mqtt = site.mqtt_expected()
            await wait_for(lambda: all((e.device_id, iso_ms(e.time_ms)) in
                                       {(r["device_id"], r["date_time"]) for r in committed.values()}
                                       for e in expected_mqtt[:-3]), 15, "OpenDTU readings committed")

            # Modbus: freeze the simulators' PV curves, wait for a reading of each device polled wholly
            # after that, then stop the sources: the last reading per device is what the simulator last
            # served. (Stopped mid-poll, a unit has served blocks of a reading that never comes: without the
            # freeze, its newer values would not be any reading's.)
            modbus = ((site.rtu_sim, (1, 2), rtu), (site.tcp_sim, (1,), {1: tcp_dev}))
            for sim, _, _ in modbus:
                frozen = sim.clock()
                sim.clock = lambda frozen=frozen: frozen

            def polled_after_the_freeze() -> bool:
                for sim, units, names in modbus:
                    for u in units:
                        want = expected_fields(sim.values_at(u, sim.clock()))
                        if not any(r["device_id"] == names[u] and {k: r.get(k) for k in want} == want
                                   for r in list(committed.values())):
                            return False
                return True
            await wait_for(polled_after_the_freeze, 15, "a reading of each Modbus device after the freeze")
            await agent.stop_sources()
            for sim, units, names in modbus:
                for u in units:
                    latest = max((r for r in committed.values() if r["device_id"] == names[u]),
                                 key=lambda r: str(r["date_time"]))
                    got = {k: v for k, v in latest.items() if k in expected_fields(sim.expected(u))}
                    assert got == expected_fields(sim.expected(u)), names[u]

            # OpenDTU: every published cycle but the last (closed by the idle tick) equals the publisher's book.
            by_key = {(r["device_id"], r["date_time"]): r for r in committed.values()}
            for exp in expected_mqtt[:-3]:
                assert exp.time_ms is not None
                rec = by_key[(exp.device_id, iso_ms(exp.time_ms))]
                assert {k: rec[k] for k in exp.metrics} == exp.metrics, exp.device_id
            assert any(e.device_id == OPENDTU_SERIAL for e in expected_mqtt)

            # The dead unit: counted, not fatal (the others kept delivering).
            st = await agent.status()
            dead = next(d for d in st["devices"] if d["device"] == "rs485/unit3")
            assert sum(dead["errors"].values()) > 0 and dead["readings"] == 0, dead
            assert dead["state"] in ("backoff", "down"), dead
            assert not task.done()

            drain = agent.drain
            assert drain is not None
            drain.flush_now()

            async def delivered() -> bool:
                drain.flush_now()
                seen = await ledger.snapshot()
                return set(committed) <= set(seen) <= site.emu.store.keys()
            await wait_for(delivered, 20, "every committed reading to land")
        finally:
            agent.request_stop()
            assert await asyncio.wait_for(task, 30) == 0
        rec = reconcile(site.emu, await ledger.snapshot(), mqtt_expected=expected_mqtt[:-3],
                        outbox_path=site.outbox_path)
        assert rec.ok, str(rec)
        assert rec.replayed_writes == 0
