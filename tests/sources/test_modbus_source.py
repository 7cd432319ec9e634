"""ModbusSource against the SunSpec simulator on a pty pair (RTU) and on loopback (TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.config import ModbusBusConfig, ModbusDeviceConfig
from agent.records import Reading
from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from agent.sources import Source
from agent.sources.modbus import ModbusSource, next_slot
from agent.sources.sunspec import BASE_CANDIDATES
from tests.peers.serial import pty_pair  # noqa: F401
from tests.waiting import wait_for

NOON = 1_700_006_400.0 + 12 * 3600
INTERVAL, TIMEOUT = 0.05, 0.2
FIELDS = {"ac_power_w": "W", "ac_energy_wh": "WH", "ac_voltage_v": "PhVphA", "ac_current_a": "A",
          "ac_frequency_hz": "Hz", "ac_apparent_power_va": "VA", "ac_reactive_power_var": "VAr",
          "power_factor_pct": "PF", "dc_power_w": "DCW", "dc_voltage_v": "DCV", "dc_current_a": "DCA",
          "temperature_c": "TmpCab", "event_flags": "Evt1"}


def expected_metrics(sim: SunSpecSimulator, unit: int) -> dict[str, object]:
    served = sim.expected(unit)
    out: dict[str, object] = {f: served[p] for f, p in FIELDS.items() if served[p] is not None}
    out["operating_state"] = {4: "MPPT", 2: "SLEEPING"}[served["St"]]  # type: ignore[index]
    return out


class Collector:
    """``emit`` for tests: keeps readings, wakes waiters when a condition holds."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[Reading]]] = []
        self._changed = asyncio.Event()

    async def emit(self, readings: Sequence[Reading]) -> None:
        self.batches.append((time.monotonic(), list(readings)))
        self._changed.set()

    def of(self, device: str) -> list[tuple[float, Reading]]:
        return [(t, r) for t, b in self.batches for r in b if r.device_id == device]

    async def until(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def running(src: ModbusSource) -> AsyncIterator[Collector]:
    col = Collector()
    task = asyncio.create_task(src.run(col.emit), name=f"agent[{src.name}].poll")
    try:
        yield col
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def bus(transport: str, units: Sequence[int], **kw: object) -> ModbusBusConfig:
    devices = tuple(ModbusDeviceConfig(unit_id=u) for u in units)
    return ModbusBusConfig(name="bus0", transport=transport, devices=devices,  # type: ignore[arg-type]
                           timeout_seconds=TIMEOUT, poll_interval_seconds=INTERVAL, **kw)  # type: ignore[arg-type]


def dev_id(sim: SunSpecSimulator, unit: int) -> str:
    return f"SunSpecSim-{sim.serial_number(unit)}"


async def test_two_live_units_and_a_dead_one_on_rtu(pty_pair: PtyPair) -> None:
    sim = SunSpecSimulator((1, 2), dead_units=(3,), clock=lambda: NOON)
    src = ModbusSource(bus("rtu", (1, 2, 3), port=pty_pair.b), now_ms=lambda: 1_700_000_000_000)
    assert isinstance(src, Source) and src.name == "modbus:bus0"
    async with sim.serve_rtu(pty_pair.a), running(src) as col:
        await col.until(lambda: src.cycles >= 15)
        one, two = col.of(dev_id(sim, 1)), col.of(dev_id(sim, 2))
        health = {h.device: h for h in src.health()}
    assert len(one) >= 14 and len(two) >= 14
    for unit, got in ((1, one), (2, two)):
        reading = got[-1][1]
        assert reading.source == "sunspec-rtu" and reading.time_ms == 1_700_000_000_000
        assert dict(reading.metrics) == expected_metrics(sim, unit)
    dead = health["bus0/unit3"]
    assert dead.readings_total == 0 and dead.errors["timeout"] >= 2 and set(dead.errors) == {"timeout"}
    assert dead.state in ("backoff", "down")
    # The breaker: the dead unit was asked far less often than once per cycle ...
    assert sim.reads(3) <= src.cycles // 3
    # ... so a live unit's gap between readings never exceeds one interval plus one discovery attempt of
    # the dead unit: one timeout per base probed, since a unit silent at 40000 may answer at 0 or 50000.
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(one)]
    assert max(gaps) < INTERVAL + len(BASE_CANDIDATES) * TIMEOUT + 0.25
    assert health[dev_id(sim, 1)].state == "ok" and not health[dev_id(sim, 1)].errors


