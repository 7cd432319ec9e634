"""Victron Venus OS (dbus-flashmq / dbus-mqtt): ``N/<portal>/<service>/<instance>/<path>``.

Payload ``{"value": v}`` (more keys on settings); ``{"value": null}`` is an invalid value (the
metric is reported as None); a zero-byte payload means the device vanished (PV inverter at
night): no reading and no error. Nothing is retained and values are published on change, so a
cycle is assembled per ``<service>/<instance>`` and emitted when a path repeats, when
``full_publish_completed`` arrives, or after ``idle_ms`` of quiet.

Identity: ``<portal>/<service>/<instance>`` (the portal id is unique per GX, the instance per device on
it); per-phase values go to ``<device>/L<n>``, per-tracker values of a multi-tracker charger to
``<device>/pv<n>``. A reading whose values are all null (L2 of a single-phase inverter) is not emitted.

The GX only publishes while someone sends ``R/<portal>/keepalive``; the source does that
(``keepalive_topic``), it is the only message the agent ever publishes.

Outcomes. ``ignored``: every ``N/...`` path without a schema field (``ProductId``, ``CustomName``,
``Serial``, settings, ...), a zero-byte payload (the device vanished) and a ``full_publish_completed`` that
completed no reading. Anything else is ``unrecognised_topic``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import IGNORED, BaseDecoder, json_number, load_json, scaled

# (service, D-Bus path) -> (schema field, factor): device-level values. Paths and units from the Venus OS
# D-Bus wiki (SI units, energy in kWh).
PATHS: Final[dict[tuple[str, str], tuple[str, float]]] = {
    ("pvinverter", "Ac/Power"): ("ac_power_w", 1.0),
    ("pvinverter", "Ac/Energy/Forward"): ("ac_energy_wh", 1000.0),     # kWh
    ("solarcharger", "Yield/Power"): ("dc_power_w", 1.0),
    ("solarcharger", "Pv/V"): ("dc_voltage_v", 1.0),
    ("solarcharger", "Pv/I"): ("dc_current_a", 1.0),
    ("solarcharger", "Dc/0/Voltage"): ("battery_voltage_v", 1.0),
    ("system", "Dc/Pv/Power"): ("dc_power_w", 1.0),
    ("system", "Dc/Battery/Voltage"): ("battery_voltage_v", 1.0),
    ("system", "Dc/Battery/Soc"): ("battery_soc_pct", 1.0),
    ("system", "Dc/Battery/Power"): ("battery_power_w", 1.0),
    ("system", "Ac/Consumption/Total/Power"): ("load_power_w", 1.0),
    ("battery", "Soc"): ("battery_soc_pct", 1.0),
    ("battery", "Dc/0/Voltage"): ("battery_voltage_v", 1.0),
    ("battery", "Dc/0/Power"): ("battery_power_w", 1.0),
    ("battery", "Dc/0/Temperature"): ("temperature_c", 1.0),
    ("grid", "Ac/Power"): ("grid_power_w", 1.0),
}
# Per-phase values (``Ac/L<n>/...``) belong to the phase, ``<device>/L<n>``, never to the device: a
# three-phase inverter has three voltages, and phase 1's is not the inverter's.
PHASE_PATHS: Final[dict[str, dict[str, tuple[str, float]]]] = {
    "pvinverter": {"Power": ("ac_power_w", 1.0), "Voltage": ("ac_voltage_v", 1.0), "Current": ("ac_current_a", 1.0),
                   "Energy/Forward": ("ac_energy_wh", 1000.0)},
    "grid": {"Power": ("grid_power_w", 1.0), "Voltage": ("ac_voltage_v", 1.0), "Current": ("ac_current_a", 1.0)},
}
# Multi-tracker solar chargers: ``Pv/<n>/V`` and ``Pv/<n>/P`` (0-based) are PV input n+1, ``<device>/pv<n+1>``.
TRACKER_PATHS: Final[dict[str, tuple[str, float]]] = {"V": ("dc_voltage_v", 1.0), "P": ("dc_power_w", 1.0)}
_PHASE_RE: Final = re.compile(r"^Ac/L([1-3])/(.+)$")
_TRACKER_RE: Final = re.compile(r"^Pv/(\d{1,2})/([VP])$")
# Text-valued state codes kept as the device's own text.
STATE_PATHS: Final = {("solarcharger", "State"), ("vebus", "State"), ("pvinverter", "StatusCode")}


def _where(service: str, path: str) -> tuple[str, str, float] | None:
    """``(device suffix, schema field, factor)`` of a path, or None when it is not mapped."""
    spec = PATHS.get((service, path))
    if spec is not None:
        return "", *spec
    m = _PHASE_RE.match(path)
    if m is not None:
        phase = PHASE_PATHS.get(service, {}).get(m[2])
        return (f"/L{m[1]}", *phase) if phase else None
    m = _TRACKER_RE.match(path)
    if m is not None and service == "solarcharger":
        return f"/pv{int(m[1]) + 1}", *TRACKER_PATHS[m[2]]
    return None


def recognises(topic: str) -> bool:
    """True for a dbus-flashmq notification ``N/<portal>/<service>/<instance>/<path>``."""
    parts = topic.split("/", 4)
    return parts[0] == "N" and (len(parts) == 5 or (len(parts) == 3 and parts[2] == "full_publish_completed"))


def keepalive_topic(portal_id: str) -> str:
    return f"R/{portal_id}/keepalive"


FIRST_KEEPALIVE: Final = b""                                              # full republish
NEXT_KEEPALIVE: Final = b'{"keepalive-options":["suppress-republish"]}'
KEEPALIVE_INTERVAL_SECONDS: Final = 30.0                                  # GX times out after 60 s


def default_topics(portal_id: str) -> list[str]:
    return [f"N/{portal_id or '+'}/#"]


class VictronDecoder(BaseDecoder):
    """Decoder state for one GX device."""

    profile = "victron"

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        parts = topic.split("/", 4)
        if len(parts) == 3 and parts[0] == "N" and parts[2] == "full_publish_completed":
            for key in list(self.asm.keys()):
                self.asm.flush(key, out)
            if not out:
                self.skip(IGNORED)      # the end of a republish that completed nothing
            return
        if len(parts) != 5 or parts[0] != "N":
            return
        _, portal, service, instance, path = parts
        state = (service, path) in STATE_PATHS
        spec = None if state else _where(service, path)
        if spec is None and not state:
            self.skip(IGNORED)          # ProductId, CustomName, settings, ...: no schema field
            return
        if not payload:
            self.skip(IGNORED)          # device vanished: not an error, nothing to report
            return
        doc = load_json(payload, topic)
        if not isinstance(doc, Mapping) or "value" not in doc:
            raise PayloadError(f"topic={topic} payload has no 'value' key",
                               hint="dbus-flashmq publishes {\"value\": ...}; check the broker is the GX")
        raw = doc["value"]
        value: Value
        device_id = f"{portal}/{service}/{instance}"
        if state:
            name, suffix = "operating_state", ""
            if isinstance(raw, bool) or (raw is not None and not isinstance(raw, int | float | str)):
                raise PayloadError(f"topic={topic}: state value {raw!r:.40} is not a code")
            value = None if raw is None else str(raw)
        else:
            assert spec is not None
            suffix, name, factor = spec
            value = scaled(json_number(raw, f"topic={topic}"), factor)
        self.asm.put(device_id, device_id + suffix, name, value, now_ms, tag, out)

    def device_of(self, topic: str) -> str:
        parts = topic.split("/")
        return "/".join(parts[1:4]) if len(parts) >= 4 else topic
