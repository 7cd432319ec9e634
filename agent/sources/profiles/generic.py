"""Generic JSON: the site config maps schema fields to dotted JSON paths.

``fields`` = ((schema field, path), ...), e.g. ``("ac_power_w", "ENERGY.Power")``. The device id
is the value at ``device_id_path`` when set, else the topic level matched by the first wildcard of
the subscription (``site/+/telemetry`` -> the ``+`` level), else the whole topic. The time is the
epoch-seconds value at ``time_path`` when set, else the receive time. One message = one reading;
a message whose paths are all absent yields none.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Final

from agent.errors import PayloadError
from agent.records import Reading, Value
from agent.sources.profiles._base import BaseDecoder, dig, json_number, load_json

TEXT_FIELDS: Final = frozenset({"operating_state"})
_MAX_EPOCH_S: Final = 4e9


def _captures(flt: str, levels: list[str]) -> list[str] | None:
    """The levels matched by ``+``/``#`` wildcards of ``flt``, or None when it does not match."""
    caps: list[str] = []
    parts = flt.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return [*caps, *levels[i:i + 1]]
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return None
        if part == "+":
            caps.append(levels[i])
    return caps if len(parts) == len(levels) else None


def wildcard_device(topic: str, filters: Sequence[str]) -> str | None:
    """The topic level under the first wildcard of the first filter that matches ``topic``."""
    levels = topic.split("/")
    for flt in filters:
        caps = _captures(flt, levels)
        if caps:
            return caps[0]
    return None


def recognises(topic: str) -> bool:
    """Always False: a generic feed's topics are whatever the site config says, not a known shape."""
    return False


class GenericDecoder(BaseDecoder):
    """Field mapping from the site config; stateless apart from tag bookkeeping."""

    profile = "generic"

    def __init__(self, fields: Sequence[tuple[str, str]], *, device_id_path: str = "", time_path: str = "",
                 topics: Sequence[str] = ()) -> None:
        super().__init__()
        self.fields = tuple(fields)
        self.device_id_path = device_id_path
        self.time_path = time_path
        self.topics = tuple(topics)

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        doc = load_json(payload, topic)
        if not isinstance(doc, Mapping):
            raise PayloadError(f"topic={topic} payload is not a JSON object",
                               hint="the generic profile expects one JSON object per message")
        metrics: dict[str, Value] = {}
        for name, path in self.fields:
            raw = dig(doc, path)
            if raw is None:
                continue
            if name in TEXT_FIELDS and isinstance(raw, str):
                metrics[name] = raw[:80]
            else:
                metrics[name] = json_number(raw, f"topic={topic} {path}")
        if not metrics:
            return
        device = self._device(topic, doc)
        t_ms = now_ms
        if self.time_path:
            ts = json_number(dig(doc, self.time_path), f"topic={topic} {self.time_path}")
            if ts is not None:
                if not 0 < ts < _MAX_EPOCH_S:
                    raise PayloadError(f"topic={topic} {self.time_path}={ts} is not epoch seconds")
                t_ms = round(ts * 1000)
        out.append(Reading(device_id=device, time_ms=t_ms, source=self.asm.source, metrics=metrics))

    def _device(self, topic: str, doc: Mapping[str, object]) -> str:
        if self.device_id_path:
            raw = dig(doc, self.device_id_path)
            if isinstance(raw, str | int) and not isinstance(raw, bool) and str(raw):
                return str(raw)[:80]
            raise PayloadError(f"topic={topic} {self.device_id_path} holds no device id")
        device = wildcard_device(topic, self.topics) or topic
        if not device:
            raise PayloadError(f"topic={topic!r} names no device", hint="set device_id_path in the feed's config")
        return device[:80]

    def device_of(self, topic: str) -> str:
        return wildcard_device(topic, self.topics) or topic
