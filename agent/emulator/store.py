"""The emulator's table of landed records: one SQLite file, upsert by primary key.

``writes`` counts how often a key was written, so a test can prove at-least-once on the
wire and exactly-once in the table. Bulk files are validated at upload into a staging table
and moved into ``landed`` with one statement when the job completes.

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
CREATE TABLE IF NOT EXISTS staged (job_id TEXT NOT NULL, seq INTEGER PRIMARY KEY, pk TEXT NOT NULL, record JSON);
CREATE INDEX IF NOT EXISTS staged_job ON staged (job_id);
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
        self._db.execute("PRAGMA synchronous=NORMAL")  # a test peer: speed over power-loss safety
        self._db.executescript(_DDL)
        self._count = self._db.execute("SELECT COUNT(*) FROM landed").fetchone()[0]

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

    def stage(self, job_id: str, rows: Iterable[tuple[str, str | None]], chunk: int = 50_000) -> int:
        """Stage one uploaded file's rows for a job, all or nothing; returns the row count.

        ``rows`` may raise mid-way (a bad CSV line): the file's rows are rolled back.
        """
        n = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                batch: list[tuple[str, str, str | None]] = []
                for pk, record in rows:
                    batch.append((job_id, pk, record))
                    if len(batch) >= chunk:
                        self._db.executemany("INSERT INTO staged (job_id, pk, record) VALUES (?, ?, ?)", batch)
                        n += len(batch)
                        batch.clear()
                self._db.executemany("INSERT INTO staged (job_id, pk, record) VALUES (?, ?, ?)", batch)
                n += len(batch)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return n

    def apply_staged(self, job_id: str, operation: str) -> None:
        """Land (upsert) or delete a completed job's staged rows, in upload order, then drop them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            if operation == "upsert":
                # WHERE is required here: it removes SQLite's ON CONFLICT parsing ambiguity.
                self._db.execute(
                    "INSERT INTO landed (pk, record, writes) SELECT pk, record, 1 FROM staged "
                    "WHERE job_id = ? ORDER BY seq "
                    "ON CONFLICT (pk) DO UPDATE SET record = excluded.record, writes = landed.writes + 1",
                    (job_id,),
                )
            else:
                self._db.execute("DELETE FROM landed WHERE pk IN (SELECT pk FROM staged WHERE job_id = ?)", (job_id,))
            self._db.execute("DELETE FROM staged WHERE job_id = ?", (job_id,))
            self._db.execute("COMMIT")
            self._recount()

    def drop_staged(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM staged WHERE job_id = ?", (job_id,))

    def _recount(self) -> None:
        self._count = self._db.execute("SELECT COUNT(*) FROM landed").fetchone()[0]
