"""The system test's OpenDTU publisher: the simulator's frames, with an energy counter that moves.

``solar-agent simulate mqtt --profile opendtu`` replays one recorded round, so every cycle carries
the same values and a reading filed under the wrong cycle would look right. Here the AC energy
counter (``0/yieldtotal``, kWh) is a function of the cycle's second, so the reconciliation can
tell each cycle's values from its neighbour's. Everything else is the simulator's, which shares
nothing with the agent's MQTT source. Run with the package's interpreter (it has the simulator):

    /opt/solar-agent/bin/python tests/system/opendtu.py --url mqtt://127.0.0.1:1883 --device SERIAL

Publishes one QoS 1 cycle per second until SIGTERM; the broker's PUBACKs are awaited per cycle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
import time

from agent.simulators.mqtt_publishers import Expected, Message, MqttPublisher, messages


def _kwh(t_s: int) -> str:
    return f"{1000 + (t_s % 100_000) / 1000:.3f}"


def cycle(serial: str, t_s: int) -> tuple[list[Message], list[Expected]]:
    """One round at unix second ``t_s`` and the readings it must become."""
    msgs, expected = messages("opendtu", serial, t_s)
    msgs = [dataclasses.replace(m, payload=_kwh(t_s).encode()) if m.topic.endswith("/0/yieldtotal") else m
            for m in msgs]
    wh = round(float(_kwh(t_s)) * 1000, 3)
    expected = [dataclasses.replace(e, metrics={**e.metrics, "ac_energy_wh": wh})
                if "ac_energy_wh" in e.metrics else e for e in expected]
    return msgs, expected


async def _publish(url: str, serial: str, interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with MqttPublisher("opendtu", url, (serial,), client_id="sa-system-test-opendtu") as pub:
        print(f"publishing OpenDTU {serial} to {url} every {interval:g}s", flush=True)
        while not stop.is_set():
            await pub.publish(cycle(serial, int(time.time()))[0])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    a = p.parse_args(argv)
    asyncio.run(_publish(a.url, a.device, a.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
