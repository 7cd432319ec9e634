"""``scan mqtt``: listen to a broker for a while and say which devices publish there, and how to read them.

The scan subscribes to ``#`` (which by the MQTT rules never matches ``$SYS/...``) with QoS 0 on a clean
session under its own client id, and never publishes: it sends no command and no Victron keepalive (a GX
publishes only while some client sends ``R/<portal>/keepalive``; without one its topics do not show).

Each topic is given to the profile whose ``recognises`` knows its shape (the families' shapes are disjoint:
the corpus checks it); the profile's decoder turns that profile's messages into readings, so a device is
listed with a sample reading exactly as the agent would store it. ``Survey`` is the pure part (messages in,
findings out); ``scan_mqtt`` feeds it from the broker.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.client import topic_matches_sub
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import MqttConfig
from agent.errors import ConfigError, PayloadError
from agent.records import Reading
from agent.scan.progress import Progress
from agent.scan.results import MqttDevice, MqttFeedFound, MqttScan
from agent.sources.mqtt import parse_url
from agent.sources.profiles import (
    PROFILES,
    STALE,
    Decoder,
    is_discovery_topic,
    is_write_topic,
    opendtu,
    shelly,
)

DEFAULT_SECONDS: Final = 30.0
SHOWN_UNRECOGNISED: Final = 20           # distinct unrecognised topics kept for the report
_FLUSH_MS: Final = 60_000                # the final tick: every quiet cycle is emitted


@dataclass(slots=True)
class _Family:
    """One profile (one Victron portal) seen on the broker: its decoder and what it made of the traffic."""

    profile: str
    feed: str
    decoder: Decoder
    portal_id: str = ""
    topics: set[str] = field(default_factory=set)
    messages: int = 0
    latest: dict[str, Reading] = field(default_factory=dict)     # device id -> latest reading
    trouble: dict[str, str] = field(default_factory=dict)        # device -> why it gave nothing


class Survey:
    """Messages in (``add``), findings out (``finish``). Pure: no I/O, no clock of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.messages = 0
        self.skipped = 0                  # commands and discovery documents: not device data
        self.unrecognised: dict[str, int] = {}
        self.unrecognised_total = 0
        self._families: dict[str, _Family] = {}

    @property
    def families(self) -> int:
        """Profiles (Victron: portals) seen so far."""
        return len(self._families)

    def add(self, topic: str, payload: bytes, now_ms: int) -> None:
        self.messages += 1
        if is_write_topic(topic) or is_discovery_topic(topic):
            self.skipped += 1
            return
        profile = next((name for name, p in PROFILES.items() if name != "generic" and p.recognises(topic)), None)
        if profile is None:
            self.unrecognised_total += 1
            if topic in self.unrecognised or len(self.unrecognised) < SHOWN_UNRECOGNISED:
                self.unrecognised[topic] = self.unrecognised.get(topic, 0) + 1
            return
        fam = self._family(profile, topic)
        fam.messages += 1
        fam.topics.add(topic)
        try:
            readings = fam.decoder.feed(topic, payload, now_ms)
        except PayloadError as exc:
            fam.trouble.setdefault(_device_of(fam, topic), f"payload the profile cannot decode: {exc.message}")
            self._keep(fam, fam.decoder.salvage())          # readings it completed before the bad part
            fam.decoder.release()
            return
        if fam.decoder.outcome == STALE:
            fam.trouble.setdefault(_device_of(fam, topic), "only old retained values: is it producing?")
        fam.decoder.release()
        self._keep(fam, readings)

    def finish(self, now_ms: int) -> tuple[list[MqttFeedFound], list[MqttDevice]]:
        """Flush every open cycle; the feeds to configure and the devices with their sample readings."""
        feeds: list[MqttFeedFound] = []
        devices: list[MqttDevice] = []
        for fam in self._families.values():
            self._keep(fam, fam.decoder.tick(now_ms + _FLUSH_MS))
            fam.decoder.release()
            feeds.append(MqttFeedFound(fam.profile, fam.feed, suggest_topics(fam.profile, fam.topics, fam.portal_id),
                                       fam.portal_id, fam.messages))
            for dev, r in sorted(fam.latest.items()):
                devices.append(MqttDevice(fam.profile, dev, dict(r.metrics), r.time_ms))
            for dev, why in sorted(fam.trouble.items()):
                if not any(d == dev or d.startswith(dev + "/") for d in fam.latest):
                    devices.append(MqttDevice(fam.profile, dev, {}, None, why))
        return feeds, devices

    def _family(self, profile: str, topic: str) -> _Family:
        portal = topic.split("/")[1] if profile == "victron" else ""
        key = f"{profile}:{portal}"
        fam = self._families.get(key)
        if fam is None:
            # A config name allows [A-Za-z0-9_-] only; a portal id is 12 hex digits, but any topic level may come.
            feed = profile if not portal else re.sub(r"[^A-Za-z0-9_-]", "_", f"victron_{portal}")[:60]
            taken, base, n = {f.feed for f in self._families.values()}, feed, 1
            while feed in taken:
                n += 1
                feed = f"{base}_{n}"
            cfg = MqttConfig(name=feed, url=self.url, profile=profile, portal_id=portal)  # type: ignore[arg-type]
            fam = self._families[key] = _Family(profile, feed, PROFILES[profile].new_decoder(cfg), portal)
        return fam

    @staticmethod
    def _keep(fam: _Family, readings: Sequence[Reading]) -> None:
        for r in readings:
            fam.latest[r.device_id] = r


