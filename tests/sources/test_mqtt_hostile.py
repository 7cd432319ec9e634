"""Hostile MQTT input through a real broker: the feed survives, poison is recorded once, then acked.

Every profile gets the same hostile values (integers of 5,000 digits, 1e999, NaN, -0, nesting
10,000 deep, 1 MB, bytes that are not UTF-8, wrong JSON types) in the places its devices put
numbers, and the generic feed gets odd topics (unicode, empty levels, 65,000 bytes). Judged by:

* the source never ends (``run`` is still running) and counts every message under one outcome;
* each poison message is recorded exactly once (``reject`` before the ack), never twice;
* every message was acked: after a reconnect with the same persistent session, the broker
  redelivers nothing (a sentinel published after the reconnect arrives first and alone);
* a valid message after the storm still becomes a reading (generic feed).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.records import Reading, RejectedInput
from agent.sources.mqtt import MqttSource
from tests.peers.mosquitto import Broker, mosquitto_broker  # noqa: F401 (fixture)
from tests.waiting import wait_for

HUGE_INT = "9" * 5000
DEEP = "[" * 10_000 + "]" * 10_000
# JSON texts of hostile numbers; each is spliced where the device puts a number.
HOSTILE_VALUES = [HUGE_INT, "-" + HUGE_INT, "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "-0", "0.0e-99999",
                  DEEP, '"12.5"', "true", "null", "[]", "{}", '"' + "x" * 1_000_000 + '"']
RAW_PAYLOADS = [b"", b"\xff\xfe\x00garbage", b"{", b"\x00" * 10, DEEP.encode(), b"9" * 5000, b"{}" * 500_000]


def _profile_messages(profile: str, value: str) -> list[tuple[str, bytes]]:
    """Where each family's devices put a number (topic layouts from the README's supported devices)."""
    if profile == "generic":
        return [("gen/dev1/tele", f'{{"ENERGY":{{"Power":{value}}},"ts":1732860000}}'.encode())]
    if profile == "opendtu":
        return [("solar/114182912345/0/power", value.encode()), ("solar/114182912345/status/last_update",
                                                                   value.encode())]
    if profile == "victron":
        return [("N/abc/pvinverter/20/Ac/Power", f'{{"value": {value}}}'.encode())]
    if profile == "solarassistant":
        return [("solar_assistant/inverter_1/pv_power/state", value.encode())]
    if profile == "tasmota":
        return [("tele/plug1/SENSOR", f'{{"Time":"2024-11-29T06:00:00","ENERGY":{{"Power":{value},'
                                      f'"Total":{value},"Voltage":[{value},230]}}}}'.encode())]
    if profile == "shelly":
        return [("shelly1/events/rpc", f'{{"method":"NotifyStatus","params":{{"ts":1732860000,"em:0":'
                                       f'{{"id":0,"total_act_power":{value},"a_voltage":{value}}}}}}}'.encode()),
                ("shelly1/status/switch:0", f'{{"id":0,"apower":{value},"aenergy":{{"total":{value}}}}}'.encode())]
    raise AssertionError(profile)


def _feed(profile: str, url: str, topics: Sequence[str], client_id: str = "") -> MqttConfig:
    return MqttConfig(name=f"hostile-{profile}", url=url, profile=profile, topics=tuple(topics),  # type: ignore[arg-type]
                      portal_id="abc", client_id=client_id or f"hostile-{profile}",
                      fields=(("ac_power_w", "ENERGY.Power"),), time_path="ts")


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.rejected: list[RejectedInput] = []

    async def emit(self, readings: Sequence[Reading]) -> None:
        self.readings += readings

    async def reject(self, item: RejectedInput) -> None:
        self.rejected.append(item)


def _publish(broker: Broker, messages: list[tuple[str, bytes]], client_id: str) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload in messages:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def _started(src: MqttSource, sink: Sink) -> asyncio.Task[None]:
    task = asyncio.create_task(src.run(sink.emit, sink.reject), name=f"test[{src.name}]")
    await wait_for(lambda: src.connected or task.done(), 10, f"{src.name} connected")
    assert not task.done(), task.exception()
    return task


@pytest.mark.parametrize("profile", ["generic", "opendtu", "victron", "solarassistant", "tasmota", "shelly"])
async def test_hostile_payloads_are_contained_recorded_once_and_acked(mosquitto_broker: Broker,
                                                                      profile: str) -> None:
    messages = [m for v in HOSTILE_VALUES for m in _profile_messages(profile, v)]
    first_topic = messages[0][0]
    messages += [(first_topic, raw) for raw in RAW_PAYLOADS]
    messages = list(dict.fromkeys(messages))      # each distinct message once: each is recorded once
    topics = sorted({t for t, _ in messages})
    sink = Sink()
    src = MqttSource(_feed(profile, mosquitto_broker.url, topics), "site")
    task = await _started(src, sink)
    try:
        await asyncio.to_thread(_publish, mosquitto_broker, messages, f"pub-{profile}")
        await wait_for(lambda: src.received_total >= len(messages) or task.done(), 30, "every hostile message")
        await wait_for(lambda: src.acked_total >= len(messages) or task.done(), 10, "every message acked")
        assert not task.done(), f"the source ended: {task.exception()!r}"
        health = src.feed_health()
        assert sum(health.outcomes.values()) == len(messages), health.outcomes
        # Nothing that cannot become a reading went unrecorded, nothing twice.
        poison = health.outcomes.get("malformed", 0) + health.outcomes.get("decode_error", 0)
        assert len(sink.rejected) == poison > 0
        assert all(len(r.payload) <= 256 for r in sink.rejected)
        assert all(r.reason in ("malformed", "decode_error") for r in sink.rejected)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    # Same client id, persistent session: anything unacked would be redelivered before the sentinel.
    sentinel = (first_topic, b"sentinel-not-a-number")
    again = Sink()
    src2 = MqttSource(_feed(profile, mosquitto_broker.url, topics), "site")
    task2 = await _started(src2, again)
    try:
        await asyncio.to_thread(_publish, mosquitto_broker, [sentinel], f"pub2-{profile}")
        await wait_for(lambda: src2.received_total >= 1, 10, "the sentinel")
        await wait_for(lambda: src2.acked_total >= 1, 10, "the sentinel acked")
        assert src2.received_total == 1, "the broker redelivered a message that should have been acked"
    finally:
        task2.cancel()
        await asyncio.gather(task2, return_exceptions=True)


async def test_odd_topics_and_a_valid_message_after_the_storm(mosquitto_broker: Broker) -> None:
    ok = json.dumps({"ENERGY": {"Power": 1234.5}, "ts": 1732860000}).encode()
    # (U+0000 is forbidden in topics by MQTT 5 section 1.5.4: the broker drops the publisher instead.)
    odd = ["gen/ünï/çødé/tele", "gen//dev/", "gen/" + "x" * 65_000, "gen/dev1/tele/extra/levels", "gen/\u202e"]
    messages = [(t, ok) for t in odd] + [("gen/dev1/tele", b"\xff" * 1_000_000), ("gen/dev9/tele", ok)]
    sink = Sink()
    # Its own session: the parametrized test above left "hostile-generic" subscribed to other topics.
    src = MqttSource(_feed("generic", mosquitto_broker.url, ["gen/#"], client_id="hostile-odd-topics"), "site")
    task = await _started(src, sink)
    try:
        await asyncio.to_thread(_publish, mosquitto_broker, messages, "pub-odd")
        await wait_for(lambda: src.acked_total >= len(messages) or task.done(), 30, "every odd message acked")
        assert not task.done(), f"the source ended: {task.exception()!r}"
        assert any(r.device_id == "dev9" and r.metrics["ac_power_w"] == 1234.5 for r in sink.readings)
        assert sum(src.feed_health().outcomes.values()) == len(messages)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_only_ignored_traffic_is_a_quiet_site_not_a_misconfigured_feed(mosquitto_broker: Broker) -> None:
    """OpenDTU at night: inverters asleep, the DTU still publishes names and status (all 'ignored').
    That must not raise feed_no_readings (it would every night)."""
    from agent.status import FeedCheck, HealthInputs, evaluate_health

    night = [("solar/114182912345/name", b"Roof east"), ("solar/dtu/uptime", b"86400"),
             ("solar/114182912345/status/reachable", b"0"), ("solar/dtu/status", b"online")]
    sink = Sink()
    src = MqttSource(_feed("opendtu", mosquitto_broker.url, ["solar/#"], client_id="hostile-night"), "site")
    task = await _started(src, sink)
    try:
        await asyncio.to_thread(_publish, mosquitto_broker, night, "pub-night")
        await wait_for(lambda: src.acked_total >= len(night), 10, "the night traffic acked")
        health = src.feed_health()
        assert health.outcomes == {"ignored": len(night)}, health.outcomes
        assert health.last_unusable_ms is None and health.example_topic == ""
        now = health.last_message_ms or 0
        check = FeedCheck(src.name, True, True, "", health.last_unusable_ms, None, "", "")
        report = evaluate_health(HealthInputs(now_ms=now + 200_000, started_ms=now - 3_600_000, feeds=[check]))
        assert report.ok, report.reasons
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
