"""The SunSpec corpus on a real wire: the simulator serves each device case, the Modbus source polls it.

Discovery quirks (a silent 40000, SunS at 0 or 50000, a Kostal chain ending in one 0x0000 and an
exception) and every model family must come out as the case's expected readings, over Modbus TCP and
over RTU on a pty pair. A unit without the marker must say, per address, what it answered.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from agent.config import ModbusBusConfig, ModbusDeviceConfig
from agent.simulators.corpus import sunspec_case, sunspec_cases
from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from agent.sources.modbus import ModbusSource
from tests.peers.serial import pty_pair  # noqa: F401
from tests.sources.test_modbus_source import Collector, running
from tests.waiting import wait_for

TIMEOUT = 0.2
CASES = [c for c in sunspec_cases() if sunspec_case(c).expected]


def bus(transport: str, units: Sequence[int], **kw: object) -> ModbusBusConfig:
    devices = tuple(ModbusDeviceConfig(unit_id=u) for u in units)
    return ModbusBusConfig(name="corpus", transport=transport, devices=devices,  # type: ignore[arg-type]
                           timeout_seconds=TIMEOUT, poll_interval_seconds=0.05, **kw)  # type: ignore[arg-type]


def unit_of(case: str) -> int:
    return int(sunspec_case(case).device["unit_id"])


async def _first_poll(col: Collector, sim: SunSpecSimulator, unit: int) -> list[tuple[str, dict[str, object]]]:
    want = sim.case_expected(unit)
    await col.until(lambda: bool(col.of(want[0][0])), timeout=15)
    batch = next(b for _, b in col.batches if any(r.device_id == want[0][0] for r in b))
    return [(r.device_id, dict(r.metrics)) for r in batch if r.device_id.split("/")[0] == want[0][0]]


@pytest.mark.parametrize("case", CASES)
async def test_each_case_over_tcp(case: str) -> None:
    unit = unit_of(case)
    sim = SunSpecSimulator((), corpus={unit: case})
    async with sim.serve_tcp() as served:
        assert served.port
        src = ModbusSource(bus("tcp", (unit,), host="127.0.0.1", tcp_port=served.port))
        async with running(src) as col:
            got = await _first_poll(col, sim, unit)
    assert got == sim.case_expected(unit)
    assert src.health()[0].state == "ok"


async def test_a_bus_of_quirky_devices_over_rtu(pty_pair: PtyPair) -> None:
    """Kostal's end marker, a base-0 device behind a silent 40000 and a DER inverter share one RS-485 line."""
    corpus = {71: "kostal_end_single_zero", 4: "base0_silent_at_40000", 1: "der701_714_three_phase"}
    sim = SunSpecSimulator((), corpus=corpus)
    src = ModbusSource(bus("rtu", tuple(corpus), port=pty_pair.b))
    async with sim.serve_rtu(pty_pair.a), running(src) as col:
        for unit in corpus:
            assert await _first_poll(col, sim, unit) == sim.case_expected(unit)
    assert all(h.state == "ok" for h in src.health())


async def test_a_unit_without_the_marker_names_every_address_and_answer() -> None:
    case = "no_suns_anywhere"
    unit = unit_of(case)
    sim = SunSpecSimulator((), corpus={unit: case})
    async with sim.serve_tcp() as served:
        assert served.port
        src = ModbusSource(bus("tcp", (unit,), host="127.0.0.1", tcp_port=served.port))
        async with running(src):
            await wait_for(lambda: src.health()[0].errors["not_sunspec"] >= 1, 15, "the failed discovery")
    health = src.health()[0]
    for address, answer in sunspec_case(case).discovery["error"].items():
        assert f"{address}: " in health.last_error and answer in health.last_error, health.last_error
    assert health.readings_total == 0
