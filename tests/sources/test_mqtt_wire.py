"""MqttSource against a real mosquitto: decoding, persistent sessions, TLS, read-only behaviour."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.records import Reading
from agent.simulators.mqtt_publishers import GENERIC_FIELDS, PORTAL_ID, Message, MqttPublisher
from agent.sources import Source
from agent.sources.mqtt import MqttSource
from tests.peers.mosquitto import Broker, mosquitto_broker, mosquitto_tls  # noqa: F401 (fixtures)
from tests.waiting import wait_for as until


class Sink:
    """A stand-in for the outbox: 'commits' by appending to a list."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def __call__(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)

    def by_device(self) -> dict[str, list[Reading]]:
        out: dict[str, list[Reading]] = {}
        for r in self.readings:
            out.setdefault(r.device_id, []).append(r)
        return out


@contextlib.asynccontextmanager
async def running(src: MqttSource, sink: Sink) -> AsyncIterator[MqttSource]:
    task = asyncio.create_task(src.run(sink), name=f"test[{src.name}].run")
    try:
        await until(lambda: src.connects >= 1 or task.done(), what=f"{src.name} to connect")
        yield src
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cfg(broker: Broker, name: str, profile: str, **kw: object) -> MqttConfig:
    return MqttConfig(name=name, url=broker.url, profile=profile, **kw)  # type: ignore[arg-type]


async def probe(src: MqttSource, pub: MqttPublisher, topic: str) -> None:
    """Make sure the subscription is live: publish until the source has received something."""
    seen = src.received_total
    deadline = time.monotonic() + 10
    while src.received_total == seen:
        assert time.monotonic() < deadline, "subscription never became live"
        await pub.publish([Message(topic, b"{}")])
        await asyncio.sleep(0.05)


async def test_opendtu_cycles_become_readings(mosquitto_broker: Broker) -> None:
    src = MqttSource(cfg(mosquitto_broker, "dtu", "opendtu"), "site1")
    assert isinstance(src, Source) and src.name == "mqtt:dtu" and src.client_id == "solar-agent-site1-dtu"
    sink = Sink()
    t = int(time.time())
    async with (MqttPublisher("opendtu", mosquitto_broker.url, ("114182912345", "116180001234")) as pub,
                running(src, sink)):
        await pub.publish_cycle(t)
        await pub.publish_cycle(t + 5)
        await until(lambda: len(sink.readings) >= len(pub.expected()), what="readings")
        await until(lambda: src.acked_total >= 2 * 2 * 19, what="acks")
    got = {(r.device_id, r.time_ms): dict(r.metrics) for r in sink.readings}
    for e in pub.expected():
        assert got[(e.device_id, e.time_ms)] == pytest.approx(e.metrics), e.device_id
    assert {h.device for h in src.health()} == {e.device_id for e in pub.expected()}
    assert all(h.state == "ok" and h.readings_total == 2 for h in src.health())


async def test_persistent_session_gets_messages_sent_while_down(mosquitto_broker: Broker) -> None:
    conf = cfg(mosquitto_broker, "gen", "generic", topics=("site/+/telemetry",), fields=GENERIC_FIELDS,
               time_path="ts", client_id="persist-test")
    sink = Sink()
    async with MqttPublisher("generic", mosquitto_broker.url, ("inv1", "inv2")) as pub:
        src = MqttSource(conf, "s")
        async with running(src, sink):
            await probe(src, pub, "site/probe/telemetry")
        t = int(time.time())
        for k in range(5):                      # the source is down: the broker queues these
            await pub.publish_cycle(t + k)
        src2 = MqttSource(conf, "s", protocol=5)
        async with running(src2, sink):
            await until(lambda: len(sink.readings) >= 10, what="queued messages after restart")
    got = {(r.device_id, r.time_ms) for r in sink.readings}
    assert {(e.device_id, e.time_ms) for e in pub.expected()} <= got


async def test_persistent_session_mqtt311(mosquitto_broker: Broker) -> None:
    conf = cfg(mosquitto_broker, "g311", "generic", topics=("v311/+/telemetry",), fields=(("ac_power_w", "W"),),
               client_id="persist-311")
    sink = Sink()
    async with MqttPublisher("generic", mosquitto_broker.url, ()) as pub:
        src = MqttSource(conf, "s", protocol=4)
        async with running(src, sink):
            await probe(src, pub, "v311/probe/telemetry")
        await pub.publish([Message(f"v311/d{k}/telemetry", json.dumps({"W": k}).encode()) for k in range(3)])
        async with running(MqttSource(conf, "s", protocol=4), sink):
            await until(lambda: {"d0", "d1", "d2"} <= {r.device_id for r in sink.readings}, what="v3.1.1 queue")


