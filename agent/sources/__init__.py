"""Sources turn devices into readings. They know nothing of the outbox or Data Cloud.

A source gets two callables. ``await emit(readings)`` returns only after the readings are
committed to the outbox (or counted as bad input), except for a source that declares
``SupportsBufferedEmit``: its emit returns once they are queued for the next group commit
(within ``outbox.commit_interval_ms``). ``await reject(item)`` returns only after an
input that cannot become readings (a poison MQTT message) is recorded durably in the outbox's
``rejected_inputs`` table. Only after one of the two may a source acknowledge its peer (MQTT
PUBACK), so a broker never loses a message and never redelivers a poison one in a loop. Both
raise ``OutboxFatalError`` when the disk failed: let it propagate.

Containment: a source handles each input (a message, a reply) in its own guard; an exception
while handling one input rejects that input with a reason and the source goes on. An exception
that escapes ``run`` anyway is the supervisor's (agent/supervise.py): it restarts the source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from agent.records import PAYLOAD_HEAD_BYTES, Reading, RejectedInput

Emit = Callable[[Sequence[Reading]], Awaitable[None]]

Reject = Callable[[RejectedInput], Awaitable[None]]

__all__ = ["PAYLOAD_HEAD_BYTES", "DeviceHealth", "Emit", "FeedHealth", "Reject", "RejectedInput", "Source",
           "SupportsBufferedEmit", "SupportsCommitRequest", "SupportsFeedHealth"]


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


@dataclass(slots=True)
class FeedHealth:
    """What status and health need to know about one MQTT feed as a whole."""

    source: str
    url: str
    connected: bool
    ever_connected: bool
    last_connect_error: str
    received_total: int
    outcomes: dict[str, int]               # outcome -> messages
    last_message_ms: int | None
    last_reading_ms: int | None            # receive time of the last message that fed a reading
    example_topic: str                     # the last topic that could have given a reading and did not, and why
    example_reason: str
    last_unusable_ms: int | None = None    # receive time of that message (ignored ones never count)


@runtime_checkable
class SupportsFeedHealth(Protocol):
    """Optional capability of a push source (MQTT): health of the feed as a whole, and a hook the
    agent sets to count every input by outcome (``reading`` or why no reading came of it)."""

    on_outcome: Callable[[str, str], None] | None

    def feed_health(self) -> FeedHealth: ...


@runtime_checkable
class SupportsBufferedEmit(Protocol):
    """Optional capability of a source with nothing to acknowledge (Modbus polls): its ``emit`` may
    return before the commit. A power cut then loses at most ``outbox.commit_interval_ms`` of its
    readings, and its poll timing never waits for a commit. Never for a source that acks its peer."""

    buffered_emit: Literal[True]


@runtime_checkable
class SupportsCommitRequest(Protocol):
    """Optional capability of a source whose acks wait for commits (MQTT): the agent sets
    ``request_commit`` to a callable that makes the outbox commit the waiting appends now instead
    of at the end of ``outbox.commit_interval_ms``, for when the peer stops sending until it gets acks."""

    request_commit: Callable[[], None] | None


@runtime_checkable
class Source(Protocol):
    """A running source. ``run`` returns only when cancelled; device errors never end it."""

    name: str

    async def run(self, emit: Emit, reject: Reject | None = None) -> None: ...

    def health(self) -> Sequence[DeviceHealth]: ...
