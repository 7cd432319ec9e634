"""Victron Venus OS (dbus-flashmq / dbus-mqtt): ``N/<portal>/<service>/<instance>/<path>``.

Payload ``{"value": v}`` (more keys on settings); ``{"value": null}`` is an invalid value (the
metric is reported as None); a zero-byte payload means the device vanished (PV inverter at
night): no reading and no error. Nothing is retained and values are published on change, so a
cycle is assembled per ``<service>/<instance>`` and emitted when a path repeats, when
``full_publish_completed`` arrives, or after ``idle_ms`` of quiet.

The GX only publishes while someone sends ``R/<portal>/keepalive``; the source does that
(``keepalive_topic``), it is the only message the agent ever publishes.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import BaseDecoder, json_number, load_json, scaled

# (service, D-Bus path) -> (schema field, factor). Paths from the Venus OS dbus wiki.
PATHS: Final[dict[tuple[str, str], tuple[str, float]]] = {
    ("pvinverter", "Ac/Power"): ("ac_power_w", 1.0),
    ("pvinverter", "Ac/Energy/Forward"): ("ac_energy_wh", 1000.0),     # kWh
    ("pvinverter", "Ac/L1/Voltage"): ("ac_voltage_v", 1.0),
    ("pvinverter", "Ac/L1/Current"): ("ac_current_a", 1.0),
    ("solarcharger", "Yield/Power"): ("dc_power_w", 1.0),
    ("solarcharger", "Pv/V"): ("dc_voltage_v", 1.0),
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
# Text-valued state codes kept as the device's own text.
STATE_PATHS: Final = {("solarcharger", "State"), ("vebus", "State"), ("pvinverter", "StatusCode")}


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
            return
        if len(parts) != 5 or parts[0] != "N":
            return
        _, portal, service, instance, path = parts
        state = (service, path) in STATE_PATHS
        spec = PATHS.get((service, path))
        if spec is None and not state:
            return
        if not payload:
            return                      # device vanished: not an error, nothing to report
        doc = load_json(payload, topic)
        if not isinstance(doc, Mapping) or "value" not in doc:
            raise PayloadError(f"topic={topic} payload has no 'value' key",
                               hint="dbus-flashmq publishes {\"value\": ...}; check the broker is the GX")
        raw = doc["value"]
        value: Value
        if state:
            name = "operating_state"
            if isinstance(raw, bool) or (raw is not None and not isinstance(raw, int | float | str)):
                raise PayloadError(f"topic={topic}: state value {raw!r:.40} is not a code")
            value = None if raw is None else str(raw)
        else:
            assert spec is not None
            name, factor = spec
            value = scaled(json_number(raw, f"topic={topic}"), factor)
        device_id = f"{portal}/{service}/{instance}"
        self.asm.put(device_id, device_id, name, value, now_ms, tag, out)

    def device_of(self, topic: str) -> str:
        parts = topic.split("/")
        return "/".join(parts[1:4]) if len(parts) >= 4 else topic
