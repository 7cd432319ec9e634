"""Records the emulator accepted for processing (202) and then dropped because they were invalid.

Data Cloud's streaming insert is fire-and-forget ([SI]): an invalid record can be accepted and never
land, and the sender is not told. The emulator keeps what it dropped, with the reasons, so a test
(or a technician rehearsing) can see what Data Cloud would have silently lost:
``GET /__emulator/dropped`` or ``Emulator.dropped``.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Final

from agent.emulator._http import now_iso

# Dropped records kept for reading (the count goes on past it).
MAX_KEPT: Final = 10_000
_RECORD_CHARS: Final = 2_000


@dataclass(frozen=True, slots=True)
class DroppedRecord:
    object: str  # the schema object the endpoint feeds
    endpoint: str  # the object endpoint it was sent to
    time: str  # when it was processed (UTC)
    record: str  # the record as JSON, cut at 2,000 characters
    reasons: tuple[str, ...]  # everit-style problems, as /actions/test would report them


class DroppedLog:
    """Thread-safe: records are dropped on the store thread and read from the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: deque[DroppedRecord] = deque(maxlen=MAX_KEPT)
        self.total = 0

    def add(self, obj: str, endpoint: str, record: Any, reasons: list[str]) -> None:
        text = json.dumps(record, separators=(",", ":"))[:_RECORD_CHARS]
        with self._lock:
            self._kept.append(DroppedRecord(obj, endpoint, now_iso(), text, tuple(reasons)))
            self.total += 1

    def records(self, limit: int | None = None) -> list[DroppedRecord]:
        with self._lock:
            kept = list(self._kept)
        return kept if limit is None else kept[-limit:] if limit > 0 else []

    def as_json(self, limit: int) -> dict[str, Any]:
        return {"count": self.total, "records": [asdict(r) for r in self.records(limit)]}