async def test_dead_unit_recovers_through_half_open_retry(pty_pair: PtyPair) -> None:
    sim = SunSpecSimulator((1, 2), dead_units=(2,), clock=lambda: NOON)
    src = ModbusSource(bus("rtu", (1, 2), port=pty_pair.b), backoff_max_seconds=0.5)
    async with sim.serve_rtu(pty_pair.a), running(src) as col:
        await col.until(lambda: src.health()[1].errors["timeout"] >= 2)
        sim.set_dead(2, False)
        await col.until(lambda: bool(col.of(dev_id(sim, 2))))
    h = src.health()[1]
    assert h.state == "ok" and h.consecutive_failures == 0 and h.readings_total >= 1


@pytest.mark.parametrize(("base", "float_model"), [(50000, True), (0, False)])
async def test_tcp_bases_and_float_model(base: int, float_model: bool) -> None:
    sim = SunSpecSimulator((1, 5), base_address=base, float_model=float_model, clock=lambda: NOON, seed=9)
    async with sim.serve_tcp() as served:
        assert served.port
        src = ModbusSource(bus("tcp", (5,), host="127.0.0.1", tcp_port=served.port))
        async with running(src) as col:
            await col.until(lambda: len(col.of(dev_id(sim, 5))) >= 2)
    reading = col.of(dev_id(sim, 5))[-1][1]
    assert reading.source == "sunspec-tcp"
    assert dict(reading.metrics) == expected_metrics(sim, 5)


@given(st.floats(min_value=0, max_value=1e7), st.sampled_from([0.05, 0.2, 1.0, 5.0, 10.0, 60.0]),
       st.floats(min_value=0, max_value=3))
def test_next_slot_is_on_the_grid_once_per_slot(started: float, interval: float, took: float) -> None:
    # Pure: polls started anywhere land on the interval's grid (buses in step), never twice in one
    # slot, never more than one interval apart; an overrun (took >= interval) is due at once.
    due = next_slot(started, interval)
    assert math.isclose(due / interval, round(due / interval), abs_tol=1e-6)      # on the grid
    assert started < due <= started + interval * (1 + 1e-3)
    later = next_slot(due - interval * 1e-6, interval)        # a timer woken a hair early
    assert later > due and math.isclose(later - due, interval, abs_tol=1e-6)
    if took >= 1.0:
        assert due <= started + took * interval + interval * 1e-6     # (float rounding: 6 * 0.2 > 1.2)


