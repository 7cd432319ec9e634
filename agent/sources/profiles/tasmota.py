"""Tasmota energy monitors: ``tele/<topic>/SENSOR`` (and ``stat/<topic>/STATUS10``) JSON.

``ENERGY`` values are scalars, or arrays on multi-channel devices (mixed with scalars, e.g.
``"Power":[52,5],"Voltage":235``): arrays give one reading per channel, ``<topic>/ch<n>``
(1-based), and a scalar applies to every channel. Total/Today are kWh, stored as Wh.

Time. ``Time`` is the device's *local* time without a zone, and the zone is a device setting the
agent cannot see (Timezone, DST rules). Guessing it would shift readings by hours; telemetry is
published the moment it is taken, so the receive time is the better clock and is used instead.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import BaseDecoder, json_number, load_json, scaled

# ENERGY key -> (schema field, factor)
ENERGY: Final[dict[str, tuple[str, float]]] = {
    "Total": ("ac_energy_wh", 1000.0),
    "Today": ("ac_energy_today_wh", 1000.0),
    "Power": ("ac_power_w", 1.0),
    "ApparentPower": ("ac_apparent_power_va", 1.0),
    "ReactivePower": ("ac_reactive_power_var", 1.0),
    "Factor": ("power_factor_pct", 100.0),
    "Voltage": ("ac_voltage_v", 1.0),
    "Current": ("ac_current_a", 1.0),
    "Frequency": ("ac_frequency_hz", 1.0),
}
MAX_CHANNELS: Final = 16


def default_topics() -> list[str]:
    return ["tele/+/SENSOR", "stat/+/STATUS10"]


class TasmotaDecoder(BaseDecoder):
    """Stateless apart from tag bookkeeping: one SENSOR message is one complete reading."""

    profile = "tasmota"

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        parts = topic.split("/")
        if len(parts) < 3 or (parts[0], parts[-1]) not in (("tele", "SENSOR"), ("stat", "STATUS10")):
            return
        device = "/".join(parts[1:-1])
        doc = load_json(payload, topic)
        if isinstance(doc, Mapping) and parts[-1] == "STATUS10":
            doc = doc.get("StatusSNS")
        if not isinstance(doc, Mapping):
            raise PayloadError(f"topic={topic} payload is not a JSON object")
        energy = doc.get("ENERGY")
        if energy is None:
            return                      # a SENSOR message of a non-energy sensor
        if not isinstance(energy, Mapping):
            raise PayloadError(f"topic={topic} ENERGY is not an object")
        scalars: dict[str, Value] = {}
        arrays: dict[str, list[float | None]] = {}
        for key, (name, factor) in ENERGY.items():
            if key not in energy:
                continue
            raw = energy[key]
            where = f"topic={topic} ENERGY.{key}"
            if isinstance(raw, list):
                if not 1 <= len(raw) <= MAX_CHANNELS:
                    raise PayloadError(f"{where}: {len(raw)} channels")
                arrays[name] = [scaled(json_number(v, where), factor) for v in raw]
            else:
                scalars[name] = scaled(json_number(raw, where), factor)
        if not arrays:
            out.append(Reading(device_id=device, time_ms=now_ms, source=self.asm.source, metrics=scalars))
            return
        for ch in range(max(len(v) for v in arrays.values())):
            metrics = dict(scalars)
            metrics.update({name: vals[ch] for name, vals in arrays.items() if ch < len(vals)})
            out.append(Reading(device_id=f"{device}/ch{ch + 1}", time_ms=now_ms, source=self.asm.source,
                               metrics=metrics))
