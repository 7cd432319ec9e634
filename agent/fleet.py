"""Fleet visibility: each gateway reports its own health to Data Cloud as ``solar_gateway_status``.

One record per gateway per report interval (``[fleet] interval_seconds``, 5 minutes by default),
built from what the agent already shows in ``solar-agent status`` and ``/health``, committed to the
same outbox as the readings and delivered by the same lanes. A gateway that was offline therefore
reports the intervals of its outage once the link is back: the records written meanwhile were
queued like readings.

Contract:

* Intervals are aligned to the wall clock (multiples of the interval since the epoch), so every
  gateway of a fleet reports for the same instants. The record of an interval is written when it
  ends, describes the gateway at that moment, and carries the interval's start as its event time.
* ``event_id`` is a UUIDv5 of (site id, interval start) only: a record written again for the same
  interval (after a crash, a reload) upserts the same Data Cloud row.
* ``*_new`` counters count since the previous record of this agent process (the first one: since
  the reporter started); the others are the state at the end of the interval.
* A clock that is not synchronised but plausible (after the build date) still reports, with
  ``clock_state = "unsynced"``: a gateway without NTP is exactly one a technician must see. A clock
  before the build date cannot place an interval at all: no record, logged once.
* Intervals missed while the event loop was late (never more than ``MAX_CATCH_UP``) are written with
  the same snapshot, so a busy gateway leaves no gap; a longer gap (a suspended machine) stays one.

The builder is pure; :class:`StatusReporter` is the supervised loop around it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.clock import NOT_BEFORE_MS
from agent.records import EncodedRecord, Schema, Value, check_value, encode_json, format_time

__all__ = [
    "MAX_CATCH_UP",
    "STATUS_FIELDS",
    "STATUS_NAMESPACE",
    "STATUS_OBJECT",
    "ReportState",
    "StatusBuilder",
    "StatusReporter",
    "Tallies",
    "interval_start",
    "status_event_id",
]

log = logging.getLogger(__name__)

STATUS_OBJECT: Final = "solar_gateway_status"
# The fields solar-agent fills; the schema object must have every one (it may have more: they stay null).
STATUS_FIELDS: Final = (
    "event_id", "customer_id", "date_time", "site_id", "agent_version", "interval_seconds", "uptime_seconds",
    "health_level", "health_reasons", "backlog_rows", "backlog_bytes", "oldest_backlog_age_seconds",
    "held_readings", "dead_letters", "dead_letters_new", "rejected_inputs_new", "dropped_new", "readings_new",
    "delivery_lane", "stream_last_success", "bulk_last_success", "devices_ok", "devices_total", "clock_state",
    "component_restarts",
)
# A fixed namespace, apart from the readings' one: changing it would change every status event id.
STATUS_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:solar-agent:solar_gateway_status")
MAX_CATCH_UP: Final = 3
# Data Cloud documents no length for text fields; the reasons of a sick gateway can be long (one per
# device). 1,000 characters keep every code and the first details, and the record small.
MAX_REASONS_CHARS: Final = 1000


def status_event_id(site_id: str, interval_start_ms: int) -> str:
    """Deterministic primary key of the status record of one interval of one gateway."""
    return str(uuid.uuid5(STATUS_NAMESPACE, f"{site_id}\x1f{interval_start_ms}"))


def interval_start(now_ms: int, interval_ms: int) -> int:
    """Start of the wall-clock-aligned interval that holds ``now_ms``."""
    return now_ms - now_ms % interval_ms


@dataclass(frozen=True, slots=True)
class Tallies:
    """Cumulative counters since the agent started; a record carries the difference to the previous one."""

    readings: int = 0
    dead_lettered: int = 0
    rejected_inputs: int = 0
    dropped: int = 0

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Tallies:
        t = status.get("totals") or {}
        return cls(int(t.get("readings", 0)), int(t.get("dead_lettered", 0)),
                   int(t.get("rejected_inputs", 0)), int(t.get("dropped", 0)))

    def since(self, before: Tallies | None) -> Tallies:
        if before is None:
            return Tallies()
        # max(0, ...): the outbox's drop count restarts with a salvaged file; never report negatives.
        return Tallies(max(0, self.readings - before.readings), max(0, self.dead_lettered - before.dead_lettered),
                       max(0, self.rejected_inputs - before.rejected_inputs), max(0, self.dropped - before.dropped))


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _at(ms: Any) -> str | None:
    return format_time(int(ms)) if isinstance(ms, int) and not isinstance(ms, bool) and ms >= 0 else None


@dataclass(frozen=True, slots=True)
class StatusBuilder:
    """Builds ``solar_gateway_status`` records of one site from the agent's status document."""

    schema: Schema
    site_id: str
    customer_id: str
    agent_version: str = ""

    def build(self, status: Mapping[str, Any], health: Mapping[str, Any], *, start_ms: int,
              interval_seconds: float, new: Tallies) -> dict[str, Value]:
        """One record with every schema field present, validated against the schema.

        Args:
            status: ``Agent.status()`` at the end of the interval.
            health: ``HealthReport.to_json()`` at the same moment (``level``, ``reasons``).
            start_ms: the interval's start (the event time and half of the key).
            interval_seconds: the interval's length.
            new: the counters since the previous record.
        """
        outbox = status.get("outbox") or {}
        lanes = status.get("lanes") or {}
        devices = status.get("devices") or []
        components = status.get("components") or {}
        reasons = " | ".join(str(r) for r in health.get("reasons") or [])
        record: dict[str, Value] = dict.fromkeys(self.schema.names)
        record.update(
            event_id=status_event_id(self.site_id, start_ms),
            customer_id=self.customer_id,
            date_time=format_time(start_ms),
            site_id=self.site_id,
            agent_version=self.agent_version or None,
            interval_seconds=interval_seconds,
            uptime_seconds=_number(status.get("uptime_s")),
            health_level=str(health.get("level") or "ok"),
            health_reasons=reasons[:MAX_REASONS_CHARS],
            backlog_rows=_number(outbox.get("rows")),
            backlog_bytes=_number(outbox.get("bytes")),
            oldest_backlog_age_seconds=_number(outbox.get("oldest_age_s")),
            held_readings=_number(outbox.get("held")),
            dead_letters=_number(outbox.get("dead_letters")),
            dead_letters_new=new.dead_lettered,
            rejected_inputs_new=new.rejected_inputs,
            dropped_new=new.dropped,
            readings_new=new.readings,
            delivery_lane=str(status.get("lane") or "") or None,
            stream_last_success=_at((lanes.get("stream") or {}).get("last_success_ms")),
            bulk_last_success=_at((lanes.get("bulk") or {}).get("last_success_ms")),
            devices_ok=sum(1 for d in devices if d.get("state") == "ok"),
            devices_total=len(devices),
            clock_state="synced" if (status.get("clock") or {}).get("synced") else "unsynced",
            component_restarts=sum(int(c.get("restarts", 0)) for c in components.values()),
        )
        for f in self.schema.fields:
            check_value(f, record[f.name])
        return record

    def encode(self, status: Mapping[str, Any], health: Mapping[str, Any], *, start_ms: int,
               interval_seconds: float, new: Tallies) -> EncodedRecord:
        """Build and serialise one status record for the outbox (in schema field order, like readings)."""
        record = self.build(status, health, start_ms=start_ms, interval_seconds=interval_seconds, new=new)
        return EncodedRecord(str(record["event_id"]), encode_json(record), start_ms, STATUS_OBJECT)

    def sample(self, time_ms: int) -> EncodedRecord:
        """A record with a value in every field, to check the connector's schema with (``/actions/test``)."""
        status = {"uptime_s": 1.0, "lane": "stream", "outbox": {"rows": 1, "bytes": 1, "oldest_age_s": 1.0,
                                                                 "held": 0, "dead_letters": 0},
                  "lanes": {"stream": {"last_success_ms": time_ms}, "bulk": {"last_success_ms": time_ms}},
                  "devices": [{"state": "ok"}], "clock": {"synced": True}}
        start = interval_start(time_ms, 1000)
        return self.encode(status, {"level": "ok", "reasons": ["sample"]}, start_ms=start, interval_seconds=1.0,
                           new=Tallies(1, 0, 0, 0))


