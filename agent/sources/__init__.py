"""Sources turn devices into readings. They know nothing of the outbox or Data Cloud.

A source gets one callable, ``emit``: ``await emit(readings)`` returns only after the readings
are committed to the outbox (or counted as bad input). Only then may a source acknowledge its
peer (MQTT PUBACK). ``emit`` raises ``OutboxFatalError`` when the disk failed: let it propagate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from agent.records import Reading

Emit = Callable[[Sequence[Reading]], Awaitable[None]]


@dataclass(slots=True)
class DeviceHealth:
    """What a technician needs to know about one device (kept by its source, read by status)."""

    device: str                       # configured name or discovered device id
    source: str                       # the source's name, e.g. modbus:bus0 or mqtt:opendtu
    readings_total: int = 0
    errors: Counter[str] = field(default_factory=Counter)   # kind -> count: timeout, crc, exception, malformed, ...
    last_reading_ms: int | None = None
    last_error: str = ""
    consecutive_failures: int = 0
    state: str = "unknown"            # ok | backoff | down | unknown


@runtime_checkable
class Source(Protocol):
    """A running source. ``run`` returns only when cancelled; device errors never end it."""

    name: str

    async def run(self, emit: Emit) -> None: ...

    def health(self) -> Sequence[DeviceHealth]: ...
