"""The emulator's tables of landed records: one SQLite file, upsert by (object, primary key).

Data Cloud keeps one data lake table per object of a connector's schema file (one data stream per
object, [DS]); so does the emulator, as the ``object`` column of one table. Every read takes an
object and defaults to the store's main object (the readings), so a count of readings never
counts the gateway status records next to them.

``writes`` counts how often a key was written, so a test can prove at-least-once on the
wire and exactly-once in the table. Bulk files are validated and converted while they upload
into a ``StagedJob`` (one SQLite file per job) and land in one transaction when the job
completes.

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
CREATE TABLE IF NOT EXISTS landed_objects (
    object TEXT NOT NULL, pk TEXT NOT NULL, record JSON NOT NULL, writes INT NOT NULL, PRIMARY KEY (object, pk)
);
"""
# "WHERE true" keeps SQLite from reading ON CONFLICT as a join constraint of the SELECT.
_LAND_UPSERT = (
    "INSERT INTO landed_objects (object, pk, record, writes) SELECT ?, pk, record, 1 FROM staging.staged "
    "WHERE true ORDER BY seq "
    "ON CONFLICT (object, pk) DO UPDATE SET record = excluded.record, writes = landed_objects.writes + 1"
)
_UPSERT = (
    "INSERT INTO landed_objects (object, pk, record, writes) VALUES (?, ?, ?, 1) "
    "ON CONFLICT (object, pk) DO UPDATE SET record = excluded.record, writes = landed_objects.writes + 1"
)


