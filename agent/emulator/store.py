"""The emulator's table of landed records: one SQLite file, upsert by primary key.

``writes`` counts how often a key was written, so a test can prove at-least-once on the
wire and exactly-once in the table. Bulk files are validated and converted at upload (the
server keeps them as staged chunk files) and land in one transaction when the job completes.

Methods are blocking; the server calls them through ``asyncio.to_thread``. One connection
guarded by a lock (the emulator is a single writer; reads from tests are rare and small).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_DDL = """
CREATE TABLE IF NOT EXISTS landed (pk TEXT PRIMARY KEY, record JSON NOT NULL, writes INT NOT NULL);
"""
_UPSERT = (
    "INSERT INTO landed (pk, record, writes) VALUES (?, ?, 1) "
    "ON CONFLICT (pk) DO UPDATE SET record = excluded.record, writes = landed.writes + 1"
)


class LandedStore:
    """Landed records. ``count``/``keys``/``rows``/``write_counts`` are for tests and the admin API."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # a test peer: speed over power-loss safety
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.executescript(_DDL)
        self._count: int = self._db.execute("SELECT COUNT(*) FROM landed").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reads ---------------------------------------------------------------------------
    def count(self) -> int:
        """Distinct keys landed (cached; updated by every write)."""
        return self._count

    def keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT pk FROM landed")}

    def write_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT pk, writes FROM landed"))

    def rows(self, limit: int | None = None) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT record FROM landed ORDER BY pk LIMIT ?", (limit or -1,))
            return [json.loads(r[0]) for r in cur]

    def get(self, pk: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM landed WHERE pk = ?", (pk,)).fetchone()
        return json.loads(row[0]) if row else None

    # --- writes ---------------------------------------------------------------------------
    def upsert(self, records: Iterable[tuple[str, str]]) -> None:
        """Upsert (pk, record JSON) pairs in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, records)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._recount()

    def delete(self, pks: Iterable[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM landed WHERE pk = ?", ((pk,) for pk in pks))
            self._db.execute("COMMIT")
            self._recount()

    def apply_chunks(self, operation: str, chunks: Iterable[tuple[list[str], list[str]]]) -> None:
        """Land a completed bulk job: upsert (pks, records) or delete pks, all in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for pks, records in chunks:
                    if operation == "upsert":
                        self._db.executemany(_UPSERT, zip(pks, records, strict=True))
                    else:
                        self._db.executemany("DELETE FROM landed WHERE pk = ?", ((pk,) for pk in pks))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._recount()

    def _recount(self) -> None:
        self._count = self._db.execute("SELECT COUNT(*) FROM landed").fetchone()[0]
