"""Shared machinery of the MQTT payload profiles: the read-only filter, value parsing, and the
cycle assembler that turns topic-per-field streams into one reading per device per cycle.

Ack bookkeeping lives here too, because only the decoder knows which message fed which reading.
Every ``feed`` gets an opaque ``tag`` (the source passes the MQTT message id). A tag is *released*
(safe to PUBACK once the readings returned so far are committed) when either

* the message contributed nothing that is still held (names, status, ignored or write topics), or
* the pending reading it contributed to has been returned by ``feed`` or ``tick``.

A message that raised ``PayloadError`` contributed nothing; the source records it as a rejected
input, then acks it.

Every ``feed`` also leaves an ``outcome``: None when the message fed a reading (returned now, held
in a pending cycle, or kept for the device's next reading: ``kept``), else why it did not, one of
:data:`NO_READING_REASONS`. The source counts them per feed, so no message disappears without a
trace. A profile calls ``skip(reason)`` for a topic it knows but takes no reading from (names,
status, LWT, diagnostics, sums it does not use: ``ignored``; retained or replayed leftovers:
``stale``); a message that neither fed a reading nor was skipped is ``unrecognised_topic``, which
a real device's normal traffic never is (the corpus checks this for every case). The outcome is
what the decoder knows when the message arrives: a field that a retained burst delivers before the
``last_update`` that shows the burst is old counts as a reading, though its cycle is dropped later.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from agent.errors import PayloadError
from agent.records import Reading, Value

# How long a device's cycle may stay quiet before the assembler emits what it has. Short on
# purpose: a broker only keeps a bounded number of un-PUBACKed messages in flight (mosquitto's
# max_inflight_messages defaults to 20), so holding a cycle open too long stalls the stream.
DEFAULT_IDLE_MS: Final = 2_000
# A device clock is believed only inside [2020-01-01, receive time + 1 day]: below it the device counts
# from its boot (no NTP), above it the clock is simply wrong.
MIN_DEVICE_EPOCH_S: Final = 1_577_836_800
MAX_CLOCK_AHEAD_MS: Final = 86_400_000


def plausible_epoch_ms(seconds: float, now_ms: int) -> int | None:
    """``seconds`` as epoch milliseconds when it can be a real date near ``now_ms``, else None."""
    if not math.isfinite(seconds) or seconds < MIN_DEVICE_EPOCH_S:
        return None
    t_ms = round(seconds * 1000)
    return t_ms if t_ms <= now_ms + MAX_CLOCK_AHEAD_MS else None

# Why a message gave no reading (counted per feed; see the module docstring).
UNRECOGNISED_TOPIC: Final = "unrecognised_topic"   # not a topic this profile knows
MALFORMED: Final = "malformed"                     # a known topic whose payload cannot be decoded
STALE: Final = "stale"                             # retained or replayed values too old to be a reading
IGNORED: Final = "ignored"                         # known and deliberately not a reading (names, status, writes)
NO_READING_REASONS: Final = (UNRECOGNISED_TOPIC, MALFORMED, STALE, IGNORED)

# JSON numbers longer than this are not measurements. Python refuses to parse integers of more than
# 4300 digits (a ValueError, not a JSONDecodeError); such numbers become inf, which json_number refuses.
_MAX_INT_DIGITS: Final = 40


def is_write_topic(topic: str) -> bool:
    """True for command/write/request topics the read-only agent must never treat as data.

    OpenDTU ``.../cmd/...``, Tasmota ``cmnd/...``, Victron ``W/...`` and ``R/...`` (requests, incl.
    our own keepalive), SolarAssistant/HA ``.../set``, Shelly ``<prefix>/rpc`` (but not the
    ``<prefix>/events/rpc`` notification stream, which is data).
    """
    parts = topic.split("/")
    if not parts:
        return True
    if parts[0] in ("W", "R", "cmnd") or "cmd" in parts[:-1] or parts[-1] == "cmd":
        return True
    if parts[-1] == "set":
        return True
    return parts[-1] == "rpc" and not (len(parts) >= 2 and parts[-2] == "events")


def is_discovery_topic(topic: str) -> bool:
    """True for Home Assistant MQTT discovery documents (``homeassistant/<component>/.../config``).

    OpenDTU, SolarAssistant and older Tasmota publish them on the site's broker next to their data:
    descriptions of entities, never values, so every profile ignores them.
    """
    return topic.startswith("homeassistant/")


def parse_number(raw: bytes | str, topic: str) -> float:
    """A plain-text number (OpenDTU, SolarAssistant). NaN/inf are malformed, not readings."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        value = float(text.strip())
    except ValueError:
        raise PayloadError(f"topic={topic} payload={text[:40]!r} is not a number",
                           hint="check that the profile matches the device's firmware") from None
    if not math.isfinite(value):
        raise PayloadError(f"topic={topic} payload={text[:40]!r} is not a finite number")
    return value


