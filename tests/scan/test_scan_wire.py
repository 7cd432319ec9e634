"""`solar-agent scan` against the simulators on real wires: RTU over a pty pair, Modbus TCP, mosquitto.

A pty moves bytes at any speed and cannot carry parity, so the RS-485 line is modelled in the relay's
``mangle`` from what the scanner set on its port (``PtyPair.baudrate_b``, read with termios): a request sent
at another baud rate than the units' never reaches them (a UART at 19200 cannot decode a 9600 frame, so the
unit stays silent), and on the "long unterminated line" every answer at 115200 arrives corrupted
(reflections garble fast frames first). Proven here: the decisions the scan takes from silence, garbage and
answers (which settings it sweeps, what it reports, what the block says). Not proven: real UART timing,
parity (the pty refuses even parity in this sandbox, which the scan reports and skips), or a real adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.scan.mqtt import scan_mqtt
from agent.scan.progress import Progress
from agent.scan.results import LineSettings
from agent.scan.rtu import RtuPlan, line_settings, scan_rtu
from agent.scan.tcp import scan_tcp
from agent.scan.toml import modbus_block, mqtt_block
from agent.simulators.broker import Broker
from agent.simulators.mqtt_publishers import PORTAL_ID, Message, MqttPublisher
from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from tests.peers.mosquitto import mosquitto_broker  # noqa: F401  (fixture)

# The corpus units of the simulated bus: real shapes, each cited in tests/cases/sunspec/<case>/SOURCE.md.
CORPUS = {4: "kostal_end_single_zero", 6: "der701_714_three_phase", 8: "base0_silent_at_40000"}
BUS_BAUD = 19200


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> Iterator[None]:
    # Every empty unit id is a timeout on purpose; pymodbus logs each one (and the server a traceback).
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@contextlib.contextmanager
def _line(tmp_path: Path, garble_at: int | None = None) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path / "ttySIM", tmp_path / "ttySCAN")

    def wire(direction: str, data: bytes) -> bytes:
        baud = pair.baudrate_b()
        if direction == "b->a":
            return data if baud in (BUS_BAUD, garble_at) else b""     # other speeds: the units hear noise
        if baud == garble_at:
            return bytes(b ^ 0x55 for b in data)                        # reflections on an unterminated line
        return data

    pair.mangle = wire
    with pair:
        yield pair


def _expected_ids(sim: SunSpecSimulator) -> set[str]:
    ids = {f"SunSpecSim-{sim.serial_number(1)}"}
    for unit in CORPUS:
        ids.add(sim.case_expected(unit)[0][0])
    return ids


async def test_rtu_finds_the_bus_speed_and_every_unit_on_it(tmp_path: Path) -> None:
    sim = SunSpecSimulator((1,), seed=1, corpus=CORPUS)
    with _line(tmp_path) as pair:
        async with sim.serve_rtu(pair.a, baudrate=BUS_BAUD):
            plan = RtuPlan(pair.b, line_settings((9600, BUS_BAUD, 38400), ("N",)), tuple(range(1, 9)),
                           timeout_seconds=0.25, all_bases=True)
            result = await scan_rtu(plan, Progress(tty=False, quiet=True))
    assert result.error == "" and result.settings == LineSettings(BUS_BAUD, "N")
    assert result.other_settings == {} and result.garbled == []
    assert [u.unit_id for u in result.units] == [1, 4, 6, 8]
    assert {u.device_id for u in result.units} == _expected_ids(sim)
    by_unit = {u.unit_id: u for u in result.units}
    assert by_unit[4].models == (1, 103) and "0x0000" in by_unit[4].note           # KOSTAL's chain end
    assert by_unit[6].models == (1, 701, 714)
    assert by_unit[8].base == 0                                                     # silent at 40000
    assert (by_unit[1].manufacturer, by_unit[1].serial) == ("SunSpecSim", sim.serial_number(1))
    block = modbus_block(result)
    assert f"baudrate = {BUS_BAUD}" in block and 'parity = "N"' in block and "base_address = 0" in block


async def test_rtu_reports_garbled_settings_and_does_not_sweep_them(tmp_path: Path) -> None:
    sim = SunSpecSimulator((1, 2), seed=1)
    with _line(tmp_path, garble_at=115200) as pair:
        async with sim.serve_rtu(pair.a, baudrate=BUS_BAUD):
            plan = RtuPlan(pair.b, line_settings((115200, BUS_BAUD), ("N", "E")), (1, 2, 3),
                           timeout_seconds=0.3)
            result = await scan_rtu(plan, Progress(tty=False, quiet=True))
    assert result.garbled == ["115200 8N1"]
    assert result.settings == LineSettings(BUS_BAUD, "N") and [u.unit_id for u in result.units] == [1, 2]
    # Even parity: swept when the port takes it; a pty here refuses it, and the scan says so and goes on.
    assert set(result.refused) <= {"115200 8E1", "19200 8E1"}


async def test_rtu_on_a_silent_bus_finds_nothing_in_bounded_time(tmp_path: Path) -> None:
    with _line(tmp_path) as pair:
        plan = RtuPlan(pair.b, line_settings((9600, BUS_BAUD), ("N",)), tuple(range(1, 9)), timeout_seconds=0.1)
        result = await scan_rtu(plan, Progress(tty=False, quiet=True))
    assert result.units == [] and not result.found and modbus_block(result) == ""
    # Nothing answered at 40000, so the common ids among 1-8 (1, 2, 3) were tried at 0 and 50000 too:
    # 2 settings x 3 ids x 3 bases, and no sweep.
    assert result.probes == 2 * 3 * 3
    assert result.elapsed_s <= plan.estimate_seconds() + 2.0


async def test_tcp_finds_the_units_behind_an_endpoint() -> None:
    sim = SunSpecSimulator((1,), seed=2, float_model=True, manufacturer="FloatSim",
                           corpus={2: "base0_silent_at_40000", 3: "kostal_end_single_zero",
                                   126: "der701_714_three_phase"})
    async with sim.serve_tcp():
        port = sim.port
        assert port is not None
        result = await scan_tcp("127.0.0.1", port, (1, 2, 3, 126, 247), 0.3, Progress(tty=False, quiet=True))
    assert result.error == ""
    assert [(u.unit_id, u.base) for u in result.units] == [(1, 40000), (2, 0), (3, 40000), (126, 40000)]
    assert result.units[0].models == (1, 113) and result.units[0].device_id == f"FloatSim-{sim.serial_number(1)}"
    assert f"tcp_port = {port}" in modbus_block(result)


async def test_tcp_with_nothing_listening_says_so() -> None:
    from agent.simulators.broker import free_port
    result = await scan_tcp("127.0.0.1", free_port(), (1,), 0.5, Progress(tty=False, quiet=True))
    assert "cannot connect" in result.error and "Modbus TCP" in result.hint and not result.found


async def test_mqtt_recognises_every_family_on_a_broker(mosquitto_broker: Broker) -> None:
    devices = {"opendtu": ("114182912345",), "victron": ("20",), "solarassistant": ("inverter_1",),
               "tasmota": ("tasmota_5A9AE8",), "shelly": ("shellyplusplugs-e86beae1a0b8",)}
    publishers = [MqttPublisher(p, mosquitto_broker.url, devs, interval_seconds=0.5, client_id=f"scan-{p}", feed=p)
                  for p, devs in devices.items()]
    async with contextlib.AsyncExitStack() as stack:
        for pub in publishers:
            await stack.enter_async_context(pub)
        # Retained, so the scan gets it whenever it subscribes: traffic of something no profile knows.
        await publishers[0].publish([Message("site/boiler/temperature", b"61.5", retain=True)])
        tasks = [asyncio.create_task(pub.run(), name=f"test[{pub.profile}]") for pub in publishers]
        try:
            result = await scan_mqtt(mosquitto_broker.url, 3.0, Progress(tty=False, quiet=True))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert result.error == ""
    assert {f.profile for f in result.feeds} == set(devices)
    assert next(f for f in result.feeds if f.profile == "victron").portal_id == PORTAL_ID
    want = {e.device_id for pub in publishers for e in pub.expected()}
    assert want <= {d.device_id for d in result.devices if d.sample}, result.devices
    assert "site/boiler/temperature" in result.unrecognised
    block = mqtt_block(result)
    assert block.count("[[mqtt]]") == 5 and f'portal_id = "{PORTAL_ID}"' in block
    json.dumps(result.to_json())


async def test_mqtt_with_no_broker_says_so() -> None:
    from agent.simulators.broker import free_port
    result = await scan_mqtt(f"mqtt://127.0.0.1:{free_port()}", 1.0, Progress(tty=False, quiet=True))
    assert "cannot connect" in result.error and result.hint and not result.found


async def test_rtu_on_a_port_held_by_the_agent_stops_at_once_and_says_so(tmp_path: Path) -> None:
    import fcntl
    import os
    with PtyPair(tmp_path / "ttySIM", tmp_path / "ttySCAN") as pair:
        fd = os.open(pair.b, os.O_RDWR | os.O_NOCTTY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)          # what the agent's pymodbus holds while it runs
            result = await scan_rtu(RtuPlan(pair.b, line_settings()), Progress(tty=False, quiet=True))
        finally:
            os.close(fd)
    assert "in use by another program" in result.error and "systemctl stop solar-agent" in result.hint
    assert result.probes == 0 and not result.found


async def test_rtu_keeps_a_unit_that_answers_after_the_timeout_and_says_so(tmp_path: Path) -> None:
    import time
    pair = PtyPair(tmp_path / "ttySIM", tmp_path / "ttySCAN")

    def slow_unit(direction: str, data: bytes) -> bytes:
        if direction == "a->b":
            time.sleep(0.35)            # the unit's turnaround: longer than the scan's timeout (relay thread)
        return data

    pair.mangle = slow_unit
    sim = SunSpecSimulator((2,), seed=1)
    with pair:
        async with sim.serve_rtu(pair.a):
            plan = RtuPlan(pair.b, line_settings((9600,), ("N",)), (1, 2, 3), timeout_seconds=0.2)
            result = await scan_rtu(plan, Progress(tty=False, quiet=True))
    # Unit 2's answer to the probe arrives during the probe of unit 3: a valid frame from unit 2, not noise.
    assert result.slow == [2] and result.garbled == []
    assert [(u.unit_id, u.device_id) for u in result.units] == [(2, f"SunSpecSim-{sim.serial_number(2)}")]
