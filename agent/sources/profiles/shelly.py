"""Shelly Gen2+ energy meters: ``<prefix>/status/<component>`` and ``<prefix>/events/rpc``.

``status/em:0`` carries the full status of a 3-phase meter; ``events/rpc`` carries JSON-RPC
``NotifyStatus`` frames whose params hold only the *changed* keys, which are merged into the last
known state of the component. Every update of a power component (``em:0``, ``em1:<n>``) yields
one reading of the merged state; energy components (``emdata:0``, ``em1data:<n>``, Wh) are only
merged and ride along with the next power reading (a cumulative counter loses nothing if one
sample is skipped). ``em:0`` is device ``<prefix>``; ``em1:<n>`` is ``<prefix>/ch<n>``.
Time: ``params.ts`` of a NotifyStatus when plausible, else the receive time.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import BaseDecoder, json_number, load_json, scaled

# component kind -> key -> (schema field, factor)
POWER: Final[dict[str, dict[str, tuple[str, float]]]] = {
    "em": {
        "total_act_power": ("ac_power_w", 1.0),
        "total_aprt_power": ("ac_apparent_power_va", 1.0),
        "total_current": ("ac_current_a", 1.0),
        "a_voltage": ("ac_voltage_v", 1.0),
        "a_freq": ("ac_frequency_hz", 1.0),
        "a_pf": ("power_factor_pct", 100.0),
    },
    "em1": {
        "act_power": ("ac_power_w", 1.0),
        "aprt_power": ("ac_apparent_power_va", 1.0),
        "current": ("ac_current_a", 1.0),
        "voltage": ("ac_voltage_v", 1.0),
        "freq": ("ac_frequency_hz", 1.0),
        "pf": ("power_factor_pct", 100.0),
    },
}
ENERGY: Final[dict[str, dict[str, tuple[str, float]]]] = {
    "emdata": {"total_act": ("ac_energy_wh", 1.0)},
    "em1data": {"total_act_energy": ("ac_energy_wh", 1.0)},
}
ENERGY_OF: Final = {"em": "emdata", "em1": "em1data"}
_MIN_TS: Final = 1_000_000_000.0        # 2001: below this the device clock is not set


def default_topics() -> list[str]:
    return ["+/status/+", "+/events/rpc"]


class ShellyDecoder(BaseDecoder):
    """Last known state per device prefix and component."""

    profile = "shelly"

    def __init__(self, idle_ms: int = 2_000) -> None:
        super().__init__(idle_ms)
        self._state: dict[tuple[str, str], dict[str, Value]] = {}   # (prefix, component) -> fields

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        parts = topic.split("/")
        if len(parts) >= 3 and parts[-2] == "status":
            prefix, t_ms = "/".join(parts[:-2]), now_ms
            doc = load_json(payload, topic)
            updates = {parts[-1]: doc}
        elif len(parts) >= 3 and parts[-2:] == ["events", "rpc"]:
            prefix = "/".join(parts[:-2])
            doc = load_json(payload, topic)
            if not isinstance(doc, Mapping):
                raise PayloadError(f"topic={topic} RPC frame is not an object")
            if doc.get("method") != "NotifyStatus":
                return                  # NotifyEvent etc.
            params = doc.get("params")
            if not isinstance(params, Mapping):
                raise PayloadError(f"topic={topic} NotifyStatus without params")
            ts = json_number(params.get("ts"), f"topic={topic} params.ts")
            t_ms = int(ts * 1000) if ts is not None and _MIN_TS < ts < 4e9 else now_ms
            updates = {k: v for k, v in params.items() if k != "ts"}
        else:
            return
        parsed = [(c, kind, self._parse(topic, c, kind, v)) for c, v in updates.items()
                  if (kind := c.split(":")[0]) in POWER or kind in ENERGY]
        # Validate everything before touching state, so a bad frame leaves the state as it was.
        for comp, _, fields in parsed:
            self._state.setdefault((prefix, comp), {}).update(fields)
        for comp, kind, _ in parsed:
            if kind in POWER:
                out.append(self._reading(prefix, comp, kind, t_ms))

    def _parse(self, topic: str, comp: str, kind: str, raw: Any) -> dict[str, Value]:
        if not isinstance(raw, Mapping):
            raise PayloadError(f"topic={topic} {comp} is not an object")
        table = POWER.get(kind) or ENERGY[kind]
        return {name: scaled(json_number(raw[key], f"topic={topic} {comp}.{key}"), factor)
                for key, (name, factor) in table.items() if key in raw}

    def _reading(self, prefix: str, comp: str, kind: str, t_ms: int) -> Reading:
        idx = comp.partition(":")[2]
        metrics = dict(self._state.get((prefix, comp), {}))
        metrics.update(self._state.get((prefix, f"{ENERGY_OF[kind]}:{idx}"), {}))
        device = prefix if kind == "em" else f"{prefix}/ch{idx}"
        return Reading(device_id=device, time_ms=t_ms, source=self.asm.source, metrics=metrics)

    def device_of(self, topic: str) -> str:
        parts = topic.split("/")
        return "/".join(parts[:-2]) if len(parts) >= 3 else topic
