"""Commissioning end to end: scan a simulated site (RS-485 bus, Modbus TCP inverter, MQTT broker with three
device families), paste the three blocks the scans printed into a site file, check it with check-config,
start the agent on it, and see a reading of every device the scans found land in Data Cloud (the emulator).

The site's buses carry corpus devices (tests/peers/site.py: a KOSTAL chain end and a 701/714 DER inverter
on RS-485, SunS at 0 behind a silent 40000 on TCP) next to the simulator's own inverters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

import pytest

from agent.simulators.mqtt_publishers import MqttPublisher
from tests.cli.conftest import cli
from tests.peers.site import Site, wait_for

pytestmark = pytest.mark.slow


async def _scan(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    assert await cli("scan", *args, "--json") == 0, capsys.readouterr().err
    doc: dict[str, object] = json.loads(capsys.readouterr().out)
    return doc


async def test_the_blocks_a_scan_prints_configure_an_agent_that_delivers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    async with Site(tmp_path, rtu_units=(1,), tcp=True, mqtt=True) as site, contextlib.AsyncExitStack() as stack:
        assert site.pair is not None and site.tcp_sim is not None and site.broker is not None
        publishers = [MqttPublisher(p, site.broker.url, (dev,), interval_seconds=1.0, client_id=f"site-{p}")
                      for p, dev in (("opendtu", "1164a00cbf56"), ("tasmota", "tasmota_5A9AE8"),
                                     ("shelly", "shellypro4pm-c8f09e8a1b2c"))]
        for pub in publishers:
            await stack.enter_async_context(pub)
        tasks = [asyncio.create_task(pub.run(), name=f"test[{pub.profile}]") for pub in publishers]
        stack.push_async_callback(_cancel, tasks)

        rtu = await _scan(capsys, "rtu", "--port", site.pair.b, "--baud", "9600", "--parity", "N",
                          "--units", "1-12", "--timeout", "0.3")
        tcp = await _scan(capsys, "tcp", "--host", "127.0.0.1", "--port", str(site.tcp_sim.port),
                          "--units", "1,2,3", "--timeout", "0.3")
        mqtt = await _scan(capsys, "mqtt", "--url", site.broker.url, "--seconds", "3")

        found = {str(u["device_id"]) for scan in (rtu, tcp) for u in scan["scan"]["units"]}  # type: ignore[index]
        assert len(found) == 5, found          # units 1, 11, 12 on RS-485; 1 and 2 (SunS at 0) on TCP
        mqtt_devices = {str(d["device_id"]) for d in mqtt["scan"]["devices"] if d["sample"]}  # type: ignore[index]
        assert {"1164a00cbf56", "tasmota_5A9AE8", "shellypro4pm-c8f09e8a1b2c/switch:0"} <= mqtt_devices

        blocks = "\n".join(str(doc["toml"]) for doc in (rtu, tcp, mqtt))
        site.config_path.write_text(site.config_text(sources=False, extra=blocks))
        assert await cli("check-config", "--quiet", site.config_path) == 0, capsys.readouterr()
        capsys.readouterr()

        await site.start_agent()
        want = found | mqtt_devices

        def landed() -> bool:
            return want <= {r.get("device_id") for r in site.emu.store.rows()}
        await wait_for(landed, 40, f"a reading of each scanned device to land: {sorted(want)}")


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