@dataclass(slots=True)
class ReportState:
    """What the reporter remembers across config reloads (the agent keeps one for its whole life)."""

    last_start_ms: int | None = None     # interval start of the last record written
    baseline: Tallies | None = None      # counters at the last record
    reports: int = 0                     # records committed since the agent started
    last_report_ms: int | None = None    # wall time the last record was committed
    skipped_unsynced: int = 0            # intervals without a record: the clock was before the build date


Snapshot = Callable[[], Awaitable[tuple[dict[str, Any], dict[str, Any]]]]
Commit = Callable[[EncodedRecord], Awaitable[None]]


class StatusReporter:
    """The supervised loop: at every interval boundary, one status record into the outbox.

    Args:
        builder: the record builder of this site.
        interval_seconds: the report interval (> 0).
        snapshot: the agent's status document and health, taken together.
        commit: appends one record durably (and wakes its lane).
        state: kept by the agent across reloads.
        now_ms: the wall clock.
        sleep: waits (tests pass a fake).
    """

    def __init__(self, builder: StatusBuilder, interval_seconds: float, snapshot: Snapshot, commit: Commit,
                 state: ReportState, *, now_ms: Callable[[], int],
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self.builder = builder
        self.interval_seconds = interval_seconds
        self._interval_ms = max(1, int(interval_seconds * 1000))
        self._snapshot = snapshot
        self._commit = commit
        self.state = state
        self._now_ms = now_ms
        self._sleep = sleep

    async def run(self) -> None:
        """Report at every boundary until cancelled; a failed report propagates (the supervisor restarts us)."""
        if self.state.baseline is None:
            status, _health = await self._snapshot()
            self.state.baseline = Tallies.from_status(status)
        while True:
            now = self._now_ms()
            boundary = interval_start(now, self._interval_ms) + self._interval_ms
            # A timer to the next boundary, not a wait for something to happen: the boundary is the event.
            await self._sleep((boundary - now) / 1000)
            await self.report_due()

    def due(self, now_ms: int) -> list[int]:
        """Interval starts whose record is due at ``now_ms``, oldest first (at most ``MAX_CATCH_UP``)."""
        last_ended = interval_start(now_ms, self._interval_ms) - self._interval_ms
        first = last_ended if self.state.last_start_ms is None else self.state.last_start_ms + self._interval_ms
        first = max(first, last_ended - (MAX_CATCH_UP - 1) * self._interval_ms)
        return list(range(first, last_ended + 1, self._interval_ms))

    async def report_due(self) -> list[EncodedRecord]:
        """Write the record of every interval that ended since the last one; returns what was committed."""
        now = self._now_ms()
        starts = self.due(now)
        if not starts:
            return []      # the wall clock went back (an NTP step): that interval was reported already
        if now < NOT_BEFORE_MS:
            if not self.state.skipped_unsynced:
                log.warning("fleet: the wall clock is before this build's date; no status record until it is "
                            "set hint=timedatectl timesync-status; NTP needs UDP 123")
            self.state.skipped_unsynced += len(starts)
            return []
        status, health = await self._snapshot()
        totals = Tallies.from_status(status)
        new = totals.since(self.state.baseline)
        done: list[EncodedRecord] = []
        for start in starts:
            rec = self.builder.encode(status, health, start_ms=start, interval_seconds=self.interval_seconds,
                                      new=new)
            await self._commit(rec)
            done.append(rec)
            self.state.last_start_ms = start
            self.state.baseline = totals
            self.state.reports += 1
            self.state.last_report_ms = self._now_ms()
            new = Tallies()        # a catch-up record after the first: nothing new in between
        return done
