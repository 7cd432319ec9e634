"""Shelly Gen2+ devices: ``<prefix>/status/<component>`` and ``<prefix>/events/rpc``.

``status/<component>`` carries a component's full status; ``events/rpc`` carries JSON-RPC frames whose
``NotifyStatus`` params hold only the *changed* keys of each component (a key that disappeared is sent as
``null``), to be overlaid on the last known status (``NotifyFullStatus`` carries whole statuses).

Metering components and their readings (``<prefix>`` is the topic prefix: the device id by default, or
any configured prefix of several levels; the device id is never shared by two units of a site):

* ``em:0`` (Pro 3EM, 3EM Gen3): the meter ``<prefix>`` gets the meter's totals (``total_act_power``,
  ``total_aprt_power``, ``total_current``, ``emdata:0.total_act``); each phase a/b/c is its own reading
  ``<prefix>/L1..L3`` with that phase's values and energy. A phase at 0 V has no frequency.
* ``em1:<n>`` (Pro EM, EM Gen3), ``switch:<n>`` (Plus 1PM, Plus Plug S, Pro 4PM, Gen3/4 1PM), ``pm1:<n>``
  (PM Mini): one reading per component, ``<prefix>/<component>`` (``.../switch:2``), the key the device
  itself uses, so channels never collide. Energy: ``em1data:<n>``, ``aenergy`` of the component.
* Components without metering (an ``input``, a relay without ``apower``) yield nothing.

A full status yields readings for everything in it; a delta yields readings only for what it touched (a
delta that only switched an output measures nothing new). Energy-only deltas (``emdata``, ``em1data``)
update the state and ride along with the next power update: a cumulative counter loses nothing.

Direction. Active power is positive from the line side to the load side. ``export=True`` (feed setting
``energy_direction = "export"``: a meter in a PV inverter's feed) reads the returned counters
(``total_act_ret``, ``ret_aenergy``, ...) as ``ac_energy_wh`` and negates active power, so production
is positive like an inverter's own reading.

Time: ``params.ts`` of a notification when plausible, else the receive time (status topics have no time).

Outcomes. ``ignored``: the LWT ``<prefix>/online``, ``NotifyEvent`` and other RPC frames, the status of
components without metering (``sys``, ``wifi``, ``input:<n>``, a relay without a meter) and deltas that
measure nothing (an output switched). Energy-only updates feed the next reading (they count as one).
Anything else is ``unrecognised_topic`` (``.../status/reachable`` is no Shelly component: OpenDTU's).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import IGNORED, BaseDecoder, json_number, load_json, plausible_epoch_ms, scaled

_PHASES: Final = ("a", "b", "c")
_NOTIFY: Final = frozenset({"NotifyStatus", "NotifyFullStatus"})


@dataclass(frozen=True, slots=True)
class _Key:
    """One status key: where it sits (a path into the component status) and what it becomes."""

    path: tuple[str, ...]
    field: str
    factor: float = 1.0
    signed_power: bool = False       # negated when the feed reads the export direction


def _k(path: str, field: str, factor: float = 1.0, power: bool = False) -> _Key:
    return _Key(tuple(path.split(".")), field, factor, power)


# Per-channel metering components: key table, and the energy key for each direction.
_CHANNEL: Final[dict[str, tuple[_Key, ...]]] = {
    "switch": (_k("apower", "ac_power_w", power=True), _k("voltage", "ac_voltage_v"), _k("current", "ac_current_a"),
               _k("freq", "ac_frequency_hz"), _k("pf", "power_factor_pct", 100.0),
               _k("temperature.tC", "temperature_c")),
    "pm1": (_k("apower", "ac_power_w", power=True), _k("voltage", "ac_voltage_v"), _k("current", "ac_current_a"),
            _k("freq", "ac_frequency_hz"), _k("pf", "power_factor_pct", 100.0)),
    "em1": (_k("act_power", "ac_power_w", power=True), _k("aprt_power", "ac_apparent_power_va"),
            _k("current", "ac_current_a"), _k("voltage", "ac_voltage_v"), _k("freq", "ac_frequency_hz"),
            _k("pf", "power_factor_pct", 100.0)),
}
# kind -> (component holding the energy, import path, export path); None = the component itself
_CHANNEL_ENERGY: Final[dict[str, tuple[str | None, str, str]]] = {
    "switch": (None, "aenergy.total", "ret_aenergy.total"),
    "pm1": (None, "aenergy.total", "ret_aenergy.total"),
    "em1": ("em1data", "total_act_energy", "total_act_ret_energy"),
}
_METER: Final = (_k("total_act_power", "ac_power_w", power=True), _k("total_aprt_power", "ac_apparent_power_va"),
                 _k("total_current", "ac_current_a"))
_METER_ENERGY: Final = ("total_act", "total_act_ret")
_PHASE: Final = (("current", "ac_current_a", 1.0, False), ("voltage", "ac_voltage_v", 1.0, False),
                 ("act_power", "ac_power_w", 1.0, True), ("aprt_power", "ac_apparent_power_va", 1.0, False),
                 ("pf", "power_factor_pct", 100.0, False), ("freq", "ac_frequency_hz", 1.0, False))
_ENERGY_KINDS: Final = frozenset({"emdata", "em1data"})
_STATUS_KINDS: Final = frozenset({"em", *_CHANNEL, *_ENERGY_KINDS})
# Components of which a device has one, so their status key has no ``:<id>`` (Shelly Gen2+ API docs v1.0,
# Notifications: "component must be substituted by the component type, for example cloud, wifi, mqtt").
# Their status carries no metering. Device-specific UIs are ``<name>_ui`` (``plugs_ui``, ``ht_ui``).
_SINGLETONS: Final = frozenset({"sys", "wifi", "eth", "ble", "cloud", "mqtt", "ws", "ui", "bthome", "modbus",
                                "knx", "matter", "zigbee"})


def default_topics() -> list[str]:
    """The device-id prefix and custom prefixes of up to four levels (MQTT has no 'any depth, then')."""
    out = []
    for depth in (1, 2, 3, 4):
        stem = "/".join(["+"] * depth)
        out += [f"{stem}/events/rpc", f"{stem}/status/+"]
    return out


def split_topic(topic: str) -> tuple[str, str] | None:
    """``(prefix, "rpc" | component)`` for a data topic, else None."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[-2:] == ["events", "rpc"]:
        return "/".join(parts[:-2]), "rpc"
    if len(parts) >= 3 and parts[-2] == "status" and parts[-1]:
        return "/".join(parts[:-2]), parts[-1]
    return None


