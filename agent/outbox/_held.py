"""How a held reading is stored: compact JSON of the Reading, original (untrusted) time included.

A held reading has no record yet: its record needs the corrected time, which decides the event
id. So the Reading itself is kept, and the record is built at release, from the corrected time.
"""

from __future__ import annotations

import json
from typing import Any

from agent.errors import RecordError
from agent.records import Reading


def dump_reading(reading: Reading) -> bytes:
    """The JSON the ``held`` table stores.

    Raises:
        RecordError: a metric is not JSON (NaN, infinity, an object): no record could carry it.
    """
    doc = {
        "device_id": reading.device_id,
        "source": reading.source,
        "time_ms": reading.time_ms,
        "clock_quality": reading.clock_quality,
        "metrics": dict(reading.metrics),
    }
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise RecordError(f"device {reading.device_id}: reading cannot be stored: {exc}") from exc


def load_reading(blob: bytes) -> Reading:
    """The Reading back from ``dump_reading``'s JSON."""
    doc: dict[str, Any] = json.loads(blob)
    return Reading(
        device_id=str(doc["device_id"]),
        time_ms=int(doc["time_ms"]),
        source=str(doc["source"]),
        metrics=dict(doc["metrics"]),
        clock_quality=str(doc.get("clock_quality", "unsynced")),
    )
