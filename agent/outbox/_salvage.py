"""Moving a corrupt outbox aside and reading back what can still be read (best effort).

The damaged file keeps its WAL beside it under the new name (``<name>.corrupt-<stamp>-wal``) so
SQLite still applies the committed frames when we read it. Rows are read range by range and,
where a range fails, row by row, so one bad page costs only the rows on it.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)

_RANGE = 1000

# event_id, bytes, enqueued_ms, time_ms, attempts, payload, object
SalvagedEvent = tuple[str, int, int, int, int, bytes, str | None]
# event_id, payload, reason, rejected_ms, time_ms, attempts, object
SalvagedDead = tuple[str, bytes, str, int, int, int, str | None]
# boot_id, boot_ms, held_ms, reading
SalvagedHeld = tuple[str, int, int, bytes]


def move_aside(path: Path) -> Path:
    """Rename the database and its -wal/-shm to ``<name>.corrupt-<UTC stamp>``; returns the new db path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, dest)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            os.replace(side, Path(f"{dest}{suffix}"))
    return dest


def _valid_payload(payload: object) -> bool:
    if not isinstance(payload, bytes):
        return False
    try:
        return isinstance(json.loads(payload), dict)
    except ValueError:
        return False


class Salvage:
    """Reads rows out of a damaged outbox file; ``skipped`` counts what could not be read."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self.skipped = 0
        self.error: str | None = None
        self._conn: sqlite3.Connection | None = None

    def __enter__(self) -> Salvage:
        try:
            uri = f"file:{quote(str(self.src))}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            self.error = f"cannot open: {exc}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            self._conn.close()

    def _has_object(self, table: str) -> bool:
        """Whether ``table`` has the ``object`` column (migration 4); without it every row is a reading."""
        assert self._conn is not None
        try:
            return any(r[1] == "object" for r in self._conn.execute(f"PRAGMA table_info({table})"))
        except sqlite3.Error:
            return False

    def _max_seq(self) -> int | None:
        assert self._conn is not None
        for sql in ("SELECT max(seq) FROM events", "SELECT seq FROM sqlite_sequence WHERE name = 'events'"):
            try:
                row = self._conn.execute(sql).fetchone()
            except sqlite3.Error:
                continue
            if row and row[0] is not None:
                return int(row[0])
        return None

    def events(self) -> Iterator[list[SalvagedEvent]]:
        """Batches of readable event rows, oldest first."""
        if self._conn is None:
            return
        top = self._max_seq()
        if top is None:
            self.error = self.error or "events table unreadable"
            return
        cols = "event_id, bytes, enqueued_ms, time_ms, attempts, payload, " + (
            "object" if self._has_object("events") else "NULL")
        for lo in range(1, top + 1, _RANGE):
            hi = lo + _RANGE - 1
            try:
                rows = self._conn.execute(
                    f"SELECT {cols} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq", (lo, hi)
                ).fetchall()
            except sqlite3.Error:
                rows = []
                for seq in range(lo, hi + 1):
                    try:
                        one = f"SELECT {cols} FROM events WHERE seq = ?"
                        row = self._conn.execute(one, (seq,)).fetchone()
                    except sqlite3.Error:
                        self.skipped += 1
                        continue
                    if row is not None:
                        rows.append(row)
            good = [r for r in rows if isinstance(r[0], str) and _valid_payload(r[5])]
            self.skipped += len(rows) - len(good)
            if good:
                yield [(r[0], len(r[5]), int(r[2] or 0), int(r[3] or 0), int(r[4] or 0), r[5],
                        r[6] if isinstance(r[6], str) else None) for r in good]

    def dead_letters(self) -> list[SalvagedDead]:
        """The dead-letter table if it can be read whole; else nothing (counted in ``skipped``)."""
        if self._conn is None:
            return []
        try:
            obj = "object" if self._has_object("dead_letters") else "NULL"
            rows = self._conn.execute(
                f"SELECT event_id, payload, reason, rejected_ms, time_ms, attempts, {obj} FROM dead_letters"
            ).fetchall()
        except sqlite3.Error:
            self.skipped += 1
            return []
        return [r for r in rows if isinstance(r[0], str) and isinstance(r[1], bytes)]

    def held(self) -> list[SalvagedHeld]:
        """The held readings if the table can be read whole (absent before migration 2: none)."""
        if self._conn is None:
            return []
        try:
            if not self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'held'").fetchone():
                return []
            rows = self._conn.execute("SELECT boot_id, boot_ms, held_ms, reading FROM held ORDER BY id").fetchall()
        except sqlite3.Error:
            self.skipped += 1
            return []
        return [r for r in rows if isinstance(r[0], str) and isinstance(r[1], int) and _valid_payload(r[3])]