def json_number(value: Any, where: str) -> float | None:
    """A JSON scalar as a finite float; None stays None; anything else is malformed."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PayloadError(f"{where}: expected a number, got {_short(value)}")
    try:
        f = float(value)
    except OverflowError:       # an int too large for a float
        raise PayloadError(f"{where}: not a finite number") from None
    if not math.isfinite(f):
        raise PayloadError(f"{where}: not a finite number")
    return f


def _short(value: Any) -> str:
    # repr of a hostile value (a 5,000-digit int, a deep list) may itself fail or be huge.
    if isinstance(value, int) and not isinstance(value, bool):
        return "an integer" if abs(value) >= 10 ** _MAX_INT_DIGITS else repr(value)
    try:
        return f"{value!r:.40}"
    except (ValueError, RecursionError):
        return type(value).__name__


def _parse_int(text: str) -> int | float:
    return int(text) if len(text) <= _MAX_INT_DIGITS else float("inf")


def _no_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON; Python accepts them unless told otherwise.
    raise PayloadError(f"payload holds {name}, which is not a JSON number")


def load_json(payload: bytes, topic: str) -> Any:
    """Parse a JSON payload or raise PayloadError naming the topic (never another exception)."""
    try:
        return json.loads(payload.decode("utf-8"), parse_int=_parse_int, parse_constant=_no_constant)
    except PayloadError as exc:
        raise PayloadError(f"topic={topic} {exc.message}",
                           hint="check that the profile matches the device's firmware") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:   # JSONDecodeError is a ValueError
        raise PayloadError(f"topic={topic} payload is not JSON ({exc.__class__.__name__})",
                           hint="check that the profile matches the device's firmware") from None


def dig(doc: Any, path: str) -> Any:
    """Follow a dotted path (``ENERGY.Power``, ``a.0.b`` for list items) or return None."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def scaled(value: float | None, factor: float) -> float | None:
    """Unit conversion that keeps None and avoids float noise like 1234567.0000000002."""
    if value is None:
        return None
    out = round(value * factor, 6)
    if not math.isfinite(out):
        raise PayloadError(f"value {value!r} out of range after unit conversion")
    return out


@dataclass(slots=True)
class _Cycle:
    """A device's current cycle: what it reported so far and which messages are still unacked."""

    time_ms: int | None                      # device-reported cycle time; None: use first_ms
    metrics: dict[str, dict[str, Value]] = field(default_factory=dict)   # device_id -> metrics
    seen: set[str] = field(default_factory=set)                          # field keys seen this cycle
    tags: list[Hashable] = field(default_factory=list)
    dirty: bool = False                      # has metrics not yet returned in a reading
    stale: bool = False                      # retained leftovers: do not emit
    first_ms: int = 0                        # receive time of the first contribution
    last_ms: int = 0                         # receive time of the latest contribution


