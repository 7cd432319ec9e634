"""MQTT device simulators: publish what OpenDTU, a Victron GX, SolarAssistant, Tasmota, Shelly and a
generic JSON logger put on a broker, replayed from the device corpus (``tests/cases/mqtt``).

Each profile has a template case in the corpus (``SIM_CASES``: one publish round of one device, in the
firmware's order and formatting, derived from its source and checked against the decoders by
``tests/sources/test_profiles.py``). A simulated cycle replays that case with the device's identity
(serial, prefix, topic, instance) replaced by each simulated device and the device's clock fields
(OpenDTU ``status/last_update``, Shelly ``params.ts``, the generic ``ts``) moved to the cycle's time. The
readings to expect are the case's ``expected.jsonl`` with the same substitutions: no second belief.

An independent test peer: it shares nothing with ``agent.sources`` (a peer that reuses the code it
tests agrees with its bugs). ``messages(profile, device, t_s)`` is the pure part; ``MqttPublisher`` puts
it on a broker (QoS 1 so the tests can watch acks; OpenDTU retained like the firmware default).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.simulators.corpus import BASE_MS, MqttCase, mqtt_case

PROFILES: Final = ("opendtu", "victron", "solarassistant", "tasmota", "shelly", "generic")
# The template case replayed for each profile (tests/cases/mqtt/<profile>/<case>/).
SIM_CASES: Final = {"opendtu": "sim_hm800_round", "victron": "sim_pvinverter", "solarassistant": "sim_inverter",
                    "tasmota": "sim_pow_sensor", "shelly": "sim_plug_notify", "generic": "sim_telemetry"}
# Constants of the templates that a subscriber's config must name (checked when a template is loaded).
PORTAL_ID: Final = "c0619ab1e2f3"
GENERIC_FIELDS: Final = (("ac_power_w", "W"), ("ac_energy_wh", "WH"), ("ac_voltage_v", "V"))
_CASE_FEED: Final = "case"              # the feed name the corpus runner uses (SolarAssistant device ids)


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Expected:
    """A reading the agent should produce. ``time_ms`` None: the agent stamps the receive time."""

    device_id: str
    time_ms: int | None
    metrics: dict[str, float | str | None]


@dataclass(frozen=True, slots=True)
class _Template:
    """How to turn a profile's template case into any device's cycle."""

    identity: str                                   # the template device's id in topics and payloads
    level: Callable[[list[str]], int]               # which topic level holds the identity (-1: by value)
    device_clock: bool                              # readings carry the device's time (else receive time)
    retain: bool = False


_TEMPLATES: Final[dict[str, _Template]] = {
    # OpenDTU: <base><serial>/...; the serial is found by value (see _topic), whatever the base's depth.
    "opendtu": _Template("114182912345", lambda lv: -1, True, retain=True),
    "victron": _Template("20", lambda lv: 3, False),
    "solarassistant": _Template("inverter_1", lambda lv: 1, False),
    "tasmota": _Template("tasmota_5A9AE8", lambda lv: 1, False),
    "shelly": _Template("shellyplusplugs-e86beae1a0b8", lambda lv: 0, True),
    "generic": _Template("inv1", lambda lv: 1, True),
}


def _template(profile: str) -> MqttCase:
    if profile not in SIM_CASES:
        raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")
    case = mqtt_case(profile, SIM_CASES[profile])
    if profile == "victron" and not all(f"/{PORTAL_ID}/" in f"/{t}/" for _, t, _ in case.messages):
        raise ValueError(f"victron template {case.name} does not use portal id {PORTAL_ID}")
    if profile == "generic":
        fields = tuple(tuple(f) for f in case.config.get("fields", ()))
        if fields != GENERIC_FIELDS:
            raise ValueError(f"generic template {case.name} maps {fields}, GENERIC_FIELDS says {GENERIC_FIELDS}")
    return case


def _topic(profile: str, topic: str, device: str) -> str:
    tpl = _TEMPLATES[profile]
    if profile == "shelly":
        return topic.replace(tpl.identity, device, 1) if topic.startswith(tpl.identity + "/") else topic
    levels = topic.split("/")
    if profile == "opendtu":
        # OpenDTU: <base><serial>/<...>; the serial level is the one equal to the template's serial.
        return "/".join(device if lv == tpl.identity else lv for lv in levels)
    i = tpl.level(levels)
    if 0 <= i < len(levels) and levels[i] == tpl.identity:
        levels[i] = device
    return "/".join(levels)


def _shift_s(value: float, t_s: int) -> float:
    return round(value - BASE_MS / 1000 + t_s, 3)


def _payload(profile: str, topic: str, payload: bytes, device: str, t_s: int) -> bytes:
    """The template payload with the device's identity and clock moved to this device and cycle."""
    tpl = _TEMPLATES[profile]
    if profile == "opendtu" and topic.endswith("/status/last_update"):
        return str(int(_shift_s(float(payload), t_s))).encode()
    if profile == "victron" and topic.endswith("/full_publish_completed"):
        return json.dumps({"value": t_s}).encode()
    if profile not in ("shelly", "generic", "tasmota"):
        return payload
    doc: Any = json.loads(payload)
    if profile == "shelly":
        doc["src"] = device
        doc["dst"] = f"{device}/events"
        doc["params"]["ts"] = _shift_s(float(doc["params"]["ts"]), t_s)
    elif profile == "generic":
        doc["ts"] = int(_shift_s(float(doc["ts"]), t_s))
        if doc.get("dev") == tpl.identity:
            doc["dev"] = device
    else:   # tasmota: Time is the device's local clock without a zone; the template's is replaced by now
        doc["Time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t_s))
    return json.dumps(doc, separators=(",", ":")).encode()


def _device_id(profile: str, template_id: str, device: str, feed: str) -> str:
    tpl = _TEMPLATES[profile]
    if profile == "victron":
        parts = template_id.split("/")
        parts[2] = device
        return "/".join(parts)
    if profile == "solarassistant":
        _, _, rest = template_id.partition("/")
        return f"{feed}/{rest.replace(tpl.identity, device, 1)}"
    return template_id.replace(tpl.identity, device, 1)


def messages(profile: str, device: str, t_s: int, *, feed: str = _CASE_FEED) -> tuple[list[Message], list[Expected]]:
    """One publish cycle of one device at unix second ``t_s`` and the readings it should yield.

    ``feed``: the subscriber's feed name (SolarAssistant device ids are ``<feed>/<device>``).
    """
    case = _template(profile)
    tpl = _TEMPLATES[profile]
    msgs = [Message(_topic(profile, topic, device), _payload(profile, topic, payload, device, t_s), tpl.retain)
            for _, topic, payload in case.messages]
    exp = [Expected(_device_id(profile, e["device_id"], device, feed),
                    t_s * 1000 + (int(e["time_ms"]) - BASE_MS) if tpl.device_clock else None,
                    dict(e["metrics"]))
           for e in case.expected]
    return msgs, exp


@dataclass
class MqttPublisher:
    """Publishes one profile's devices to a broker every ``interval_seconds`` (QoS 1)."""

    profile: str
    url: str
    devices: tuple[str, ...]
    interval_seconds: float = 5.0
    client_id: str = ""
    feed: str = _CASE_FEED              # the subscriber's feed name, for SolarAssistant device ids
    messages_sent: list[Message] = field(default_factory=list)
    _expected: list[Expected] = field(default_factory=list)
    _client: paho.Client | None = None

    async def __aenter__(self) -> MqttPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ValueError(f"simulator url must be mqtt://host:port, got {self.url!r}")
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id or f"sim-{self.profile}",
                             protocol=paho.MQTTv311)
        connected = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_connect(_client: paho.Client, _userdata: object, _flags: paho.ConnectFlags,
                       _reason: ReasonCode, _props: Properties | None) -> None:
            loop.call_soon_threadsafe(connected.set)    # paho's network thread

        client.on_connect = on_connect
        await asyncio.to_thread(client.connect, parts.hostname, parts.port or 1883, 30)
        client.loop_start()
        await asyncio.wait_for(connected.wait(), 10)
        self._client = client

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)

    async def publish(self, msgs: list[Message]) -> None:
        """Publish raw messages with QoS 1 and wait for every PUBACK."""
        assert self._client is not None, "start() first"
        infos = [self._client.publish(m.topic, m.payload, qos=1, retain=m.retain) for m in msgs]

        def wait_all() -> None:
            for info in infos:
                try:
                    info.wait_for_publish(10)
                except (RuntimeError, ValueError) as exc:   # paho: not connected, queue full
                    raise ConnectionError(f"the broker at {self.url} did not take the message ({exc})") from None
                if not info.is_published():
                    raise ConnectionError(f"the broker at {self.url} did not acknowledge within 10 s")

        await asyncio.to_thread(wait_all)
        self.messages_sent += msgs

    async def publish_cycle(self, t_s: int) -> list[Expected]:
        """One cycle of every device at unix second ``t_s``; returns (and records) what to expect."""
        out: list[Message] = []
        exp: list[Expected] = []
        for dev in self.devices:
            m, e = messages(self.profile, dev, t_s, feed=self.feed)
            out += m
            exp += e
        await self.publish(out)
        self._expected += exp
        return exp

    def expected(self) -> list[Expected]:
        """Everything published so far, as readings in schema units."""
        return list(self._expected)

    async def run(self) -> None:
        """Publish a cycle every interval until cancelled (the demo's device)."""
        while True:
            await self.publish_cycle(int(time.time()))
            await asyncio.sleep(self.interval_seconds)      # a ticker, not a wait for a condition