def _device_of(fam: _Family, topic: str) -> str:
    try:
        return fam.decoder.device_of(topic)
    except Exception:  # best effort, for a label only
        return topic


def suggest_topics(profile: str, topics: set[str], portal_id: str = "") -> tuple[str, ...]:
    """``()`` when the profile's default subscriptions catch every topic seen, else the filters that do."""
    cfg = MqttConfig(name="scan", url="mqtt://scan", profile=profile, portal_id=portal_id)  # type: ignore[arg-type]
    defaults = PROFILES[profile].default_topics(cfg)
    missed = sorted(t for t in topics if not any(topic_matches_sub(f, t) for f in defaults))
    if not missed:
        return ()
    extra: list[str] = []
    for topic in missed:
        flt = _filter_for(profile, topic)
        if flt not in extra and not any(topic_matches_sub(f, topic) for f in extra):
            extra.append(flt)
    # Wanted defaults only: a filter the seen topics never matched would subscribe to nothing of use.
    used = [f for f in defaults if any(topic_matches_sub(f, t) for t in topics)]
    return tuple(dict.fromkeys([*used, *extra]))


def _filter_for(profile: str, topic: str) -> str:
    """A filter that catches ``topic`` and its device's other topics."""
    if profile == "opendtu":
        base = opendtu.base_of(topic)
        return topic if base is None else f"{base}#"
    if profile == "shelly":
        split = shelly.split_topic(topic)
        if split is not None:
            return f"{split[0]}/#"
    return topic


async def scan_mqtt(url: str, seconds: float, progress: Progress, *, username: str = "",
                    password_file: Path | None = None, ca_file: Path | None = None) -> MqttScan:
    result = MqttScan(url, seconds, username=username, password_file=str(password_file or ""),
                      ca_file=str(ca_file or ""))
    try:
        host, port, tls = parse_url(url, "--url")
    except ConfigError as exc:
        result.error, result.hint = exc.message, "e.g. --url mqtt://192.168.1.20:1883"
        return result
    survey = Survey(url)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, bytes] | str] = asyncio.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"solar-agent-scan-{os.getpid()}",
                         protocol=paho.MQTTv311, clean_session=True)

    def on_connect(cl: paho.Client, ud: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            loop.call_soon_threadsafe(queue.put_nowait, f"refused: {rc}")
            return
        cl.subscribe("#", qos=0)
        loop.call_soon_threadsafe(queue.put_nowait, "connected")

    def on_message(cl: paho.Client, ud: Any, msg: paho.MQTTMessage) -> None:
        topic = msg._topic.decode("utf-8", "replace") if isinstance(msg._topic, bytes) else str(msg._topic)
        loop.call_soon_threadsafe(queue.put_nowait, (topic, bytes(msg.payload)))

    client.on_connect = on_connect
    client.on_message = on_message
    try:
        await asyncio.to_thread(_prepare, client, username, password_file, ca_file if tls else None, tls)
        await asyncio.to_thread(client.connect, host, port, 30)
    except (OSError, ssl.SSLError, ValueError) as exc:
        result.error = f"cannot connect to {url}: {exc}"
        result.hint = "is the broker up and reachable? mqtt:// is port 1883, mqtts:// 8883 (with --ca-file)"
        return result
    client.loop_start()
    try:
        first = await asyncio.wait_for(queue.get(), 10)
        if first != "connected":
            result.error = f"{url} {first}" if isinstance(first, str) else f"{url}: unexpected message"
            result.hint = "check --username and --password-file, and the broker's ACL (it must allow '#')"
            return result
        progress.note(f"listening to {url} for {seconds:g}s (subscribed to '#'; nothing is published)")
        deadline = loop.time() + seconds
        while (left := deadline - loop.time()) > 0:
            try:
                item = await asyncio.wait_for(queue.get(), min(left, 0.5))
            except TimeoutError:
                item = None
            if isinstance(item, tuple):
                survey.add(item[0], item[1], time.time_ns() // 1_000_000)
            progress.status(f"{survey.messages} messages, {survey.families} device families, "
                            f"{survey.unrecognised_total} unrecognised; {max(0.0, left):.0f}s left")
    except TimeoutError:
        result.error = f"{url}: no answer to CONNECT within 10s"
        result.hint = "is it an MQTT port? mqtts:// needs TLS and mqtt:// plain"
        return result
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
    result.feeds, result.devices = survey.finish(time.time_ns() // 1_000_000)
    result.messages = survey.messages
    result.unrecognised = dict(sorted(survey.unrecognised.items()))
    result.unrecognised_total = survey.unrecognised_total
    result.elapsed_s = round(progress.elapsed(), 1)
    progress.done()
    return result


def _prepare(client: paho.Client, username: str, password_file: Path | None, ca_file: Path | None,
             tls: bool) -> None:
    """Credentials and TLS (reads files: runs in a thread)."""
    if username:
        password = password_file.read_text(encoding="utf-8").strip() if password_file is not None else None
        client.username_pw_set(username, password)
    if tls:
        client.tls_set(ca_certs=str(ca_file) if ca_file else None, cert_reqs=ssl.CERT_REQUIRED)


__all__ = ["DEFAULT_SECONDS", "Survey", "scan_mqtt", "suggest_topics"]
