"""MQTT acks still follow the commit when the outbox lingers (``outbox.commit_interval_ms``), and a
lingering commit never throttles the feed: messages keep being decoded while commits wait, and a
window of unacked messages about to fill asks for the commit at once.

Real parts: mosquitto from the fixture, the real MqttSource, a real Outbox file whose ``enqueue``
is the emit (as the agent's ``_emit`` does). The linger is a minute, so "not committed yet" is
certain for the length of a test, without any timing assumption.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from agent.config import MqttConfig, OutboxConfig
from agent.outbox import Outbox
from agent.records import Reading, RecordBuilder, load_schema
from agent.simulators.mqtt_publishers import Message, MqttPublisher
from agent.sources import SupportsCommitRequest
from agent.sources.mqtt import RECEIVE_MAXIMUM, MqttSource
from tests.peers.mosquitto import Broker, mosquitto_broker  # noqa: F401 (fixture)
from tests.peers.tcp_relay import TcpRelay
from tests.waiting import wait_for

LINGER_MS = 60_000


@contextlib.asynccontextmanager
async def source_on_outbox(broker: Broker, tmp_path: Path, name: str, *, url: str = "",
                           time_path: str = "ts") -> AsyncIterator[tuple[MqttSource, Outbox]]:
    cfg = MqttConfig(name=name, url=url or broker.url, profile="generic", topics=(f"{name}/+/telemetry",),
                     fields=(("ac_power_w", "W"),), time_path=time_path)
    builder = RecordBuilder(load_schema(), "site-linger", "001LINGER", "0.1.0")
    async with Outbox(OutboxConfig(path=tmp_path / "o.db", commit_interval_ms=LINGER_MS)) as box:

        async def emit(readings: Sequence[Reading]) -> None:
            await box.enqueue([builder.encode(r) for r in readings])

        src = MqttSource(cfg, "site")
        assert isinstance(src, SupportsCommitRequest)
        src.request_commit = box.commit_soon
        task = asyncio.create_task(src.run(emit), name="test[mqtt-linger].run")
        try:
            await wait_for(lambda: src.connects >= 1 or task.done(), what="the source to connect")
            yield src, box
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _commit(box: Outbox) -> bool:
    box.commit_soon()
    return True


def _msgs(name: str, t0: int, n: int, start: int = 0) -> list[Message]:
    return [Message(f"{name}/inv{k % 7}/telemetry", json.dumps({"ts": t0 + k, "W": k}).encode())
            for k in range(start, start + n)]


async def _live(src: MqttSource, box: Outbox, pub: MqttPublisher, name: str, t0: int) -> None:
    """Publish probes until the subscription is live, then commit and ack them."""
    n = 0
    while src.received_total == 0:
        assert n < 100, "subscription never became live"
        await pub.publish(_msgs(name, t0 - 1000, 1, start=n))
        n += 1
        await asyncio.sleep(0.1)     # re-probe until the subscription is live
    # One more: once it is in, every probe the broker delivers is (QoS 1 keeps the order).
    seen = src.received_total
    await pub.publish(_msgs(name, t0 - 1000, 1, start=n))
    await wait_for(lambda: src.received_total > seen, what="the last probe")
    await wait_for(lambda: _commit(box) and src.acked_total >= src.received_total, what="the probes' acks")


async def test_messages_are_decoded_while_their_commit_lingers_and_acked_after_it(
        mosquitto_broker: Broker, tmp_path: Path) -> None:
    t0 = int(time.time())
    async with (source_on_outbox(mosquitto_broker, tmp_path, "lin") as (src, box),
                MqttPublisher("generic", mosquitto_broker.url, (), client_id="lin-pub") as pub):
        await _live(src, box, pub, "lin", t0)
        received, acked, rows = src.received_total, src.acked_total, (await box.stats()).rows
        await pub.publish(_msgs("lin", t0, 30))
        # One message per commit would stop at the first message for a minute: all 30 arrive.
        await wait_for(lambda: src.received_total >= received + 30, what="30 messages decoded")
        assert src.acked_total == acked, "a message was acked before its commit"
        assert (await box.stats()).rows == rows
        await wait_for(lambda: _commit(box) and src.acked_total >= acked + 30, what="the acks after the commit")
        assert (await box.stats()).rows == rows + 30


async def test_a_full_window_commits_at_once(mosquitto_broker: Broker, tmp_path: Path) -> None:
    t0 = int(time.time())
    n = RECEIVE_MAXIMUM * 3      # the broker sends at most RECEIVE_MAXIMUM unacked at a time
    async with (source_on_outbox(mosquitto_broker, tmp_path, "win") as (src, box),
                MqttPublisher("generic", mosquitto_broker.url, (), client_id="win-pub") as pub):
        await _live(src, box, pub, "win", t0)
        acked, rows = src.acked_total, (await box.stats()).rows
        await pub.publish(_msgs("win", t0, n))
        # Nobody calls commit_soon here: the source asks for the commits itself, long before the
        # minute of linger (the deadline is generous for a busy machine, and far below it). Only the
        # tail of the burst, less than a window, waits for the interval as usual.
        await wait_for(lambda: src.acked_total >= acked + n - RECEIVE_MAXIMUM, timeout=30,
                       what="the messages beyond the window acked")
        # The tail: asked for again while it arrives (a message still on its way when asked would
        # wait out the minute).
        await wait_for(lambda: _commit(box) and src.acked_total >= acked + n, what="the tail acked after its commit")
        assert (await box.stats()).rows == rows + n


async def test_a_stop_acks_what_it_commits_so_the_broker_redelivers_nothing(
        mosquitto_broker: Broker, tmp_path: Path) -> None:
    # Messages received, their commit lingering, then a stop (SIGTERM, a reload): the stop commits
    # them, and must ack them too, or the broker hands them to the next run, where a reading stamped
    # with its receive time (Tasmota, Victron, Shelly, ...) would land a second time.
    t0 = int(time.time())
    name = "stp"
    async with MqttPublisher("generic", mosquitto_broker.url, (), client_id="stp-pub") as pub:
        async with source_on_outbox(mosquitto_broker, tmp_path, name) as (src, box):
            await _live(src, box, pub, name, t0)
            received, acked, rows = src.received_total, src.acked_total, (await box.stats()).rows
            await pub.publish(_msgs(name, t0, 5))
            await wait_for(lambda: src.received_total >= received + 5, what="5 messages decoded")
            assert src.acked_total == acked and (await box.stats()).rows == rows   # lingering
        # source_on_outbox cancelled the source: the stop committed the 5 and acked them.
        assert src.acked_total == acked + 5
        # The next run, same client id and session: the broker holds nothing for it. A marker
        # published now comes after anything it would redeliver (QoS 1 keeps the order).
        async with source_on_outbox(mosquitto_broker, tmp_path / "next", name) as (again, _):
            await pub.publish(_msgs(name, t0, 1, start=100))
            await wait_for(lambda: again.received_total >= 1, what="the marker")
            assert again.received_total == 1, "the broker redelivered messages the stop had committed"


async def test_a_message_redelivered_after_a_dropped_connection_keeps_its_reading(
        mosquitto_broker: Broker, tmp_path: Path) -> None:
    # Readings stamped with their receive time (no time_path: Tasmota, Victron, Shelly do the same).
    # The link drops while their commit lingers: the broker redelivers the unacked messages (DUP set)
    # on the next connection. They must decode to the same readings, not to three more.
    t0 = int(time.time())
    name = "dup"
    async with (TcpRelay(mosquitto_broker.port) as relay,
                source_on_outbox(mosquitto_broker, tmp_path, name, url=f"mqtt://127.0.0.1:{relay.port}",
                                 time_path="") as (src, box),
                MqttPublisher("generic", mosquitto_broker.url, (), client_id="dup-pub") as pub):
        await _live(src, box, pub, name, t0)
        received, acked, rows = src.received_total, src.acked_total, (await box.stats()).rows
        await pub.publish(_msgs(name, t0, 3))
        await wait_for(lambda: src.received_total >= received + 3, what="3 messages decoded")
        connects = src.connects
        relay.cut()
        await wait_for(lambda: src.connects > connects, timeout=30, what="the source to reconnect")
        await wait_for(lambda: src.received_total >= received + 6, timeout=30, what="the 3 redelivered")
        await wait_for(lambda: _commit(box) and src.acked_total >= acked + 3, what="the redeliveries acked")
        assert (await box.stats()).rows == rows + 3
