"""OpenDTU (Hoymiles micro-inverters): one plain-text value per topic, retained by default.

Topics: ``<base>/<serial>/<channel>/<field>`` (channel 0 = AC side, 1..6 = PV inputs) and
``<base>/<serial>/status/last_update`` (unix seconds of the values that follow).

Cycle rule. The firmware publishes, per inverter and per round, ``status/last_update`` *before*
the channel fields, and the fields only when the statistics changed. So a ``last_update`` with a
new value closes the serial's previous cycle (its readings are emitted) and opens the next one,
stamped with that device time. A field seen twice in one cycle also closes it (a fork that skips
``last_update``), and a cycle quiet for ``idle_ms`` is emitted by ``tick``. One cycle yields one
reading for ``<serial>`` (AC + inverter values) and one per PV input, ``<serial>/pv<n>``.

Retained values. A subscriber first receives the retained leftovers of the last round, which may
be hours old (night, inverter off). A cycle whose ``last_update`` is older than ``stale_ms`` at
receive time is marked stale and never emitted; its messages are only acked.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading
from agent.sources.profiles._base import DEFAULT_IDLE_MS, BaseDecoder, parse_number, scaled

_TOPIC_RE: Final = re.compile(r"^(?P<base>.+)/(?P<serial>\d{10,16})/(?P<rest>.+)$")

# field (lower-cased, AhoyDTU capitalises) -> (schema field, factor to its unit)
AC_FIELDS: Final[dict[str, tuple[str, float]]] = {
    "power": ("ac_power_w", 1.0),
    "voltage": ("ac_voltage_v", 1.0),
    "current": ("ac_current_a", 1.0),
    "frequency": ("ac_frequency_hz", 1.0),
    "powerdc": ("dc_power_w", 1.0),
    "reactivepower": ("ac_reactive_power_var", 1.0),
    "temperature": ("temperature_c", 1.0),
    "yieldday": ("ac_energy_today_wh", 1.0),        # Wh
    "yieldtotal": ("ac_energy_wh", 1000.0),         # kWh (!) while yieldday is Wh
    "powerfactor": ("power_factor_pct", 1.0),       # see _pf_pct
}
# PV inputs: per-string DC values. Their yieldday/yieldtotal are DC energies, which the schema
# has no field for, so they are left out rather than mislabelled as AC energy.
DC_FIELDS: Final[dict[str, tuple[str, float]]] = {
    "power": ("dc_power_w", 1.0),
    "voltage": ("dc_voltage_v", 1.0),
    "current": ("dc_current_a", 1.0),
}
DEFAULT_STALE_MS: Final = 600_000


def _pf_pct(value: float) -> float:
    # The docs say %, the firmware sends a 0..1 fraction: a |value| <= 1 is taken as a fraction.
    return round(value * 100.0, 6) if abs(value) <= 1.0 else value


class OpenDtuDecoder(BaseDecoder):
    """Decoder state for one OpenDTU subscription (all inverters under one or more bases)."""

    profile = "opendtu"

    def __init__(self, idle_ms: int = DEFAULT_IDLE_MS, stale_ms: int = DEFAULT_STALE_MS) -> None:
        super().__init__(idle_ms)
        self.stale_ms = stale_ms

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        m = _TOPIC_RE.match(topic)
        if m is None:
            return                      # dtu/status, ac/power sums, names of the DTU itself
        serial, rest = m["serial"], m["rest"].split("/")
        if rest == ["status", "last_update"]:
            self._last_update(serial, parse_number(payload, topic), now_ms, tag, out)
            return
        if len(rest) != 2 or not rest[0].isdigit():
            return                      # name, status/*, cmd/* (filtered earlier), device info
        ch, fld = int(rest[0]), rest[1].lower()
        table = AC_FIELDS if ch == 0 else DC_FIELDS
        if fld not in table:
            return
        name, factor = table[fld]
        number = parse_number(payload, topic)
        value = _pf_pct(number) if fld == "powerfactor" else scaled(number, factor)
        device_id = serial if ch == 0 else f"{serial}/pv{ch}"
        self.asm.put(serial, device_id, name, value, now_ms, tag, out)

    def _last_update(self, serial: str, seconds: float, now_ms: int, tag: Hashable | None,
                     out: list[Reading]) -> None:
        if seconds <= 0:
            return                      # "0": no statistics yet
        if seconds > 4e9:
            raise PayloadError(f"serial={serial} status/last_update={seconds} is not unix seconds")
        t_ms = int(seconds * 1000)
        stale = now_ms - t_ms > self.stale_ms
        cyc = self.asm.cycle(serial)
        if cyc is not None and cyc.time_ms == t_ms:
            return                      # same round repeated (published every interval)
        if cyc is not None and cyc.time_ms is None and cyc.dirty and cyc.first_ms >= now_ms - self.asm.idle_ms:
            # Retained burst order is the broker's: fields may precede their last_update.
            cyc.time_ms, cyc.stale = t_ms, stale
        else:
            cyc = self.asm.start(serial, t_ms, out, stale=stale)
        cyc.last_ms = now_ms
        self.asm.attach(serial, tag)

    def device_of(self, topic: str) -> str:
        m = _TOPIC_RE.match(topic)
        return m["serial"] if m else topic


def default_topics(base: str = "solar") -> list[str]:
    return [f"{base}/#"]