async def test_buses_with_one_interval_poll_in_step_once_per_slot() -> None:
    # Two TCP buses poll on the grid of next_slot, once per slot, each answer near its slot's start.
    interval, cycles = 0.5, 4
    sims = [SunSpecSimulator((1,), clock=lambda: NOON, seed=s) for s in (1, 2)]
    async with sims[0].serve_tcp() as a, sims[1].serve_tcp() as b:
        srcs = [ModbusSource(replace(bus("tcp", (1,), host="127.0.0.1", tcp_port=served.port),
                                     poll_interval_seconds=interval)) for served in (a, b)]
        async with running(srcs[0]) as first, running(srcs[1]) as second:
            await first.until(lambda: srcs[0].cycles >= cycles)
            await second.until(lambda: srcs[1].cycles >= cycles)
    for col in (first, second):
        later = [t for t, _ in col.batches[1:]]      # the first poll of a bus is at once
        slots = [int(t // interval) for t in later]
        assert len(slots) == len(set(slots)), f"two polls in one slot: {slots}"
        # A poll of one unit on loopback answers within a few ms of its slot's start.
        phases = [round(t % interval / interval, 2) for t in later]
        assert all(ph < 0.4 for ph in phases), phases


async def test_rtu_base_zero_with_unimplemented_points(pty_pair: PtyPair) -> None:
    sim = SunSpecSimulator((4,), base_address=0, clock=lambda: NOON, unimplemented={"Hz", "DCW_SF", "TmpCab"})
    src = ModbusSource(bus("rtu", (4,), port=pty_pair.b))
    async with sim.serve_rtu(pty_pair.a), running(src) as col:
        await col.until(lambda: bool(col.of(dev_id(sim, 4))))
    metrics = col.of(dev_id(sim, 4))[-1][1].metrics
    assert "ac_frequency_hz" not in metrics and "dc_power_w" not in metrics and "temperature_c" not in metrics
    assert dict(metrics) == expected_metrics(sim, 4)


async def test_crc_garbage_and_exceptions_are_counted_and_polling_goes_on(pty_pair: PtyPair) -> None:
    sim = SunSpecSimulator((1, 2), clock=lambda: NOON)
    src = ModbusSource(bus("rtu", (1, 2), port=pty_pair.b))
    async with sim.serve_rtu(pty_pair.a), running(src) as col:
        await col.until(lambda: len(col.of(dev_id(sim, 1))) >= 2)
        sim.corrupt_next(1)
        sim.inject_exception(2, code=6)
        await col.until(lambda: src.health()[0].errors["crc"] == 1 and src.health()[1].errors["exception"] == 1)
        before = len(col.of(dev_id(sim, 1))), len(col.of(dev_id(sim, 2)))
        await col.until(lambda: (len(col.of(dev_id(sim, 1))), len(col.of(dev_id(sim, 2)))) > before
                        and min(len(col.of(dev_id(sim, u))) for u in (1, 2)) > min(before))
    one, two = src.health()
    assert dict(one.errors) == {"crc": 1} and dict(two.errors) == {"exception": 1}
    assert one.state == two.state == "ok"


async def test_garbage_from_the_wire_relay_is_counted_as_crc(tmp_path: object) -> None:
    flips = {"left": 0}

    def mangle(direction: str, data: bytes) -> bytes:
        if direction == "a->b" and flips["left"] > 0:       # the simulator's answers
            flips["left"] -= 1
            return data[:3] + bytes([data[3] ^ 0xFF]) + data[4:]
        return data

    with PtyPair(mangle=mangle) as pair:
        sim = SunSpecSimulator((1,), clock=lambda: NOON)
        src = ModbusSource(bus("rtu", (1,), port=pair.b))
        async with sim.serve_rtu(pair.a), running(src) as col:
            await col.until(lambda: bool(col.of(dev_id(sim, 1))))
            flips["left"] = 1
            n = src.health()[0].readings_total
            await col.until(lambda: src.health()[0].errors["crc"] == 1 and src.health()[0].readings_total > n + 1)


async def test_serial_port_that_disappears_is_reopened(pty_pair: PtyPair) -> None:
    sim = SunSpecSimulator((1,), clock=lambda: NOON)
    src = ModbusSource(bus("rtu", (1,), port=pty_pair.b))
    async with sim.serve_rtu(pty_pair.a), running(src) as col:
        await col.until(lambda: bool(col.of(dev_id(sim, 1))))
        pty_pair.unplug()                                   # USB adapter pulled: the device node is gone
        async with asyncio.timeout(10):
            while not src.health()[0].errors["connection"]:
                await asyncio.sleep(0.01)                   # polling a condition with a deadline
        pty_pair.plug()                                     # ... and re-enumerated under the same by-id link
        n = len(col.of(dev_id(sim, 1)))
        await col.until(lambda: len(col.of(dev_id(sim, 1))) > n + 1, timeout=10)
    assert src.health()[0].state == "ok"


@asynccontextmanager
async def relay(upstream_port: int, *, cut_unit: int | None = None,
                black_hole_first: bool = False) -> AsyncIterator[int]:
    """A Modbus TCP relay with a fault of the network between gateway and inverters.

    ``cut_unit``: the connection drops at every request addressed to that unit (a Modbus TCP bridge
    that resets on one bad unit). ``black_hole_first``: the first connection swallows every request
    and never closes (a peer gone without a reset, a NAT that forgot the flow); later ones relay.
    """
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if black_hole_first and connections == 1:
            with contextlib.suppress(ConnectionError):
                while await reader.read(4096):
                    pass
            writer.close()
            return
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)

        async def back() -> None:
            while data := await up_r.read(4096):
                writer.write(data)
                await writer.drain()
        pump = asyncio.create_task(back())
        try:
            while True:
                header = await reader.readexactly(7)          # MBAP: tid, protocol, length, unit
                body = await reader.readexactly(int.from_bytes(header[4:6], "big") - 1)
                if header[6] == cut_unit:
                    return
                up_w.write(header + body)
                await up_w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            pump.cancel()
            up_w.close()
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_readings_polled_before_the_bus_is_lost_are_kept() -> None:
    # Unit 1 answers, then the connection drops at unit 2's request, every cycle: unit 1's readings
    # of each cycle were read and must reach the outbox although the cycle ended with a lost bus.
    sim = SunSpecSimulator((1, 2), clock=lambda: NOON)
    async with sim.serve_tcp() as served, relay(served.port, cut_unit=2) as port:
        src = ModbusSource(bus("tcp", (1, 2), host="127.0.0.1", tcp_port=port), backoff_max_seconds=0.2)
        async with running(src) as col:
            await col.until(lambda: len(col.of(dev_id(sim, 1))) >= 2)
            await col.until(lambda: src.health()[1].errors["connection"] >= 2)
    assert not col.of(dev_id(sim, 2))
    assert dict(col.of(dev_id(sim, 1))[-1][1].metrics) == expected_metrics(sim, 1)


async def test_readings_polled_before_a_stop_midway_through_a_cycle_are_kept() -> None:
    # Unit 1 answers, then unit 2 (dead) holds the cycle for three discovery timeouts; the stop
    # lands then. Unit 1's reading was taken and must be handed over, not dropped with the cycle.
    sim = SunSpecSimulator((1, 2), dead_units=(2,), clock=lambda: NOON)
    async with sim.serve_tcp() as served:
        src = ModbusSource(bus("tcp", (1, 2), host="127.0.0.1", tcp_port=served.port))
        col = Collector()
        task = asyncio.create_task(src.run(col.emit))
        await wait_for(lambda: sim.reads(2) > 0, 10, "unit 2 asked (unit 1 already read)", every=0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert src.cycles == 0
    assert [r.device_id for _, r in col.of(dev_id(sim, 1))] == [dev_id(sim, 1)]


async def test_silent_units_do_not_cut_the_live_ones_off_a_tcp_gateway() -> None:
    # pymodbus closes a TCP connection after retries+3 timeouts in a row, whichever units they were
    # for; two silent units (three discovery probes each) would drop the live unit's connection.
    sim = SunSpecSimulator((1, 2, 3), dead_units=(1, 2), clock=lambda: NOON)
    async with sim.serve_tcp() as served:
        src = ModbusSource(bus("tcp", (1, 2, 3), host="127.0.0.1", tcp_port=served.port))
        async with running(src) as col:
            await col.until(lambda: src.cycles >= 6)
            got = len(col.of(dev_id(sim, 3)))
            health = src.health()
    assert got >= 6
    assert not health[2].errors and health[2].state == "ok"
    assert set(health[0].errors) == set(health[1].errors) == {"timeout"}


async def test_a_tcp_connection_where_nothing_answers_is_reopened() -> None:
    # The first connection swallows every request and never closes: after a few cycles with no
    # answer from any unit the source opens a new one, and the unit is read through it.
    sim = SunSpecSimulator((1,), clock=lambda: NOON)
    async with sim.serve_tcp() as served, relay(served.port, black_hole_first=True) as port:
        src = ModbusSource(bus("tcp", (1,), host="127.0.0.1", tcp_port=port), backoff_max_seconds=0.5)
        async with running(src) as col:
            await col.until(lambda: bool(col.of(dev_id(sim, 1))))
    assert src.health()[0].errors["timeout"] >= 3


async def test_a_unit_with_no_model_to_read_is_refused_not_polled_empty() -> None:
    # SunS, model 1 (66 registers), a single-phase meter (model 201, L = 105: sunspec/models
    # json/model_201.json), the end marker: a map with no inverter model this agent reads. Its polls
    # would send no request and emit an empty reading every interval, alive or not; it must be
    # refused with a reason instead. Served by pymodbus' own server on loopback.
    regs = [0x5375, 0x6E53, 1, 66, *([0x4100] * 66), 201, 105, *([0] * 105), 0xFFFF, 0]
    server = ModbusTcpServer([SimDevice(id=1, simdata=[SimData(40000, values=regs, datatype=DataType.REGISTERS)])],
                             framer=FramerType.SOCKET, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        port = server.transport.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        src = ModbusSource(bus("tcp", (1,), host="127.0.0.1", tcp_port=port))
        async with running(src) as col:
            await wait_for(lambda: src.health()[0].errors["not_sunspec"] >= 2, 10, "the unit refused twice")
    finally:
        await server.shutdown()
    assert not col.batches
    h = src.health()[0]
    assert h.state != "ok" and "201" in h.last_error and "no inverter values" in h.last_error
