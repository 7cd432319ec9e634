"""MQTT device simulators: publish what OpenDTU, a Victron GX, SolarAssistant, Tasmota, Shelly and
a generic JSON logger put on a broker, with values from a deterministic PV curve.

An independent test peer: it shares nothing with ``agent.sources`` (a peer that reuses the code it
tests agrees with its bugs). ``expected`` values are computed here, in schema units, from the same
numbers that were published, so a test can compare what the agent stored with what was sent.

``messages(profile, device, t_s)`` is the pure part; ``MqttPublisher`` puts it on a broker (QoS 1,
OpenDTU retained like the firmware default).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

PROFILES: Final = ("opendtu", "victron", "solarassistant", "tasmota", "shelly", "generic")
PORTAL_ID: Final = "c0619ab1e2f3"


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


def pv_power(t_s: float, peak_w: float, seed: int = 0) -> float:
    """A clear-sky-ish day curve (06:00-18:00 UTC) with a small deterministic ripple."""
    hour = (t_s % 86400) / 3600.0
    sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
    ripple = 1.0 + 0.03 * math.sin(t_s / 37.0 + seed)
    return round(peak_w * sun * ripple, 1)


def _seed(device: str) -> int:
    return sum(device.encode()) % 97


def messages(profile: str, device: str, t_s: int) -> tuple[list[Message], list[Expected]]:
    """One publish cycle of one device at unix second ``t_s`` and the readings it should yield."""
    s = _seed(device)
    p = max(pv_power(t_s, 800.0, s), 12.5)   # never exactly zero: keeps every field present
    v = round(230.0 + (s % 7) * 0.3, 1)
    i = round(p / v, 3)
    f = 50.0 + (s % 3) / 100
    total_kwh = round(1000 + s + (t_s % 100_000) / 1000, 3)
    if profile == "opendtu":
        dc1, dc2 = round(p * 0.52, 1), round(p * 0.5, 1)
        base = f"solar/{device}"
        msgs = [
            (f"{base}/name", f"Inverter {device[-4:]}"), (f"{base}/status/reachable", "1"),
            (f"{base}/status/producing", "1"), (f"{base}/status/last_update", str(t_s)),
            (f"{base}/0/power", f"{p:.1f}"), (f"{base}/0/voltage", f"{v:.1f}"), (f"{base}/0/current", f"{i:.3f}"),
            (f"{base}/0/frequency", f"{f:.2f}"), (f"{base}/0/powerdc", f"{dc1 + dc2:.1f}"),
            (f"{base}/0/temperature", "38.5"), (f"{base}/0/yieldday", "1850"),
            (f"{base}/0/yieldtotal", f"{total_kwh:.3f}"), (f"{base}/0/powerfactor", "0.998"),
            (f"{base}/1/power", f"{dc1:.1f}"), (f"{base}/1/voltage", "33.1"), (f"{base}/1/current", "6.49"),
            (f"{base}/2/power", f"{dc2:.1f}"), (f"{base}/2/voltage", "32.8"), (f"{base}/2/current", "6.1"),
        ]
        exp = [
            Expected(device, t_s * 1000, {
                "ac_power_w": p, "ac_voltage_v": v, "ac_current_a": i, "ac_frequency_hz": round(f, 2),
                "dc_power_w": round(dc1 + dc2, 1), "temperature_c": 38.5, "ac_energy_today_wh": 1850.0,
                "ac_energy_wh": round(total_kwh * 1000, 3), "power_factor_pct": 99.8}),
            Expected(f"{device}/pv1", t_s * 1000, {"dc_power_w": dc1, "dc_voltage_v": 33.1, "dc_current_a": 6.49}),
            Expected(f"{device}/pv2", t_s * 1000, {"dc_power_w": dc2, "dc_voltage_v": 32.8, "dc_current_a": 6.1}),
        ]
        return [Message(t, pl.encode(), retain=True) for t, pl in msgs], exp
    if profile == "victron":
        base = f"N/{PORTAL_ID}/pvinverter/{device}"
        vals = {"Ac/Power": p, "Ac/L1/Voltage": v, "Ac/L1/Current": i, "Ac/Energy/Forward": total_kwh}
        msgs2 = [Message(f"{base}/{k}", json.dumps({"value": x}).encode()) for k, x in vals.items()]
        msgs2.append(Message(f"{base}/ProductId", b'{"value": 41284}'))
        return msgs2, [Expected(f"{PORTAL_ID}/pvinverter/{device}", None, {
            "ac_power_w": p, "ac_voltage_v": v, "ac_current_a": i, "ac_energy_wh": round(total_kwh * 1000, 3)})]
    if profile == "solarassistant":
        base = f"solar_assistant/{device}"
        load = round(300 + s * 3.0, 1)
        grid = round(load - p, 1)
        msgs = [(f"{base}/pv_power/state", f"{p}"), (f"{base}/load_power/state", f"{load}"),
                (f"{base}/grid_power/state", f"{grid}"), (f"{base}/grid_voltage/state", f"{v}"),
                (f"{base}/device_mode/state", "Solar/Battery"), (f"{base}/temperature/state", "41.0")]
        return [Message(t, pl.encode()) for t, pl in msgs], [Expected(device, None, {
            "dc_power_w": p, "load_power_w": load, "grid_power_w": grid, "ac_voltage_v": v,
            "operating_state": "Solar/Battery", "temperature_c": 41.0})]
    if profile == "tasmota":
        doc = {"Time": "2024-06-01T12:00:00", "ENERGY": {
            "TotalStartTime": "2022-03-20T15:20:48", "Total": total_kwh, "Yesterday": 1.495, "Today": 0.537,
            "Power": p, "ApparentPower": round(p * 1.1, 1), "ReactivePower": 73, "Factor": 0.91,
            "Voltage": v, "Current": i}}
        return [Message(f"tele/{device}/SENSOR", json.dumps(doc).encode())], [Expected(device, None, {
            "ac_energy_wh": round(total_kwh * 1000, 3), "ac_energy_today_wh": 537.0, "ac_power_w": p,
            "ac_apparent_power_va": round(p * 1.1, 1), "ac_reactive_power_var": 73.0, "power_factor_pct": 91.0,
            "ac_voltage_v": v, "ac_current_a": i})]
    if profile == "shelly":
        frame = {"src": device, "dst": f"{device}/events", "method": "NotifyStatus", "params": {
            "ts": t_s + 0.25, "em:0": {"id": 0, "total_act_power": -p, "total_current": i, "a_voltage": v,
                                      "a_pf": -0.97, "a_freq": 50.0}}}
        return [Message(f"{device}/events/rpc", json.dumps(frame).encode())], [Expected(device, t_s * 1000 + 250, {
            "ac_power_w": -p, "ac_current_a": i, "ac_voltage_v": v, "power_factor_pct": -97.0,
            "ac_frequency_hz": 50.0})]
    if profile == "generic":
        doc2 = {"ts": t_s, "dev": device, "W": p, "WH": round(total_kwh * 1000, 1), "V": v}
        return [Message(f"site/{device}/telemetry", json.dumps(doc2).encode())], [Expected(device, t_s * 1000, {
            "ac_power_w": p, "ac_energy_wh": round(total_kwh * 1000, 1), "ac_voltage_v": v})]
    raise ValueError(f"unknown profile {profile!r}; one of {', '.join(PROFILES)}")


# Config a generic-profile source needs to read what ``messages("generic", ...)`` publishes.
GENERIC_FIELDS: Final = (("ac_power_w", "W"), ("ac_energy_wh", "WH"), ("ac_voltage_v", "V"))


@dataclass
class MqttPublisher:
    """Publishes one profile's devices to a broker every ``interval_seconds`` (QoS 1)."""

    profile: str
    url: str
    devices: tuple[str, ...]
    interval_seconds: float = 5.0
    client_id: str = ""
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
                info.wait_for_publish(10)

        await asyncio.to_thread(wait_all)
        self.messages_sent += msgs

    async def publish_cycle(self, t_s: int) -> list[Expected]:
        """One cycle of every device at unix second ``t_s``; returns (and records) what to expect."""
        out: list[Message] = []
        exp: list[Expected] = []
        for dev in self.devices:
            m, e = messages(self.profile, dev, t_s)
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