class LandedStore:
    """Landed records per object. ``count``/``keys``/``rows``/``write_counts`` are for tests and the admin API.

    Args:
        path: the SQLite file (kept between runs when the caller names one).
        main_object: the object a read means when it names none.
    """

    def __init__(self, path: Path, main_object: str = "solar_panel_event") -> None:
        self.path = path
        self.main_object = main_object
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # 16 KiB pages (new files only): a 640-byte record per row lands in about half the time
        # it takes with 4 KiB pages when a 1,000,000-row bulk job completes.
        self._db.execute("PRAGMA page_size=16384")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")  # a test peer: speed over power-loss safety
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.executescript(_DDL)
        self._adopt_single_object_table()
        self._counts: dict[str, int] = {}
        self._recount()

    def _adopt_single_object_table(self) -> None:
        """A file from an emulator that kept one object only (table ``landed``): its rows are the main object's."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'landed'").fetchone():
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR IGNORE INTO landed_objects (object, pk, record, writes) "
                             "SELECT ?, pk, record, writes FROM landed", (self.main_object,))
            self._db.execute("DROP TABLE landed")
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- reads ---------------------------------------------------------------------------
    def _obj(self, obj: str | None) -> str:
        return self.main_object if obj is None else obj

    def count(self, obj: str | None = None) -> int:
        """Distinct keys landed in one object (cached; updated by every write)."""
        return self._counts.get(self._obj(obj), 0)

    def counts(self) -> dict[str, int]:
        """Distinct keys landed, per object that has any."""
        return dict(self._counts)

    def keys(self, obj: str | None = None) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT pk FROM landed_objects WHERE object = ?",
                                                   (self._obj(obj),))}

    def write_counts(self, obj: str | None = None) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT pk, writes FROM landed_objects WHERE object = ?", (self._obj(obj),)))

    def rows(self, limit: int | None = None, obj: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._db.execute("SELECT record FROM landed_objects WHERE object = ? ORDER BY pk LIMIT ?",
                                   (self._obj(obj), limit or -1))
            return [json.loads(r[0]) for r in cur]

    def get(self, pk: str, obj: str | None = None) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT record FROM landed_objects WHERE object = ? AND pk = ?",
                                   (self._obj(obj), pk)).fetchone()
        return json.loads(row[0]) if row else None

    # --- writes ---------------------------------------------------------------------------
    def upsert(self, records: Iterable[tuple[str, str]], obj: str | None = None) -> None:
        """Upsert (pk, record JSON) pairs of one object in one transaction."""
        name = self._obj(obj)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_UPSERT, ((name, pk, rec) for pk, rec in records))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._recount()

    def delete(self, pks: Iterable[str], obj: str | None = None) -> None:
        name = self._obj(obj)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM landed_objects WHERE object = ? AND pk = ?", ((name, pk) for pk in pks))
            self._db.execute("COMMIT")
            self._recount()

    def land_staged(self, staged: StagedJob, obj: str | None = None) -> None:
        """Land a completed bulk job from its staging file, all in one transaction.

        One INSERT ... SELECT in upload order: SQLite does the whole upsert (a later row of a key
        wins and counts as another write), no row passes through Python.
        """
        staged.close()
        with self._lock:
            self._db.execute("ATTACH DATABASE ? AS staging", (str(staged.path),))
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    if staged.operation == "upsert":
                        self._db.execute(_LAND_UPSERT, (self._obj(obj),))
                    else:
                        self._db.execute("DELETE FROM landed_objects WHERE object = ? AND pk IN "
                                         "(SELECT pk FROM staging.staged)", (self._obj(obj),))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                self._db.execute("DETACH DATABASE staging")
            self._recount()

    def _recount(self) -> None:
        self._counts = dict(self._db.execute("SELECT object, COUNT(*) FROM landed_objects GROUP BY object"))


class StagedJob:
    """The converted rows of one bulk job, in their own SQLite file until the job lands or is dropped.

    Each uploaded file is one transaction (``begin_file`` ... ``commit_file``/``rollback_file``),
    so a file refused half-way leaves nothing behind. Blocking methods, called from worker
    threads (the server allows one upload per job at a time). ``add`` names its file: a batch
    still being converted when its file was rolled back is dropped, never written outside that
    file's transaction (or into the next file's).
    """

    def __init__(self, path: Path, operation: str) -> None:
        self.path = path
        self.operation = operation
        self.rows = 0  # rows of committed files
        self._lock = threading.Lock()
        self._file_rows = 0
        self._file = 0  # number of the open file; 0 = none open
        self._files = 0
        self._db: sqlite3.Connection | None = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # Scratch data: no fsync; the rollback journal stays in memory (it only has to undo one file).
        self._db.execute("PRAGMA page_size=16384")
        self._db.execute("PRAGMA journal_mode=MEMORY")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE IF NOT EXISTS staged (seq INTEGER PRIMARY KEY, pk TEXT NOT NULL, record TEXT)")

    @property
    def staged_rows(self) -> int:
        """Rows staged so far, a file still uploading included."""
        return self.rows + (self._file_rows if self._file else 0)

    def begin_file(self) -> int:
        """Open the next file's transaction; returns its number for ``add``."""
        with self._lock:
            assert self._db is not None and not self._file
            self._db.execute("BEGIN IMMEDIATE")
            self._files += 1
            self._file, self._file_rows = self._files, 0
            return self._file

    def add(self, file: int, chunks: Iterable[tuple[list[str], list[str]]]) -> None:
        """Stage (pks, records) chunks of file ``file``; records are empty for a delete job."""
        with self._lock:
            if file != self._file or self._db is None:
                return  # that file was rolled back (upload refused or cancelled) meanwhile
            for pks, records in chunks:
                if records:
                    rows = zip(pks, records, strict=True)
                    self._db.executemany("INSERT INTO staged (pk, record) VALUES (?, ?)", rows)
                else:
                    self._db.executemany("INSERT INTO staged (pk) VALUES (?)", ((pk,) for pk in pks))
                self._file_rows += len(pks)

    def commit_file(self) -> int:
        """Keep the open file's rows; returns how many there were."""
        with self._lock:
            assert self._db is not None and self._file
            self._db.execute("COMMIT")
            self._file = 0
            self.rows += self._file_rows
            return self._file_rows

    def rollback_file(self) -> None:
        with self._lock:
            if self._file and self._db is not None:
                self._db.execute("ROLLBACK")
            self._file = 0

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._file = 0

    def drop(self) -> None:
        """Close and delete the staging file (job landed, aborted, failed or deleted)."""
        self.close()
        self.path.unlink(missing_ok=True)
