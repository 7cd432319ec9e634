"""Tasmota energy monitors: ``tele/<topic>/SENSOR`` (and ``stat/<topic>/STATUS10``) JSON.

How the firmware prints ``ENERGY`` (``xdrv_03_energy.ino``, ``EnergyShow`` / ``EnergyFormat``):

* per-phase values (``Power``, ``ApparentPower``, ``ReactivePower``, ``Factor``, ``Current``, and
  ``Voltage``/``Frequency`` unless common) are one number on a single-phase device and an array of one
  number per phase (or relay channel) otherwise;
* ``Total``, ``Yesterday`` and ``Today`` are the SUM over the phases, one number, unless SetOption129 is
  on: then they are per-phase arrays too.

So a device yields one reading for the device (``<topic>``: its energy, the sum of its phases' power,
and the voltage/frequency when common) and, when it has several phases or channels, one per phase
``<topic>/ch<n>`` (1-based; the firmware does not tell phases of a meter from relay channels) with that
phase's values, its own energy only when printed per phase. A phase never gets the device's total:
that would count the energy once per phase. Total/Today are kWh, stored as Wh.

Topic. FullTopic defaults to ``%prefix%/%topic%/`` and may hold more levels
(``%prefix%/home/garage/%topic%/``): the device id is the topic without its ``tele``/``stat`` level and
without ``SENSOR``/``STATUS10``.

Time. ``Time`` is the device's *local* time without a zone, and the zone is a device setting the agent
cannot see (Timezone, DST rules). Guessing it would shift readings by hours; telemetry is published the
moment it is taken, so the receive time is the better clock and is used instead.

Outcomes. ``ignored``: Tasmota's other ``tele``/``stat`` topics (``LWT``, ``STATE``, ``INFO1..3``, ``RESULT``,
``POWER``, other ``STATUS<n>``: a level of capitals and digits after a ``tele`` or ``stat`` level), its native
discovery ``tasmota/discovery/...``, and a ``SENSOR`` or ``STATUS10`` without ``ENERGY`` (a thermometer).
Anything else is ``unrecognised_topic``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import IGNORED, BaseDecoder, json_number, load_json, scaled

# ENERGY key -> (schema field, factor)
PHASE_KEYS: Final[dict[str, tuple[str, float]]] = {
    "Power": ("ac_power_w", 1.0),
    "ApparentPower": ("ac_apparent_power_va", 1.0),
    "ReactivePower": ("ac_reactive_power_var", 1.0),
    "Factor": ("power_factor_pct", 100.0),
    "Frequency": ("ac_frequency_hz", 1.0),
    "Voltage": ("ac_voltage_v", 1.0),
    "Current": ("ac_current_a", 1.0),
}
# Printed as the sum over the phases unless SetOption129 prints them per phase.
SUM_KEYS: Final[dict[str, tuple[str, float]]] = {
    "Total": ("ac_energy_wh", 1000.0),
    "Today": ("ac_energy_today_wh", 1000.0),
}
# When these are single numbers on a multi-phase device they are common to every phase.
COMMON_KEYS: Final = ("Frequency", "Voltage")
MAX_CHANNELS: Final = 16
_DATA: Final = {"tele": "SENSOR", "stat": "STATUS10"}
# The last level of Tasmota's other tele/stat topics: a command or status name in capitals (LWT, STATE,
# INFO1, RESULT, POWER2, STATUS8). Documented at https://tasmota.github.io/docs/MQTT/.
_OTHER_TAIL: Final = re.compile(r"^[A-Z][A-Z0-9]*$")


def default_topics() -> list[str]:
    """FullTopic with the prefix first and up to three levels for ``%topic%`` and its extra levels."""
    out = []
    for prefix, last in _DATA.items():
        for depth in (1, 2, 3):
            out.append("/".join([prefix, *["+"] * depth, last]))
    return out


def split_topic(topic: str) -> str | None:
    """The device part of a telemetry topic, or None when the topic is not one."""
    parts = topic.split("/")
    if len(parts) < 3:
        return None
    prefix = _prefix_of(parts[-1])
    if prefix is None or prefix not in parts[:-1]:
        return None
    i = parts.index(prefix)
    device = parts[:i] + parts[i + 1:-1]
    return "/".join(device) if device and all(device) else None


def _prefix_of(last: str) -> str | None:
    return next((p for p, tail in _DATA.items() if tail == last), None)


def _other_topic(topic: str) -> bool:
    """Tasmota's topics without energy data: LWT, STATE, RESULT, POWER, STATUS<n>, native discovery."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[:2] == ["tasmota", "discovery"]:
        return True
    return len(parts) >= 3 and bool({"tele", "stat"} & set(parts[:-2])) and bool(_OTHER_TAIL.match(parts[-1]))


