"""Numbered schema migrations, each in its own transaction, recorded in ``schema_migrations``.

Append new migrations at the end; never edit one that has shipped. Statements run one by one with
``execute`` (``executescript`` would COMMIT first and break the per-migration transaction).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Final

MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (1, "events, dead letters, bulk jobs, meta", (
        # payload last: the small columns stay on the b-tree page even if a payload overflows.
        # AUTOINCREMENT: seq never goes back after deletes, so "oldest first" is strict FIFO.
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            bytes INTEGER NOT NULL,
            enqueued_ms INTEGER NOT NULL,
            time_ms INTEGER NOT NULL,
            lease_id INTEGER,
            retry_at_ms INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            payload BLOB NOT NULL
        )""",
        # One index serves "not leased, oldest first" (lease_id IS NULL) and "rows of lease N".
        "CREATE INDEX events_lease ON events(lease_id, seq)",
        """CREATE TABLE dead_letters (
            event_id TEXT PRIMARY KEY,
            payload BLOB NOT NULL,
            reason TEXT NOT NULL,
            rejected_ms INTEGER NOT NULL,
            time_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE bulk_jobs (
            lease_id INTEGER PRIMARY KEY,
            job_id TEXT,
            state TEXT NOT NULL,
            files_uploaded INTEGER NOT NULL DEFAULT 0,
            updated_ms INTEGER NOT NULL DEFAULT 0
        )""",
        # Running totals, updated in the same transactions as the rows, so stats() never scans.
        """CREATE TABLE meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            rows INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            leased INTEGER NOT NULL,
            dead_letters INTEGER NOT NULL,
            dropped_total INTEGER NOT NULL,
            next_lease_id INTEGER NOT NULL
        )""",
        "INSERT INTO meta VALUES (1, 0, 0, 0, 0, 0, 1)",
    )),
    (2, "readings held while the clock is unsynchronised", (
        # Not in `events`: a held row has no trustworthy time, hence no event_id yet, and must
        # never be leased. boot_id + boot_ms place it on the boot clock for the re-stamp;
        # reading is the JSON of the Reading (its original, untrusted time_ms included).
        # AUTOINCREMENT: release and drop_oldest walk the table oldest first by id.
        """CREATE TABLE held (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            boot_id TEXT NOT NULL,
            boot_ms INTEGER NOT NULL,
            held_ms INTEGER NOT NULL,
            reading BLOB NOT NULL
        )""",
    )),
    (3, "inputs that could not become readings (poison MQTT messages)", (
        # One row per distinct (source, topic, payload): a poison message a broker redelivers after a
        # crash, or a device repeating the same garbage, counts up instead of filling the table.
        # Capped (newest kept) by the outbox; payload_head keeps only the first bytes.
        """CREATE TABLE rejected_inputs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            source TEXT NOT NULL,
            topic TEXT NOT NULL,
            digest BLOB NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            payload_bytes INTEGER NOT NULL,
            payload_head BLOB NOT NULL,
            first_ms INTEGER NOT NULL,
            last_ms INTEGER NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            UNIQUE (source, digest)
        )""",
        "CREATE INDEX rejected_inputs_last ON rejected_inputs(last_ms)",
    )),
    (4, "the object of each row: readings and the gateway's status records share the queue", (
        # NULL is the site's reading object (datacloud.object_name), which every row written before
        # this migration is; another object (solar_gateway_status) by its schema name. ADD COLUMN with
        # a NULL default rewrites no row, so an outbox with a large backlog migrates at once.
        "ALTER TABLE events ADD COLUMN object TEXT",
        "ALTER TABLE dead_letters ADD COLUMN object TEXT",
        # A bulk job is per object: each object's lane resumes only its own jobs after a restart.
        "ALTER TABLE bulk_jobs ADD COLUMN object TEXT",
        # The other objects' rows are few (one status record per interval): a partial index leases and
        # counts them without a scan, and costs the readings' appends nothing (events_lease serves those).
        "CREATE INDEX events_object ON events(object, lease_id, seq) WHERE object IS NOT NULL",
    )),
    (5, "bulk leases as seq ranges: a backfill's lease writes one row, not a million", (
        # The lease of a bulk job holds every row of `object` with lo <= seq <= hi. Writing lease_id
        # into each row rewrote the whole backlog (a 1M-row lease: 11 s and ~1.8 GB of WAL and
        # checkpoint writes on the SD card). Sound because seq never goes back (AUTOINCREMENT): no
        # later row can fall into a range, and a range is only taken where every row of its object
        # in it was ready to lease (store.py, _t_lease_bulk).
        """CREATE TABLE bulk_ranges (
            lease_id INTEGER PRIMARY KEY,
            object TEXT,
            lo INTEGER NOT NULL,
            hi INTEGER NOT NULL
        )""",
    )),
)

LATEST: Final = MIGRATIONS[-1][0]


def applied(conn: sqlite3.Connection) -> set[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(id INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)"
    )
    return {r[0] for r in conn.execute("SELECT id FROM schema_migrations")}


def migrate(conn: sqlite3.Connection) -> list[int]:
    """Apply the missing migrations in order; returns the ids applied now."""
    done = applied(conn)
    ran: list[int] = []
    for mid, name, statements in MIGRATIONS:
        if mid in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in statements:
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO schema_migrations (id, name, applied_ms) VALUES (?, ?, ?)",
                (mid, name, int(time.time() * 1000)),
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        ran.append(mid)
    return ran
