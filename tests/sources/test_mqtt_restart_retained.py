"""A restarted agent must not make the broker replay the retained round into a live stream.

Found by the system test under systemd (issue #12): the MQTT source re-subscribed on the first
connection of every new process even when the broker kept its session, so mosquitto resent every
retained OpenDTU value; the repeated fields closed the cycle in progress and every later cycle was
filed one round late (each reading carried the previous round's energy), and the last one was
flushed on the idle timer with its receive time (an invented reading).

The frames are the corpus's OpenDTU round (tests/cases/mqtt/opendtu/sim_hm800_round), with the AC
energy counter moved each round so that a reading filed under the wrong round shows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from agent.config import MqttConfig
from agent.records import Reading
from agent.simulators.mqtt_publishers import Message, MqttPublisher, messages
from agent.sources.mqtt import MqttSource
from tests.peers.mosquitto import Broker, mosquitto_broker  # noqa: F401 (fixture)
from tests.waiting import wait_for

SERIAL = "116100000042"


def _round(t_s: int, energy_kwh: float) -> list[Message]:
    msgs, _ = messages("opendtu", SERIAL, t_s)
    return [Message(m.topic, f"{energy_kwh:.3f}".encode(), m.retain) if m.topic.endswith("/0/yieldtotal") else m
            for m in msgs]


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def emit(self, readings: Sequence[Reading]) -> None:
        self.readings += readings


async def test_a_restart_on_a_kept_session_files_every_round_under_its_own_time(
        mosquitto_broker: Broker) -> None:
    cfg = MqttConfig(name="dtu", url=mosquitto_broker.url, profile="opendtu", client_id="restart-retained")
    now = int(time.time())         # fresh rounds: the profile drops a round whose last_update is old
    energy = {t: 1000.0 + i for i, t in enumerate(range(now - 40, now))}
    times = sorted(energy)
    published: list[int] = []
    async with MqttPublisher("opendtu", mosquitto_broker.url, (SERIAL,), client_id="restart-pub") as pub:

        async def device() -> None:          # the DTU publishes on, whatever the agent does
            for t in times:
                await pub.publish(_round(t, energy[t]))
                published.append(t)
                await asyncio.sleep(0.1)     # a device's pace, not a wait for a condition

        first = Sink()
        src = MqttSource(cfg, "site", tick_seconds=0.1)
        task = asyncio.create_task(src.run(first.emit))
        await wait_for(lambda: src.connected, 10, "connected")
        dtu = asyncio.create_task(device())
        await wait_for(lambda: len(published) >= 10, 10, "ten rounds")
        task.cancel()                                     # the agent restarts mid-stream
        await asyncio.gather(task, return_exceptions=True)
        second = Sink()                                   # the next process, same persistent session
        src2 = MqttSource(cfg, "site", tick_seconds=0.1)
        task2 = asyncio.create_task(src2.run(second.emit))
        try:
            await dtu
            last = times[-1]
            await wait_for(lambda: any(r.time_ms // 1000 == last for r in second.readings if r.device_id == SERIAL),
                           10, "the last round")
        finally:
            task2.cancel()
            await asyncio.gather(task2, return_exceptions=True)
    got = [r for r in first.readings + second.readings if r.device_id == SERIAL]
    assert len({r.time_ms for r in got}) >= 35, "rounds missing"
    for r in got:
        t = r.time_ms // 1000
        assert t in energy, f"a reading at {t} that no round had (invented)"
        assert r.metrics["ac_energy_wh"] == energy[t] * 1000, f"round {t} carries another round's energy"