def recognises(topic: str) -> bool:
    """True for Tasmota's data topics (SENSOR, STATUS10) and its other tele/stat topics (LWT, STATE, ...)."""
    return split_topic(topic) is not None or _other_topic(topic)


class TasmotaDecoder(BaseDecoder):
    """Stateless apart from tag bookkeeping: one SENSOR message is one complete set of readings."""

    profile = "tasmota"

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        device = split_topic(topic)
        if device is None:
            if _other_topic(topic):
                self.skip(IGNORED)      # LWT, STATE, RESULT, POWER, ...: no energy data
            return
        doc = load_json(payload, topic)
        if isinstance(doc, Mapping) and topic.endswith("/STATUS10"):
            doc = doc.get("StatusSNS")
        if not isinstance(doc, Mapping):
            raise PayloadError(f"topic={topic} payload is not a JSON object")
        energy = doc.get("ENERGY")
        if energy is None:
            self.skip(IGNORED)          # a SENSOR message of a non-energy sensor
            return
        if not isinstance(energy, Mapping):
            raise PayloadError(f"topic={topic} ENERGY is not an object")
        values = {key: self._values(topic, key, energy[key], factor)
                  for key, (_, factor) in (PHASE_KEYS | SUM_KEYS).items() if key in energy}
        channels = max((len(v) for v in values.values() if isinstance(v, list)), default=0)
        out += self._readings(device, values, channels, now_ms)

    @staticmethod
    def _values(topic: str, key: str, raw: object, factor: float) -> float | list[float | None] | None:
        where = f"topic={topic} ENERGY.{key}"
        if isinstance(raw, list):
            if not 1 <= len(raw) <= MAX_CHANNELS:
                raise PayloadError(f"{where}: {len(raw)} channels")
            return [scaled(json_number(v, where), factor) for v in raw]
        return scaled(json_number(raw, where), factor)

    def _readings(self, device: str, values: Mapping[str, float | list[float | None] | None], channels: int,
                  now_ms: int) -> list[Reading]:
        src = self.asm.source
        if channels == 0:               # one phase: every value is the device's
            one: dict[str, Value] = {_field(k): v for k, v in values.items() if not isinstance(v, list)}
            return [Reading(device_id=device, time_ms=now_ms, source=src, metrics=one)]
        total: dict[str, Value] = {}
        for key in (*SUM_KEYS, "Power"):
            if key in values:
                v = values[key]
                total[_field(key)] = _sum(v) if isinstance(v, list) else v
        for key in COMMON_KEYS:
            v = values.get(key)
            if key in values and not isinstance(v, list):
                total[_field(key)] = v
        out = [Reading(device_id=device, time_ms=now_ms, source=src, metrics=total)]
        for ch in range(channels):
            metrics: dict[str, Value] = {}
            for key, v in values.items():
                if isinstance(v, list):
                    if ch < len(v):
                        metrics[_field(key)] = v[ch]
                elif key in COMMON_KEYS:
                    metrics[_field(key)] = v
            out.append(Reading(device_id=f"{device}/ch{ch + 1}", time_ms=now_ms, source=src, metrics=metrics))
        return out


def _field(key: str) -> str:
    return (SUM_KEYS.get(key) or PHASE_KEYS[key])[0]


def _sum(values: list[float | None]) -> float | None:
    """The sum of the phases, None when any phase is unknown (a partial sum would be a wrong total)."""
    if any(v is None for v in values):
        return None
    return scaled(sum(v for v in values if v is not None), 1.0)