def _component(key: str) -> bool:
    """True for a Shelly component key: ``switch:0``, ``em:0``, ``input:1``, ``sys``, ``plugs_ui``."""
    return ":" in key or key in _STATUS_KINDS or key in _SINGLETONS or key.endswith("_ui")


def recognises(topic: str) -> bool:
    """True for a Gen2+ notification or component-status topic, or the ``<prefix>/online`` LWT."""
    split = split_topic(topic)
    if split is not None:
        return split[1] == "rpc" or _component(split[1])
    parts = topic.split("/")
    return len(parts) >= 2 and parts[-1] == "online" and parts[0].startswith("shelly")


class ShellyDecoder(BaseDecoder):
    """Last known status per device prefix and component."""

    profile = "shelly"

    def __init__(self, idle_ms: int = 2_000, *, export: bool = False) -> None:
        super().__init__(idle_ms)
        self.export = export
        self._state: dict[tuple[str, str], dict[str, Any]] = {}   # (prefix, component) -> status

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        split = split_topic(topic)
        if split is None:
            if topic.endswith("/online"):
                self.skip(IGNORED)      # the LWT: true/false
            return
        prefix, what = split
        if what != "rpc" and what.split(":")[0] not in _STATUS_KINDS:
            if _component(what):
                self.skip(IGNORED)      # sys, wifi, cloud, input:0, ...: no metering
            return
        doc = load_json(payload, topic)
        full: bool
        if what == "rpc":
            if not isinstance(doc, Mapping):
                raise PayloadError(f"topic={topic} RPC frame is not an object")
            if doc.get("method") not in _NOTIFY:
                self.skip(IGNORED)      # NotifyEvent, responses to others' requests
                return
            params = doc.get("params")
            if not isinstance(params, Mapping):
                raise PayloadError(f"topic={topic} {doc.get('method')} without params")
            ts = json_number(params.get("ts"), f"topic={topic} params.ts")
            t_ms = (plausible_epoch_ms(ts, now_ms) if ts is not None else None) or now_ms
            updates = {k: v for k, v in params.items() if k != "ts"}
            full = doc.get("method") == "NotifyFullStatus"
        else:
            t_ms, updates, full = now_ms, {what: doc}, True
        changes: list[tuple[str, str, dict[str, Any]]] = []
        for comp, status in updates.items():
            kind = comp.split(":")[0]
            if kind not in _STATUS_KINDS:
                continue
            if not isinstance(status, Mapping):
                raise PayloadError(f"topic={topic} {comp} is not an object")
            changes.append((comp, kind, dict(status)))
        # Overlay on copies and decode everything before storing: a bad frame leaves the state as it was.
        merged = {comp: (dict(status) if full else _overlay(self._state.get((prefix, comp), {}), status))
                  for comp, _, status in changes}
        readings: list[Reading] = []
        for comp, kind, status in changes:
            if kind in _ENERGY_KINDS:
                continue
            touched = None if full else status
            readings += self._component(topic, prefix, comp, kind, merged, touched, t_ms)
        for comp, _, _ in changes:
            self._state[(prefix, comp)] = merged[comp]
        out += readings
        if not readings:
            if any(kind in _ENERGY_KINDS for _, kind, _ in changes):
                self.kept()             # a counter that rides along with the next power update
            else:
                self.skip(IGNORED)      # nothing metered changed (an output switched, an input)

    def _status(self, prefix: str, comp: str, merged: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        return merged.get(comp) or self._state.get((prefix, comp), {})

    def _component(self, topic: str, prefix: str, comp: str, kind: str, merged: Mapping[str, dict[str, Any]],
                   touched: Mapping[str, Any] | None, t_ms: int) -> list[Reading]:
        idx = comp.partition(":")[2]
        status = self._status(prefix, comp, merged)
        where = f"topic={topic} {comp}"
        if kind == "em":
            energy = self._status(prefix, f"emdata:{idx}", merged)
            return self._meter(where, prefix if idx == "0" else f"{prefix}/em{idx}", status, energy, touched, t_ms)
        keys = _CHANNEL[kind]
        if touched is not None and not any(k.path[0] in touched for k in keys) \
                and not any(p.split(".")[0] in touched for p in _CHANNEL_ENERGY[kind][1:]):
            return []
        metrics = self._pick(where, status, keys)
        holder, imp, exp = _CHANNEL_ENERGY[kind]
        source = status if holder is None else self._status(prefix, f"{holder}:{idx}", merged)
        self._energy(where, metrics, source, exp if self.export else imp)
        if not metrics:
            return []                   # no metering on this component (a plain relay)
        return [Reading(device_id=f"{prefix}/{comp}", time_ms=t_ms, source=self.asm.source, metrics=metrics)]

    def _meter(self, where: str, device: str, status: Mapping[str, Any], energy: Mapping[str, Any],
               touched: Mapping[str, Any] | None, t_ms: int) -> list[Reading]:
        out: list[Reading] = []
        if touched is None or any(k.path[0] in touched for k in _METER):
            metrics = self._pick(where, status, _METER)
            self._energy(where, metrics, energy, _METER_ENERGY[1 if self.export else 0])
            if metrics:
                out.append(Reading(device_id=device, time_ms=t_ms, source=self.asm.source, metrics=metrics))
        for n, ph in enumerate(_PHASES, start=1):
            if touched is not None and not any(f"{ph}_{key}" in touched for key, *_ in _PHASE):
                continue
            keys = tuple(_Key((f"{ph}_{key}",), name, factor, power) for key, name, factor, power in _PHASE)
            metrics = self._pick(where, status, keys)
            if metrics.get("ac_voltage_v") == 0:
                metrics.pop("ac_frequency_hz", None)        # no voltage, no frequency to speak of
            suffix = "ret_energy" if self.export else "energy"
            self._energy(where, metrics, energy, f"{ph}_total_act_{suffix}")
            if metrics:
                out.append(Reading(device_id=f"{device}/L{n}", time_ms=t_ms, source=self.asm.source, metrics=metrics))
        return out

    def _pick(self, where: str, status: Mapping[str, Any], keys: tuple[_Key, ...]) -> dict[str, Value]:
        metrics: dict[str, Value] = {}
        for key in keys:
            raw = _dig(status, key.path)
            if raw is None:
                continue                # absent, or removed by a null
            value = scaled(json_number(raw, f"{where}.{'.'.join(key.path)}"), key.factor)
            if value is not None and key.signed_power and self.export:
                value = -value if value else 0.0
            metrics[key.field] = value
        return metrics

    @staticmethod
    def _energy(where: str, metrics: dict[str, Value], source: Mapping[str, Any], path: str) -> None:
        raw = _dig(source, tuple(path.split(".")))
        if raw is not None:
            metrics["ac_energy_wh"] = scaled(json_number(raw, f"{where} {path}"), 1.0)

    def device_of(self, topic: str) -> str:
        split = split_topic(topic)
        return split[0] if split else topic


def _overlay(known: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """``delta`` laid over ``known``; nested objects merge, ``null`` removes a key."""
    out = dict(known)
    for key, value in delta.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _dig(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    cur: Any = doc
    for part in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur
