"""A device that changes under the agent: its model chain moves (a firmware update) while it is
polled. The cached chain no longer fits the registers; the source must rediscover, never stop.

The two devices are corpus cases (tests/cases/sunspec): a Fronius float inverter (models 1, 111)
replaced on the same address and unit by a DER inverter (models 1, 701, 714)."""

from __future__ import annotations

import contextlib

from agent.config import ModbusBusConfig, ModbusDeviceConfig
from agent.simulators.sunspec_device import SunSpecSimulator
from agent.sources.modbus import ModbusSource
from tests.sources.test_modbus_source import running


async def test_a_model_chain_that_moves_under_the_poller_is_rediscovered() -> None:
    before = SunSpecSimulator((), corpus={1: "inv111_float_single"})
    after = SunSpecSimulator((), corpus={1: "der701_714_three_phase"})
    old_id, new_id = before.case_expected(1)[0][0], after.case_expected(1)[0][0]
    async with contextlib.AsyncExitStack() as device:
        served = await device.enter_async_context(before.serve_tcp())
        port = served.port
        assert port
        src = ModbusSource(ModbusBusConfig(name="fw", transport="tcp", host="127.0.0.1", tcp_port=port,
                                           devices=(ModbusDeviceConfig(unit_id=1),), timeout_seconds=0.3,
                                           poll_interval_seconds=0.05), backoff_max_seconds=1.0)
        async with running(src) as col:
            await col.until(lambda: bool(col.of(old_id)), timeout=10)
            await device.aclose()                                   # the inverter reboots ...
            async with after.serve_tcp(port=port):                 # ... with another register map
                await col.until(lambda: bool(col.of(new_id)), timeout=15)
                metrics = col.of(new_id)[-1][1].metrics
    assert metrics["operating_state"] == after.case_expected(1)[0][1]["operating_state"]
    assert src.health()[0].state == "ok"