class Assembler:
    """Per-device cycles for topic-per-field profiles.

    A cycle is flushed (its reading returned) when the profile says it ended, when a field repeats
    (the device started the next cycle), or after ``idle_ms`` without a contribution (``tick``).
    After an idle flush the cycle stays open: later fields of the same cycle are emitted again
    with the *union* of the metrics and the same time, so the upsert by event_id keeps the whole
    cycle rather than replacing it with a fragment (the outbox completes a row still queued with
    it, and Data Cloud upserts one already delivered).
    """

    def __init__(self, source: str, idle_ms: int = DEFAULT_IDLE_MS,
                 judge: Callable[[str, _Cycle], None] | None = None) -> None:
        self.source = source
        self.idle_ms = idle_ms
        # Called just before a dirty cycle is emitted: a profile may still mark it stale with what it
        # learnt since the cycle opened (OpenDTU's uptime and LWT arrive in any order in a retained burst).
        self.judge = judge
        self._cycles: dict[str, _Cycle] = {}
        self._released: list[Hashable] = []
        self._held = False
        self.touched = False       # the current message contributed to a cycle

    # -- tag bookkeeping -------------------------------------------------------------------
    def begin(self) -> None:
        self._held = False
        self.touched = False

    def finish(self, tag: Hashable | None) -> None:
        """Release ``tag`` now unless the message was attached to a pending cycle."""
        if tag is not None and not self._held:
            self._released.append(tag)

    def release(self) -> list[Hashable]:
        out, self._released = self._released, []
        return out

    def pending_tags(self) -> int:
        return sum(len(c.tags) for c in self._cycles.values())

    def reset(self) -> None:
        """Forget everything held (after a reconnect the broker redelivers unacked messages)."""
        self._cycles.clear()
        self._released.clear()

    # -- cycles ----------------------------------------------------------------------------
    def cycle(self, key: str) -> _Cycle | None:
        return self._cycles.get(key)

    def start(self, key: str, time_ms: int | None, out: list[Reading], *, stale: bool = False,
              opened_ms: int = 0) -> _Cycle:
        """Close the key's current cycle (flushing it if dirty) and open a new one.

        ``opened_ms``: receive time of the message that opened it, the cycle's time when the device
        gave none (0: the first metric's receive time).
        """
        self.flush(key, out)
        cyc = _Cycle(time_ms=time_ms, stale=stale, first_ms=opened_ms)
        self._cycles[key] = cyc
        return cyc

    def put(self, key: str, device_id: str, name: str, value: Value, now_ms: int, tag: Hashable | None,
            out: list[Reading], *, field_key: str | None = None) -> None:
        """Add one metric; a repeated field first closes the cycle (the device moved on)."""
        fk = field_key or f"{device_id}:{name}"
        cyc = self._cycles.get(key)
        if cyc is None or fk in cyc.seen:
            cyc = self.start(key, None, out)
        cyc.seen.add(fk)
        cyc.metrics.setdefault(device_id, {})[name] = value
        self.touched = True
        cyc.dirty = True
        cyc.first_ms = cyc.first_ms or now_ms
        cyc.last_ms = now_ms
        self.attach(key, tag)

    def attach(self, key: str, tag: Hashable | None) -> None:
        """Hold ``tag`` until ``key``'s cycle is flushed (the message is part of that cycle)."""
        cyc = self._cycles.get(key)
        if cyc is not None:
            self.touched = True
        if cyc is None or tag is None:
            return
        cyc.tags.append(tag)
        self._held = True

    def flush(self, key: str, out: list[Reading]) -> None:
        """Return the key's cycle as readings (unless stale) and release its tags."""
        cyc = self._cycles.get(key)
        if cyc is None:
            return
        if cyc.dirty and self.judge is not None:
            self.judge(key, cyc)
        if cyc.dirty and not cyc.stale:
            t = cyc.time_ms if cyc.time_ms is not None else cyc.first_ms
            for device_id, metrics in cyc.metrics.items():
                if any(v is not None for v in metrics.values()):     # all-null: nothing was measured
                    out.append(Reading(device_id=device_id, time_ms=t, source=self.source, metrics=dict(metrics)))
        cyc.dirty = False
        self._released.extend(cyc.tags)
        cyc.tags.clear()

    def tick(self, now_ms: int) -> list[Reading]:
        """Flush every cycle that has been quiet for ``idle_ms``."""
        out: list[Reading] = []
        for key, cyc in list(self._cycles.items()):
            if (cyc.dirty or cyc.tags) and now_ms - cyc.last_ms >= self.idle_ms:
                self.flush(key, out)
        return out

    def keys(self) -> Iterable[str]:
        return list(self._cycles)


