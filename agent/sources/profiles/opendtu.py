"""OpenDTU (Hoymiles micro-inverters): one plain-text value per topic, retained by default.

Topics (firmware ``src/MqttHandleInverter.cpp``): ``<base><serial>/<channel>/<field>`` (channel 0 = AC side
and inverter totals, 1..6 = PV inputs) and ``<base><serial>/status/last_update``. ``<base>`` is the
configured base topic (``solar/`` by default, any number of levels). The serial is printed ``%0x%08x``:
lower-case hexadecimal, 12 characters for every Hoymiles model (HMS/HMT serials contain a-f).

Cycle rule. Per inverter and round the firmware publishes ``status/last_update`` *before* the channel
fields, and the fields only when the statistics changed. So a ``last_update`` with a new value closes the
serial's previous cycle (its readings are emitted) and opens the next one. A field seen twice in one cycle
also closes it (forks that skip ``last_update``), and a cycle quiet for ``idle_ms`` is emitted by ``tick``.
One cycle yields one reading for ``<serial>`` (AC + inverter values) and one per PV input,
``<serial>/pv<n>``.

Clock. ``last_update`` is ``time(0) - age``: unix seconds once the DTU has NTP, seconds since its boot
without. A plausible date stamps the cycle; an uptime value cannot, so the cycle is stamped with the
receive time of the ``last_update`` that opened it.

Retained values. A subscriber first receives the leftovers of the last round, which may be hours old.
With a date clock, a cycle older than ``stale_ms`` is stale. With an uptime clock the age is
``dtu/uptime - last_update`` (both seconds since the same boot), and every value of a DTU whose LWT says
``dtu/status offline`` is stale. A retained burst arrives in the broker's order, so this is judged when
the cycle is emitted, after the whole burst. Stale cycles are never emitted; their messages are acked.

Outcomes (why a message gave no reading). ``ignored``: everything else OpenDTU publishes for an inverter
(``name``, ``radio/*``, ``device/*``, ``status/*`` but ``last_update``, PV-input names, yields and
irradiation, ``0/efficiency``, HMT's line voltage and summed current), the DTU's own topics
(``dtu/status``, ``dtu/uptime``, ``dtu/ip``, ``dtu/heap/*``, ...), the site sums ``ac/*`` and ``dc/*``,
``last_update`` 0 and a ``last_update`` that announces the round already open (the firmware repeats it every
publish interval while the statistics have not changed). ``stale``: a ``last_update`` or a field of a cycle
already judged too old when it arrives. Anything else is ``unrecognised_topic``.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading
from agent.sources.profiles._base import (
    DEFAULT_IDLE_MS,
    IGNORED,
    STALE,
    BaseDecoder,
    _Cycle,
    parse_number,
    plausible_epoch_ms,
    scaled,
)

_SERIAL: Final = r"[0-9a-fA-F]{10,16}"
_TOPIC_RE: Final = re.compile(rf"^(?P<base>(?:.*/)?)(?P<serial>{_SERIAL})/(?P<rest>.+)$")
_DTU_RE: Final = re.compile(r"^(?P<base>(?:.*/)?)dtu/(?P<what>status|uptime)$")
_INVERTER_REST: Final = re.compile(r"^(?:name|status/\w+|radio/\w+|device/\w+|[0-6]/\w+)$")
_DTU_TOPICS: Final = re.compile(r"^(?P<base>(?:.*/)?)(?:dtu/[\w/]+|ac/(?:power|yieldtotal|yieldday|is_valid)"
                                r"|dc/(?:power|irradiation|is_valid))$")

# field -> (schema field, factor to its unit). Channel 0 carries the AC values and the inverter's
# totals (``powerdc``, ``yieldday`` Wh, ``yieldtotal`` kWh: the DC-side yield the inverter reports, its
# only energy counter). ``powerfactor`` is a 0..1 fraction (UNIT_NONE, 3 digits) -> percent.
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
    "powerfactor": ("power_factor_pct", 100.0),
}
# PV inputs: per-string DC values. Their yieldday/yieldtotal are per-string energies, which the schema
# has no field for, so they are left out rather than mislabelled as the inverter's AC energy.
DC_FIELDS: Final[dict[str, tuple[str, float]]] = {
    "power": ("dc_power_w", 1.0),
    "voltage": ("dc_voltage_v", 1.0),
    "current": ("dc_current_a", 1.0),
}
# HMT (three-phase, serial prefix 1361/1382): the published ``0/voltage`` is the L1-L2 line voltage and
# ``0/current`` the phase sum (HMT_6CH) or phase 1 (HMT_4CH): no single-phase value, so not mapped.
_HMT_PREFIXES: Final = ("136", "138")
_HMT_SKIP: Final = frozenset({"voltage", "current"})
DEFAULT_STALE_MS: Final = 600_000


@dataclass(slots=True)
class _Dtu:
    """What one DTU (one base topic) said about itself."""

    uptime_s: float | None = None       # dtu/uptime: seconds since its boot
    uptime_at_ms: int = 0               # when we received it
    offline: bool = False               # its LWT


def recognises(topic: str) -> bool:
    """True when ``topic`` has the shape of an OpenDTU topic (inverter or DTU), whatever its base."""
    return base_of(topic) is not None


def base_of(topic: str) -> str | None:
    """The base topic (``solar/``, ``home/pv/roof/``) of an OpenDTU topic, None when it is not one."""
    m = _TOPIC_RE.match(topic)
    if m is not None and _INVERTER_REST.match(m["rest"]):
        return m["base"]
    d = _DTU_TOPICS.match(topic)
    return d["base"] if d is not None else None


class OpenDtuDecoder(BaseDecoder):
    """Decoder state for one OpenDTU subscription (all inverters under one or more bases)."""

    profile = "opendtu"

    def __init__(self, idle_ms: int = DEFAULT_IDLE_MS, stale_ms: int = DEFAULT_STALE_MS) -> None:
        super().__init__(idle_ms)
        self.stale_ms = stale_ms
        self._dtus: dict[str, _Dtu] = {}            # base -> DTU state
        self._base_of: dict[str, str] = {}          # serial -> base
        self._uptime_clock: dict[str, float] = {}   # serial -> last_update (s since boot) of its open cycle
        self._now_ms = 0

    def tick(self, now_ms: int) -> list[Reading]:
        self._now_ms = max(self._now_ms, now_ms)
        return super().tick(now_ms)

    def reset(self) -> None:
        super().reset()
        self._uptime_clock.clear()

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        self._now_ms = max(self._now_ms, now_ms)
        d = _DTU_RE.match(topic)
        if d is not None:
            self._dtu(d["base"], d["what"], payload, topic, now_ms)
            self.skip(IGNORED)          # what the DTU says of itself: used to judge staleness, no reading
            return
        m = _TOPIC_RE.match(topic)
        if m is None or not _INVERTER_REST.match(m["rest"]):
            if _DTU_TOPICS.match(topic):
                self.skip(IGNORED)      # ac/power sums over the inverters, dtu/ip, dtu/heap/...
            return
        serial, rest = m["serial"].lower(), m["rest"].split("/")
        self._base_of[serial] = m["base"]
        if rest == ["status", "last_update"]:
            self._last_update(serial, parse_number(payload, topic), now_ms, tag, out)
            return
        if len(rest) != 2 or not rest[0].isdigit():
            self.skip(IGNORED)          # name, status/*, radio/*, device/*
            return
        ch, fld = int(rest[0]), rest[1].lower()
        table = AC_FIELDS if ch == 0 else DC_FIELDS
        if fld not in table or (ch == 0 and fld in _HMT_SKIP and serial.startswith(_HMT_PREFIXES)):
            self.skip(IGNORED)          # PV-input names, yields, irradiation; efficiency; HMT line values
            return
        name, factor = table[fld]
        value = scaled(parse_number(payload, topic), factor)
        device_id = serial if ch == 0 else f"{serial}/pv{ch}"
        self.asm.put(serial, device_id, name, value, now_ms, tag, out)
        cyc = self.asm.cycle(serial)
        if cyc is not None and self._looks_stale(serial, cyc):
            self.skip(STALE)

    def _dtu(self, base: str, what: str, payload: bytes, topic: str, now_ms: int) -> None:
        dtu = self._dtus.setdefault(base, _Dtu())
        if what == "status":
            dtu.offline = payload.strip().lower() == b"offline"
            return
        dtu.uptime_s = parse_number(payload, topic)
        dtu.uptime_at_ms = now_ms

    def _last_update(self, serial: str, seconds: float, now_ms: int, tag: Hashable | None,
                     out: list[Reading]) -> None:
        if seconds <= 0:
            self.skip(IGNORED)          # "0": no statistics yet
            return
        if seconds > 4e9:
            raise PayloadError(f"serial={serial} status/last_update={seconds} is neither unix seconds nor uptime")
        t_ms = plausible_epoch_ms(seconds, now_ms)
        stale = t_ms is not None and now_ms - t_ms > self.stale_ms
        cyc = self.asm.cycle(serial)
        if cyc is not None and self._same_round(serial, cyc, t_ms, seconds):
            # The same round announced again (every publish interval until the statistics change).
            self.skip(STALE if self._looks_stale(serial, cyc) else IGNORED)
            return
        if cyc is not None and cyc.time_ms is None and serial not in self._uptime_clock and cyc.dirty \
                and cyc.first_ms >= now_ms - self.asm.idle_ms:
            # Retained burst order is the broker's: fields may precede their last_update.
            cyc.time_ms, cyc.stale = t_ms, stale
        else:
            cyc = self.asm.start(serial, t_ms, out, stale=stale, opened_ms=now_ms)
        if t_ms is None:
            self._uptime_clock[serial] = seconds
        else:
            self._uptime_clock.pop(serial, None)
        cyc.last_ms = now_ms
        self.asm.attach(serial, tag)
        if self._looks_stale(serial, cyc):
            self.skip(STALE)

    def _same_round(self, serial: str, cyc: _Cycle, t_ms: int | None, seconds: float) -> bool:
        if t_ms is not None:
            return cyc.time_ms == t_ms
        return self._uptime_clock.get(serial) == seconds

    def _judge(self, key: str, cycle: _Cycle) -> None:
        """An uptime-clock cycle is stale when its DTU is offline or says the values are old."""
        if not cycle.stale and key in self._uptime_clock:
            cycle.stale = self._uptime_stale(key)

    def _uptime_stale(self, key: str) -> bool:
        last_update = self._uptime_clock.get(key)
        dtu = self._dtus.get(self._base_of.get(key, ""))
        if last_update is None or dtu is None:
            return False                # nothing to judge by: it is as fresh as its receive time
        if dtu.offline:
            return True
        if dtu.uptime_s is None:
            return False
        device_now_s = dtu.uptime_s + (self._now_ms - dtu.uptime_at_ms) / 1000
        return (device_now_s - last_update) * 1000 > self.stale_ms

    def _looks_stale(self, key: str, cycle: _Cycle) -> bool:
        """The outcome of a message of ``cycle``: stale by what is known now (``_judge`` has the last word
        when the cycle is emitted, after the rest of a retained burst)."""
        return cycle.stale or self._uptime_stale(key)

    def device_of(self, topic: str) -> str:
        m = _TOPIC_RE.match(topic)
        return m["serial"].lower() if m else topic


def default_topics(base: str = "solar") -> list[str]:
    return [f"{base}/#"]


__all__ = ["AC_FIELDS", "DC_FIELDS", "OpenDtuDecoder", "base_of", "default_topics", "recognises"]
