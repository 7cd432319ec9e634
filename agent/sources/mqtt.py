"""MQTT source: subscribes with QoS 1 on a persistent session and PUBACKs after the outbox commit.

paho-mqtt 2.x runs its own network thread (``loop_start``); its callbacks only hand events to the
event loop (``call_soon_threadsafe`` into an ``asyncio.Queue``), and everything else - decoding,
``emit``, acks - happens in ``run`` on the event loop. Messages are decoded one at a time, in
order; their commits are pipelined: each ``emit`` runs as its own task, so the next messages are
decoded while the outbox gathers one group commit (up to ``outbox.commit_interval_ms``), and the
acks go out in receive order as the commits land. When the messages awaiting an ack approach the
broker's window (MQTT 5 receive maximum, or mosquitto's 3.1.1 default), the source asks for the
commit at once (``request_commit``): a broker stops sending at a full window, and a feed must never
be throttled to one window per commit interval.

Durability. The client uses ``manual_ack=True``, a fixed client id and a persistent session
(MQTT 5: clean_start=False + session expiry; 3.1.1: clean_session=False). A message is acked
only after the readings it contributed to were committed by ``await emit(...)``; a message that
cannot become readings (a malformed payload, or one the decoder fails on) is acked only after
``await reject(...)`` recorded it in the outbox, so a broker never redelivers a poison message in
a loop; a message that feeds no reading on purpose (names, status) is acked once counted. If the
process dies in between, the broker still holds the message unacked and redelivers it on the next
connect. A redelivery must give the same readings (same event ids, so the replay upserts): a stop
acks what it commits before it disconnects, and a message redelivered after a dropped connection
(DUP set) is decoded with the receive time it first came with (kept per topic and payload until
acked), for the profiles whose readings carry their receive time. After a crash that memory is
gone: such a message may then land twice, with two receive times.

Containment. Each message is decoded inside its own guard: whatever the decoder raises rejects
that message with a reason and the next one goes on. Every message is counted per outcome
(``reading`` or why not: see ``NO_READING_REASONS``); ``feed_health`` tells status and health
when the broker is down or when messages arrive but none has given a reading for a while.
After a reconnect the decoder's held state is dropped and queued messages of the old connection
are skipped without an ack, because the broker redelivers every unacked message.

Read-only. The only publish is the Victron ``R/<portal>/keepalive``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttConfig
from agent.errors import ConfigError, PayloadError
from agent.records import PAYLOAD_HEAD_BYTES, Reading, RejectedInput
from agent.sources import DeviceHealth, Emit, FeedHealth, Reject
from agent.sources.profiles import IGNORED, MALFORMED, PROFILES, Decoder, victron

log = logging.getLogger(__name__)

SESSION_EXPIRY_SECONDS: Final = 7 * 24 * 3600   # a week-long outage of the agent still gets its queue
RECEIVE_MAXIMUM: Final = 100                     # unacked QoS 1 messages the broker may have in flight
# Receive times of QoS 1 messages not acked yet, kept across reconnects: a message redelivered
# after a dropped connection (DUP set: "MUST be set to 1 ... when it attempts to re-deliver a PUBLISH
# packet", MQTT 3.1.1 section 3.3.1.1, MQTT 5.0 section 3.3.1.1; mosquitto does, tests/sources/
# test_mqtt_linger.py) is decoded with the time it first came, so a reading stamped with its receive
# time keeps its event id and the replay upserts instead of landing twice.
REDELIVERY_MEMORY: Final = 4 * RECEIVE_MAXIMUM
# MQTT 3.1.1 has no receive maximum: the broker's own limit applies. mosquitto's max_inflight_messages
# defaults to 20 (mosquitto.conf(5), "max_inflight_messages"); a broker allowing more only gets
# earlier commits from us.
LEGACY_INFLIGHT_WINDOW: Final = 20
TICK_SECONDS: Final = 1.0
ERROR_LOG_INTERVAL_MS: Final = 60_000            # one malformed-payload line per device per minute
READING = "reading"                              # the outcome of a message that fed a reading
DECODE_ERROR = "decode_error"                    # the decoder failed on the message (a bug of ours)


@dataclass(frozen=True, slots=True)
class _Msg:
    gen: int
    topic: str
    payload: bytes
    qos: int
    mid: int
    dup: bool = False


@dataclass(frozen=True, slots=True)
class _Conn:
    gen: int
    ok: bool
    reason: str
    session_present: bool


@dataclass(frozen=True, slots=True)
class _Down:
    reason: str
    failed_attempt: bool     # True: a connect attempt failed (refused, TLS); False: a live connection dropped


_Event = _Msg | _Conn | _Down


@dataclass(slots=True)
class _Pending:
    """Readings on their way to a commit, and the acks that wait for it (in receive order)."""

    gen: int                                   # the connection the acks belong to
    tags: list[Hashable]
    readings: list[Reading] = field(default_factory=list)
    committed: bool = False
    commit: asyncio.Future[None] | None = None  # the emit, in its own task: a stop does not cancel it


def parse_url(url: str, where: str = "mqtt.url") -> tuple[str, int, bool]:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]`` -> (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("<site config>", where, "must be mqtt://host[:port] or mqtts://host[:port]", value=url)
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError("<site config>", where, "bad port", value=url) from None
    return parts.hostname, port, tls


class MqttSource:
    """One ``[[mqtt]]`` section: one broker connection, one profile decoder."""

    def __init__(self, cfg: MqttConfig, site_id: str, *, protocol: Literal[5, 4] = 5,
                 tick_seconds: float = TICK_SECONDS) -> None:
        """Validate the config (fails fast with ConfigError); nothing connects before ``run``.

        Args:
            protocol: 5 for MQTT 5, 4 for MQTT 3.1.1 (older brokers).
            tick_seconds: how often quiet cycles are flushed.
        """
        self.cfg = cfg
        self.name = f"mqtt:{cfg.name}"
        self.client_id = cfg.client_id or f"solar-agent-{site_id}-{cfg.name}"
        self.host, self.port, self.tls = parse_url(cfg.url, f"mqtt[{cfg.name}].url")
        if cfg.profile not in PROFILES:
            raise ConfigError("<site config>", f"mqtt[{cfg.name}].profile", "unknown profile", value=cfg.profile,
                              hint=f"one of {', '.join(PROFILES)}")
        if cfg.profile == "victron" and not cfg.portal_id:
            raise ConfigError("<site config>", f"mqtt[{cfg.name}].portal_id", "required for the victron profile",
                              hint="the GX only publishes while it receives R/<portal id>/keepalive; "
                                   "find the id under Settings > VRM online portal")
        profile = PROFILES[cfg.profile]
        self.topics = profile.default_topics(cfg)
        self._decoder: Decoder = profile.new_decoder(cfg)
        self.protocol = protocol
        self.tick_seconds = tick_seconds
        self._health: dict[str, DeviceHealth] = {}
        self._outcomes: dict[str, int] = {}
        self._last_message_ms: int | None = None
        self._last_reading_ms: int | None = None
        self._example: tuple[str, str] = ("", "")
        self._last_unusable_ms: int | None = None
        self._ever_connected = False
        self._last_log_ms: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}
        self._thread_gen = 0          # written by the paho thread only
        self._gen = 0                 # the connection whose messages we process
        self._subscribed = False
        self.connected = False
        # counters for status and tests
        self.connects = 0
        self.connect_failures = 0
        self.last_connect_error = ""
        self.malformed_total = 0
        self.acked_total = 0
        self.received_total = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        # (topic, payload digest) -> first receive ms of an unacked QoS 1 message; ack tag -> its entry.
        self._first_seen: collections.OrderedDict[tuple[str, bytes], int] = collections.OrderedDict()
        self._seen_by_tag: dict[Hashable, tuple[tuple[str, bytes], int]] = {}
        self._unacked = 0             # QoS 1 messages of this connection received and not acked yet
        self._window = RECEIVE_MAXIMUM if protocol == 5 else LEGACY_INFLIGHT_WINDOW
        self._landed = asyncio.Event()    # set whenever a commit landed and its acks went out
        # Set by the agent (SupportsCommitRequest): commit the waiting appends now.
        self.request_commit: Callable[[], None] | None = None
        # Called with (source, outcome) for every message: the agent's metrics counter.
        self.on_outcome: Callable[[str, str], None] | None = None

    # -- Source protocol ----------------------------------------------------------------------
    def health(self) -> Sequence[DeviceHealth]:
        return list(self._health.values())

    def feed_health(self) -> FeedHealth:
        return FeedHealth(self.name, self.cfg.url, self.connected, self._ever_connected, self.last_connect_error,
                          self.received_total, dict(self._outcomes), self._last_message_ms, self._last_reading_ms,
                          *self._example, last_unusable_ms=self._last_unusable_ms)

    async def run(self, emit: Emit, reject: Reject | None = None) -> None:
        """Connect, subscribe, decode, commit, ack - until cancelled. Broker outages never end it.

        Args:
            emit: commits readings (the ack of the messages behind them follows).
            reject: records a poison message durably (its ack follows). None: count and ack only.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Event] = asyncio.Queue()
        client = await asyncio.to_thread(self._make_client, loop, queue)
        client.loop_start()
        try:
            async with asyncio.TaskGroup() as tg:
                if self.cfg.profile == "victron":
                    tg.create_task(self._keepalive(client), name=f"agent[{self.name}].keepalive")
                await self._consume(queue, client, emit, reject, tg)
        finally:
            try:
                await self._finish_commits(client)
            finally:
                self.connected = False
                client.disconnect()
                await _stop_loop(client, self.name)

    async def _finish_commits(self, client: paho.Client) -> None:
        """A stop or reload: the commits already started land (asked for now) and their messages
        are acked before the disconnect. Unacked, the broker would redeliver them to the next run,
        and a message whose reading is stamped with its receive time would land as a second reading.
        """
        waiting = [p.commit for p in self._pending if p.commit is not None and not p.commit.done()]
        if waiting:
            if self.request_commit is not None:
                self.request_commit()
            await asyncio.wait(waiting, timeout=STOP_COMMIT_SECONDS)
        for p in self._pending:
            c = p.commit
            if c is not None and c.done() and not c.cancelled() and c.exception() is None:
                p.committed = True
        if self.connected:
            self._settle(client)

    # -- client setup (runs in a thread: reads the password and CA files) ---------------------
    def _make_client(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[_Event]) -> paho.Client:
        v5 = self.protocol == 5
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False, manual_ack=True,
        )
        client.max_inflight_messages_set(RECEIVE_MAXIMUM)      # must precede connect in paho 2.x
        # Jitter the floor so a fleet of gateways does not reconnect in lockstep after a broker restart.
        client.reconnect_delay_set(min_delay=1 + random.randint(0, 2), max_delay=60 + random.randint(0, 30))
        if self.cfg.username:
            password = None
            if self.cfg.password_file is not None:
                password = _read_secret(self.cfg.password_file, f"mqtt[{self.cfg.name}].password_file")
            client.username_pw_set(self.cfg.username, password)
        if self.tls:
            try:
                # Verification and hostname checks stay on; there is deliberately no insecure switch.
                client.tls_set(ca_certs=str(self.cfg.ca_file) if self.cfg.ca_file else None,
                               cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("<site config>", f"mqtt[{self.cfg.name}].ca_file", f"cannot load: {exc}",
                                  value=str(self.cfg.ca_file), hint="a PEM file with the broker's CA") from exc

        def post(item: _Event) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def on_connect(cl: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
            self._thread_gen += 1
            post(_Conn(self._thread_gen, not rc.is_failure, str(rc), bool(flags.session_present)))

        def on_connect_fail(cl: paho.Client, ud: Any) -> None:
            post(_Down("connection attempt failed (refused, unreachable or TLS verification)", True))

        def on_disconnect(cl: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
            post(_Down(str(rc), False))

        def on_message(cl: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
            # On paho's thread: an exception here would end its network loop, so decode the topic
            # ourselves (msg.topic raises on bytes that are not UTF-8) and never raise.
            topic = msg._topic.decode("utf-8", "replace") if isinstance(msg._topic, bytes) else str(msg._topic)
            post(_Msg(self._thread_gen, topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.dup)))

        client.on_connect = on_connect
        client.on_connect_fail = on_connect_fail
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_SECONDS
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_seconds,
                             clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        return client

    # -- the event loop side --------------------------------------------------------------------
    async def _consume(self, queue: asyncio.Queue[_Event], client: paho.Client, emit: Emit,
                       reject: Reject | None, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self.tick_seconds
        while True:
            try:
                item: _Event | None = await asyncio.wait_for(queue.get(), max(0.0, next_tick - loop.time()))
            except TimeoutError:
                item = None
            if isinstance(item, _Msg):
                await self._message(item, client, emit, reject, tg)
            elif isinstance(item, _Conn):
                self._connected(item, client)
            elif isinstance(item, _Down):
                self._down(item)
            if loop.time() >= next_tick:
                next_tick = loop.time() + self.tick_seconds
                await self._commit(self._tick(), client, emit, tg)

    def _tick(self) -> list[Reading]:
        now = _now_ms()
        try:
            return self._decoder.tick(now)
        except Exception as exc:  # a decoder bug must not end the feed; the held cycles flush next time
            self._log_error("tick", f"decoder tick failed: {type(exc).__name__}: {exc}", now, "")
            log.debug("decoder tick traceback source=%s", self.name, exc_info=exc)
            return []

    def _connected(self, ev: _Conn, client: paho.Client) -> None:
        if not ev.ok:
            self.connect_failures += 1
            self.last_connect_error = ev.reason
            log.error("mqtt connect refused source=%s url=%s reason=%s hint=%s", self.name, self.cfg.url,
                      ev.reason, "check username, password_file and the broker's ACL for this client id")
            return
        self._gen = ev.gen
        self._decoder.reset()                    # the broker redelivers whatever we held unacked
        self._seen_by_tag.clear()                # packet ids start again; _first_seen stays for the redeliveries
        self._unacked = 0                        # ... and whatever is still on its way to a commit
        self.connected = True
        self._ever_connected = True
        self.connects += 1
        log.info("mqtt connected source=%s url=%s client_id=%s session_present=%s", self.name, self.cfg.url,
                 self.client_id, ev.session_present)
        if self.protocol == 5:
            # Always (the config's topics may have changed since the session was made), but a
            # subscription the kept session already holds must not replay the retained values: a replay
            # in the middle of a live round closed it early and filed every later round one round late
            # (found by the system test). MQTT 5 says so per subscription (Retain Handling 1).
            opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
            client.subscribe([(t, opts) for t in self.topics])
        elif not ev.session_present:
            # MQTT 3.1.1 has no such option: a kept session keeps its subscriptions, so subscribe only
            # into a new one (a topics change on a 3.1.1 broker needs the session to expire or a new client_id).
            client.subscribe([(t, 1) for t in self.topics])
        self._subscribed = True
        if self.cfg.profile == "victron":
            # After the SUBSCRIBE on the same connection, so the full republish reaches us.
            client.publish(victron.keepalive_topic(self.cfg.portal_id), victron.FIRST_KEEPALIVE, qos=0)

    def _down(self, ev: _Down) -> None:
        if ev.failed_attempt:
            self.connect_failures += 1
            self.last_connect_error = ev.reason
            log.warning("mqtt connect failed source=%s url=%s reason=%s hint=%s", self.name, self.cfg.url,
                        ev.reason, "is the broker up and reachable; for mqtts:// is ca_file the broker's CA")
        elif self.connected:
            log.warning("mqtt disconnected source=%s url=%s reason=%s (paho reconnects with backoff)",
                        self.name, self.cfg.url, ev.reason)
        self.connected = False

    async def _message(self, msg: _Msg, client: paho.Client, emit: Emit, reject: Reject | None,
                       tg: asyncio.TaskGroup) -> None:
        if msg.gen != self._gen:
            return          # from a connection that is gone: unacked, so the broker redelivers it
        self.received_total += 1
        if msg.qos > 0:
            self._unacked += 1
        tag: Hashable | None = (msg.mid, msg.qos) if msg.qos > 0 else None
        now = _now_ms()
        self._last_message_ms = now
        if tag is not None:
            now = self._receive_time(msg, tag, now)
        rejected: RejectedInput | None = None
        try:
            readings = self._decoder.feed(msg.topic, msg.payload, now, tag)
            outcome = self._decoder.outcome
        except PayloadError as exc:
            self._malformed(msg.topic, exc.message, exc.hint, now)
            readings, outcome = self._decoder.salvage(), MALFORMED
            rejected = self._rejected(msg, MALFORMED, exc.message, now)
        except Exception as exc:  # the decoder failed on this one message: reject it, keep the feed
            detail = f"{type(exc).__name__}: {exc}"[:300]
            self._malformed(msg.topic, f"decoder failed: {detail}", "a bug in the profile: report it with "
                            "`solar-agent outbox rejected` output", now, kind=DECODE_ERROR)
            log.debug("decoder traceback source=%s topic=%.200s", self.name, msg.topic, exc_info=exc)
            readings, outcome = self._decoder.salvage(), DECODE_ERROR
            # The decoder's feed releases (or holds) the tag even when it raises (BaseDecoder.feed).
            rejected = self._rejected(msg, DECODE_ERROR, detail, now)
        if outcome is None:
            outcome = READING
            self._last_reading_ms = now
        elif outcome != IGNORED:
            # Messages that could have been readings and were not. Ignored ones (names, status, a DTU
            # at night) say nothing is wrong: they must not make a sleeping site look misconfigured.
            self._example = (msg.topic[:200], outcome)
            self._last_unusable_ms = now
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        if self.on_outcome is not None:
            self.on_outcome(self.name, outcome)
        if rejected is not None and reject is not None:
            await reject(rejected)      # durable before the ack below
        await self._commit(readings, client, emit, tg)

    def _receive_time(self, msg: _Msg, tag: Hashable, now_ms: int) -> int:
        """When this QoS 1 message first came: now, unless it is a redelivery of one we have not acked."""
        key = (msg.topic, hashlib.blake2b(msg.payload, digest_size=16).digest())
        first = self._first_seen.get(key) if msg.dup else None
        t = now_ms if first is None else first
        self._first_seen[key] = t
        self._first_seen.move_to_end(key)
        self._seen_by_tag[tag] = (key, t)
        while len(self._first_seen) > REDELIVERY_MEMORY:
            self._first_seen.popitem(last=False)
        return t

    def _forget_receive_time(self, tag: Hashable) -> None:
        """The message is acked: the broker will not redeliver it."""
        entry = self._seen_by_tag.pop(tag, None)
        if entry is not None and self._first_seen.get(entry[0]) == entry[1]:
            del self._first_seen[entry[0]]

    def _rejected(self, msg: _Msg, reason: str, detail: str, now_ms: int) -> RejectedInput:
        return RejectedInput(self.name, msg.topic[:1000], reason, detail, msg.payload[:PAYLOAD_HEAD_BYTES],
                             len(msg.payload), now_ms, redelivered=msg.dup)

    async def _commit(self, readings: list[Reading], client: paho.Client, emit: Emit, tg: asyncio.TaskGroup) -> None:
        """Start committing ``readings``; the messages behind them are acked when it lands (``_settle``)."""
        # Take the tags before anything else: they belong to exactly the readings committed below.
        pending = _Pending(self._gen, self._decoder.release(), readings)
        if not pending.tags and not readings:
            return
        self._pending.append(pending)
        if readings:
            tg.create_task(self._committing(pending, client, emit), name=f"agent[{self.name}].commit")
        else:
            pending.committed = True          # nothing to commit: acked in turn, after the earlier ones
            self._settle(client)
        if self._unacked >= self._window * 3 // 4 and self.request_commit is not None:
            # The broker is about to stop sending until it gets acks: do not let them wait out the
            # commit interval (the last quarter of the window keeps messages coming meanwhile).
            self.request_commit()
        while len(self._pending) > self._window:
            # More commits in flight than the broker can have messages unacked (ticks give readings
            # without messages): wait for the oldest to land instead of piling up tasks.
            if self.request_commit is not None:
                self.request_commit()
            self._landed.clear()
            await self._landed.wait()

    async def _committing(self, pending: _Pending, client: paho.Client, emit: Emit) -> None:
        # An exception (the outbox failed) ends the source through its TaskGroup: nothing is acked.
        # The emit runs in a task of its own, shielded: a stop cancels this waiter, not the commit,
        # so the stop can still ack what it commits (_finish_commits).
        pending.commit = asyncio.ensure_future(emit(pending.readings))
        await asyncio.shield(pending.commit)
        pending.committed = True
        self._settle(client)

    def _settle(self, client: paho.Client) -> None:
        """Ack the messages behind every commit that has landed, oldest first, up to the first that has not."""
        while self._pending and self._pending[0].committed:
            done = self._pending.popleft()
            self._landed.set()
            for r in done.readings:
                h = self._device(r.device_id)
                h.readings_total += 1
                h.last_reading_ms = r.time_ms
                h.consecutive_failures = 0
                h.state = "ok"
            if done.gen != self._gen:
                continue        # its connection is gone: the broker redelivers those messages
            for tag in done.tags:
                mid, qos = _ack_key(tag)
                client.ack(mid, qos)
                self._forget_receive_time(tag)
                self.acked_total += 1
                if qos > 0:
                    self._unacked -= 1

    def _malformed(self, topic: str, message: str, hint: str | None, now_ms: int, kind: str = MALFORMED) -> None:
        self.malformed_total += 1
        try:
            device = self._decoder.device_of(topic)[:200]
        except Exception:  # device_of is the decoder's too
            device = topic[:200]
        h = self._device(device)
        h.errors[kind] += 1
        h.consecutive_failures += 1
        h.last_error = message[:300]
        self._log_error(device, message, now_ms, topic,
                        hint or f"check that profile={self.cfg.profile} matches what the device publishes")

    def _log_error(self, key: str, message: str, now_ms: int, topic: str, hint: str = "") -> None:
        """One warning per key per minute; the lines in between are counted in the next one."""
        last = self._last_log_ms.get(key)
        if last is not None and now_ms - last < ERROR_LOG_INTERVAL_MS:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_log_ms[key] = now_ms
        log.warning("rejected input source=%s device=%s topic=%.200s error=%.300s suppressed=%d hint=%s",
                    self.name, key, topic, message, self._suppressed.pop(key, 0),
                    hint or "see `solar-agent outbox rejected`")

    def _device(self, device: str) -> DeviceHealth:
        h = self._health.get(device)
        if h is None:
            h = self._health[device] = DeviceHealth(device=device, source=self.name)
        return h

    async def _keepalive(self, client: paho.Client) -> None:
        """Victron: keep the GX publishing (it stops 60 s after the last keepalive)."""
        topic = victron.keepalive_topic(self.cfg.portal_id)
        while True:
            await asyncio.sleep(victron.KEEPALIVE_INTERVAL_SECONDS)
            if self.connected:
                client.publish(topic, victron.NEXT_KEEPALIVE, qos=0)


def _read_secret(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("<site config>", key, f"cannot read: {exc.strerror}", value=str(path),
                          hint="the file must be readable by the agent's user (0600)") from exc


LOOP_STOP_SECONDS: Final = 5.0
# A stop waits this long at most for the commits already started, to ack their messages (a commit
# asked for at once takes milliseconds; the agent's stop re-cancels a source after 0.5 s anyway).
STOP_COMMIT_SECONDS: Final = 2.0


async def _stop_loop(client: paho.Client, name: str) -> None:
    """Join paho's network thread, but at most LOOP_STOP_SECONDS.

    That thread may hang in a connect to a broker that never answers; a stop or a restart must not
    wait for it. The joining thread is a daemon (not the default executor, which the interpreter
    waits for at exit), so an abandoned join ends with the process.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def join() -> None:
        client.loop_stop()
        with contextlib.suppress(RuntimeError):     # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(finished)

    threading.Thread(target=join, name=f"{name}.loop_stop", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), LOOP_STOP_SECONDS)
    except TimeoutError:
        log.warning("mqtt network thread did not stop within %.0fs source=%s; abandoned", LOOP_STOP_SECONDS, name)


def _ack_key(tag: Hashable) -> tuple[int, int]:
    """The ``(mid, qos)`` that ``_message`` put into a decoder tag."""
    match tag:
        case (int() as mid, int() as qos):
            return mid, qos
    raise TypeError(f"not an MQTT ack tag: {tag!r}")    # a bug: only _message makes tags


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = ["MqttSource", "parse_url"]