class BaseDecoder:
    """Common ``feed`` skeleton: the read-only filter, tag release, and the assembler."""

    profile = "base"

    def __init__(self, idle_ms: int = DEFAULT_IDLE_MS) -> None:
        self.asm = Assembler(f"mqtt-{self.profile}", idle_ms, self._judge)
        self._skipped: str | None = None
        self._outcome: str | None = None
        self._salvaged: list[Reading] = []

    @property
    def outcome(self) -> str | None:
        """After ``feed``: None when the message fed a reading, else why not (NO_READING_REASONS)."""
        return self._outcome

    def skip(self, reason: str) -> None:
        """Called by a profile's ``_feed``: this message is known but gives no reading, because ``reason``."""
        self._skipped = reason

    def kept(self) -> None:
        """Called by a profile's ``_feed``: this message's values were stored for the device's next reading
        (a Shelly energy counter that rides along with the next power update), so it feeds a reading."""
        self.asm.touched = True

    def _judge(self, key: str, cycle: _Cycle) -> None:
        """Last look at a cycle before it is emitted (see ``Assembler.judge``); nothing by default."""

    def feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None = None) -> list[Reading]:
        """Decode one message; return the readings it completed (possibly none).

        Raises PayloadError for a payload the profile cannot decode; the message is then
        released (it holds nothing) and the decoder state is unchanged by it. Whatever it raises,
        the tag is released or held as usual, and readings this message completed before the
        failure (an earlier cycle it closed) are kept for ``salvage``: their tags are released, so
        they must be committed before the acks.
        """
        out: list[Reading] = []
        self.asm.begin()
        self._skipped = None
        self._outcome = MALFORMED          # what remains if _feed raises
        try:
            if is_write_topic(topic) or is_discovery_topic(topic):
                self._skipped = IGNORED
            else:
                self._feed(topic, payload, now_ms, tag, out)
        except BaseException:
            self._salvaged += out
            raise
        finally:
            self.asm.finish(tag)
        if self._skipped is not None:
            self._outcome = self._skipped
        elif out or self.asm.touched:
            self._outcome = None
        else:
            self._outcome = UNRECOGNISED_TOPIC
        return out

    def _feed(self, topic: str, payload: bytes, now_ms: int, tag: Hashable | None, out: list[Reading]) -> None:
        raise NotImplementedError

    def salvage(self) -> list[Reading]:
        """Readings completed by a ``feed`` that then raised (commit them before acking)."""
        out, self._salvaged = self._salvaged, []
        return out

    def tick(self, now_ms: int) -> list[Reading]:
        """Readings of cycles that went quiet; call about once a second."""
        return self.asm.tick(now_ms)

    def release(self) -> list[Hashable]:
        """Tags that may be acked once everything returned so far has been committed."""
        return self.asm.release()

    def reset(self) -> None:
        """Drop held state after a reconnect: the broker redelivers every unacked message."""
        self.asm.reset()

    def device_of(self, topic: str) -> str:
        """A device name for health counters and logs of a topic (best effort)."""
        parts = topic.split("/")
        return parts[1] if len(parts) > 1 else topic
