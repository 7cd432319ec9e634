"""SolarAssistant: ``solar_assistant/<device>/<metric>/state``, plain-text payloads.

``<device>`` is ``inverter_<n>``, ``battery_<n>`` or ``total``; each becomes its own device id,
``<feed name>/<device>``: every SolarAssistant unit calls its first inverter ``inverter_1``, so two units
on one site (on two brokers, two feeds) would otherwise be one device. Values are published on change
without a cycle marker, so a device's cycle ends when a metric repeats or after ``idle_ms`` of quiet.
Energy totals (kWh) are left out: the documents are silent on their units, and a wrong energy counter
is worse than none.

Outcomes. ``ignored``: a metric without a schema field (``battery_current``, the energy totals,
``set/response_message``, ...) and the Home Assistant discovery documents SolarAssistant publishes under
``homeassistant/``. Anything else is ``unrecognised_topic``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from agent.records import Reading, Value
from agent.sources.profiles._base import DEFAULT_IDLE_MS, IGNORED, BaseDecoder, parse_number

# metric -> schema field, for any device kind
METRICS: Final[dict[str, str]] = {
    "pv_power": "dc_power_w",
    "load_power": "load_power_w",
    "grid_power": "grid_power_w",
    "grid_voltage": "ac_voltage_v",
    "grid_frequency": "ac_frequency_hz",
    "battery_voltage": "battery_voltage_v",
    "battery_power": "battery_power_w",
    "battery_state_of_charge": "battery_soc_pct",
    "temperature": "temperature_c",
}
# battery_<n> devices name their metrics without the battery_ prefix
BATTERY_METRICS: Final[dict[str, str]] = {
    "voltage": "battery_voltage_v",
    "power": "battery_power_w",
    "state_of_charge": "battery_soc_pct",
    "temperature": "temperature_c",
}
TEXT_METRICS: Final[dict[str, str]] = {"device_mode": "operating_state"}


def default_topics(prefix: str = "solar_assistant") -> list[str]:
    return [f"{prefix}/+/+/state"]


def recognises(topic: str) -> bool:
    """True for ``solar_assistant/<device>/<metric>/state``."""
    parts = topic.split("/")
    return len(parts) == 4 and parts[0] == "solar_assistant" and parts[3] == "state"


class SolarAssistantDecoder(BaseDecoder):
    """Decoder state for one SolarAssistant unit, whose devices are named ``<feed>/<device>``."""

    profile = "solarassistant"

    def __init__(self, feed: str, idle_ms: int = DEFAULT_IDLE_MS) -> None:
        super().__init__(idle_ms)
        self.feed_name = feed

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or parts[3] != "state":
            return
        device, metric = f"{self.feed_name}/{parts[1]}", parts[2]
        value: Value
        if metric in TEXT_METRICS:
            name = TEXT_METRICS[metric]
            value = payload.decode("utf-8", "replace").strip()[:80]
        else:
            table = BATTERY_METRICS if parts[1].startswith("battery_") else METRICS
            if metric not in table:
                self.skip(IGNORED)      # no schema field (battery_current, energy totals, ...)
                return
            name = table[metric]
            value = parse_number(payload, topic)
        self.asm.put(device, device, name, value, now_ms, tag, out)

    def device_of(self, topic: str) -> str:
        parts = topic.split("/")
        return f"{self.feed_name}/{parts[1]}" if len(parts) == 4 else topic