async def test_malformed_payload_is_counted_and_the_rest_goes_on(mosquitto_broker: Broker) -> None:
    conf = cfg(mosquitto_broker, "bad", "generic", topics=("bad/+/telemetry",), fields=(("ac_power_w", "W"),))
    src, sink = MqttSource(conf, "s"), Sink()
    async with MqttPublisher("generic", mosquitto_broker.url, ()) as pub, running(src, sink):
        await probe(src, pub, "bad/probe/telemetry")
        await pub.publish([Message("bad/inv1/telemetry", b"\xff{not json"),
                           Message("bad/inv1/telemetry", b'{"W": "many"}'),
                           Message("bad/inv2/telemetry", b'{"W": 42}')])
        await until(lambda: any(r.device_id == "inv2" for r in sink.readings), what="the good message")
        await until(lambda: src.acked_total >= 4, what="acks of the malformed messages")
    assert src.malformed_total == 2
    health = {h.device: h for h in src.health()}
    assert health["inv1"].errors["malformed"] == 2 and "W" in health["inv1"].last_error
    assert health["inv2"].readings_total == 1


async def test_agent_publishes_nothing_but_the_victron_keepalive(mosquitto_broker: Broker) -> None:
    seen: list[tuple[str, bytes]] = []
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    spy = paho.Client(CallbackAPIVersion.VERSION2, client_id="spy", protocol=paho.MQTTv311)
    spy.on_connect = lambda c, *a: c.subscribe("#", qos=1)
    spy.on_subscribe = lambda *a: loop.call_soon_threadsafe(ready.set)
    spy.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload)))
    spy.connect("127.0.0.1", mosquitto_broker.port)
    spy.loop_start()
    try:
        await asyncio.wait_for(ready.wait(), 10)
        sink = Sink()
        vic = MqttSource(cfg(mosquitto_broker, "gx", "victron", portal_id=PORTAL_ID), "s", tick_seconds=0.2)
        dtu = MqttSource(cfg(mosquitto_broker, "dtu2", "opendtu", topics=("spyfree/#",)), "s")
        async with MqttPublisher("victron", mosquitto_broker.url, ("20",)) as pub, \
                running(vic, sink), running(dtu, sink):
            await until(lambda: any(t.startswith("R/") for t, _ in seen), what="the first keepalive")
            await pub.publish_cycle(int(time.time()))
            await until(lambda: len(sink.readings) >= 1, what="a victron reading")
            published = {m.topic for m in pub.messages_sent}
    finally:
        spy.disconnect()
        await asyncio.to_thread(spy.loop_stop)
    from_agent = [(t, p) for t, p in seen if t not in published and not t.startswith("site/")
                  and not t.startswith("bad/") and not t.startswith("v311/") and not t.startswith("solar/")]
    assert from_agent and {t for t, _ in from_agent} == {f"R/{PORTAL_ID}/keepalive"}
    assert from_agent[0][1] == b""              # the first keepalive asks for a full republish
    assert sink.readings[0].metrics["ac_power_w"] == pytest.approx(pub.expected()[0].metrics["ac_power_w"])


# paho 2.2 does not close the socket of a failed TLS handshake (reconnect() leaves it to the GC);
# the leak is paho's and bounded by the reconnect backoff, not ours to hide elsewhere.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_tls_verifies_the_broker(mosquitto_tls: Broker) -> None:
    assert mosquitto_tls.ca_file is not None
    no_ca = MqttSource(cfg(mosquitto_tls, "tls0", "opendtu"), "s")
    task = asyncio.create_task(no_ca.run(Sink()), name="test[tls0].run")
    try:
        await until(lambda: no_ca.connect_failures >= 1, what="the TLS refusal")
        assert no_ca.connects == 0 and not no_ca.connected
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    with_ca = MqttSource(cfg(mosquitto_tls, "tls1", "opendtu", ca_file=mosquitto_tls.ca_file), "s")
    async with running(with_ca, Sink()):
        assert with_ca.connected


async def test_reconnects_after_a_broker_restart(mosquitto_broker: Broker) -> None:
    conf = cfg(mosquitto_broker, "rc", "generic", topics=("rc/+/telemetry",), fields=(("ac_power_w", "W"),),
               client_id="reconnect-test")
    src, sink = MqttSource(conf, "s"), Sink()
    async with running(src, sink):
        async with MqttPublisher("generic", mosquitto_broker.url, (), client_id="rc-pub1") as pub:
            await probe(src, pub, "rc/probe/telemetry")
        await asyncio.to_thread(mosquitto_broker.restart)     # persistence keeps the session
        await until(lambda: src.connects >= 2, timeout=20, what="the reconnect")
        async with MqttPublisher("generic", mosquitto_broker.url, (), client_id="rc-pub2") as pub:
            await pub.publish([Message("rc/after/telemetry", b'{"W": 7}')])
            await until(lambda: any(r.device_id == "after" for r in sink.readings), what="a reading after restart")
