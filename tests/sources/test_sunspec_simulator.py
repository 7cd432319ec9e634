"""The simulator against pysunspec2's own client (its own Modbus stack): a conformance oracle.

If the SunSpec Alliance's scanner finds our chain and decodes the values we say we served, the
simulator is a fair peer for testing the agent's Modbus source.
"""

from __future__ import annotations

import asyncio

import pytest
import sunspec2.modbus.client as ss_client

from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from tests.peers.serial import pty_pair  # noqa: F401

NOON = 1_700_006_400.0 + 12 * 3600          # a midnight + 12 h: the PV curve is at its peak

POINTS = ("A", "PhVphA", "W", "Hz", "VA", "VAr", "PF", "WH", "DCA", "DCV", "DCW", "TmpCab", "St", "Evt1")


def scan(device: ss_client.SunSpecModbusClientDevice, inverter_model: int) -> dict[str, object]:
    try:
        device.scan()
        common = device.models[1][0]
        inv = device.models[inverter_model][0]
        inv.read()
        out: dict[str, object] = {p: getattr(inv, p).cvalue for p in POINTS}
        models = sorted(k for k in device.models if isinstance(k, int))
        out.update(Mn=common.Mn.value, SN=common.SN.value, models=models)
        return out
    finally:
        device.close()


@pytest.mark.parametrize(("base", "float_model"), [(40000, False), (50000, True)])
async def test_pysunspec2_scans_rtu_simulator(pty_pair: PtyPair, base: int, float_model: bool) -> None:
    sim = SunSpecSimulator((1, 2), base_address=base, float_model=float_model, clock=lambda: NOON)
    inverter = 113 if float_model else 103
    async with sim.serve_rtu(pty_pair.a):
        dev = ss_client.SunSpecModbusClientDeviceRTU(slave_id=2, name=pty_pair.b, baudrate=9600, timeout=1)
        got = await asyncio.to_thread(scan, dev, inverter)
    expected = sim.expected(2)
    assert got["models"] == [1, inverter]
    assert got["Mn"] == "SunSpecSim" and got["SN"] == sim.serial_number(2)
    for p in POINTS:
        want, have = expected[p], got[p]
        if isinstance(want, float) and isinstance(have, float):
            assert have == pytest.approx(want, rel=1e-6), p       # pysunspec2's cvalue is a plain float
        else:
            assert have == want, p


async def test_pysunspec2_scans_tcp_simulator_with_sentinels() -> None:
    sim = SunSpecSimulator((7,), base_address=0, clock=lambda: NOON, unimplemented={"Hz", "V_SF"})
    async with sim.serve_tcp() as served:
        assert served.port
        dev = ss_client.SunSpecModbusClientDeviceTCP(slave_id=7, ipaddr="127.0.0.1", ipport=served.port, timeout=1)
        got = await asyncio.to_thread(scan, dev, 103)
    assert got["Hz"] is None and got["PhVphA"] is None          # unimplemented point and sentinel SF
    assert got["W"] == sim.expected(7)["W"] and got["St"] == 4


def test_values_follow_a_daily_curve_and_energy_rises() -> None:
    sim = SunSpecSimulator((1,), clock=lambda: NOON, seed=3)
    night, morning, noon = (sim.values_at(1, NOON + dh * 3600) for dh in (-10, -3, 0))
    assert night["W"] == 0 and night["St"] == 2
    assert 0 < morning["W"] < noon["W"]                          # type: ignore[operator]
    energies = [sim.values_at(1, NOON + h * 3600)["WH"] for h in range(-12, 36, 2)]
    assert energies == sorted(energies) and energies[0] < energies[-1]
    assert sim.values_at(1, NOON) == SunSpecSimulator((1,), clock=lambda: NOON, seed=3).values_at(1, NOON)
