"""SolarAssistant: ``solar_assistant/<device>/<metric>/state``, plain-text payloads.

``<device>`` is ``inverter_<n>``, ``battery_<n>`` or ``total``; each becomes its own device id.
Values are published on change without a cycle marker, so a device's cycle ends when a metric
repeats or after ``idle_ms`` of quiet. Energy totals (kWh) are left out: the units were not
confirmed against a live unit, and a wrong energy counter is worse than none.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from agent.records import Reading, Value
from agent.sources.profiles._base import BaseDecoder, parse_number

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


class SolarAssistantDecoder(BaseDecoder):
    """Decoder state for one SolarAssistant unit."""

    profile = "solarassistant"

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        parts = topic.split("/")
        if len(parts) != 4 or parts[3] != "state":
            return
        device, metric = parts[1], parts[2]
        value: Value
        if metric in TEXT_METRICS:
            name = TEXT_METRICS[metric]
            value = payload.decode("utf-8", "replace").strip()[:80]
        else:
            table = BATTERY_METRICS if device.startswith("battery_") else METRICS
            if metric not in table:
                return
            name = table[metric]
            value = parse_number(payload, topic)
        self.asm.put(device, device, name, value, now_ms, tag, out)
