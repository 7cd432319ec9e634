"""Read-only access to an outbox file: for the technician's commands, with or without a running agent.

Nothing here creates or changes a file. With a ``-wal`` beside it (agent running, or crashed) the
connection shares the agent's WAL index and reads a consistent snapshot; without one, a cleanly
closed outbox is the whole truth and ``immutable`` keeps SQLite from creating ``-wal``/``-shm``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from agent.errors import OutboxError
from agent.outbox.store import BUSY_TIMEOUT_MS, _file_bytes
from agent.outbox.types import OutboxStats


@contextlib.contextmanager
def open_readonly(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to an outbox file; SQLite errors become ``OutboxError``."""
    path = Path(path)
    if not path.is_file():
        raise OutboxError(f"no outbox at {path}", hint="the agent creates it on first start; check outbox.path")
    mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot open outbox {path} read-only: {exc}",
                          hint="check the file's permissions" + ("" if os.geteuid() == 0 else " (sudo?)")) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        yield conn
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read outbox {path}: {exc}",
                          hint="the agent checks and repairs the file on its next start; `solar-agent doctor`") from exc
    finally:
        conn.close()


def read_stats(path: Path) -> OutboxStats:
    """Stats of an outbox file (for ``solar-agent status`` while the agent is down).

    Leases counted here may be crash leftovers that the next ``open`` releases.

    Raises:
        OutboxError: no file there, or it cannot be read as an outbox.
    """
    path = Path(path)
    with open_readonly(path) as conn:
        conn.execute("BEGIN")   # one snapshot for the totals and the oldest row
        meta = conn.execute(
            "SELECT rows, bytes, leased, dead_letters, dropped_total FROM meta WHERE id=1"
        ).fetchone()
        oldest = conn.execute("SELECT enqueued_ms FROM events ORDER BY seq LIMIT 1").fetchone()
        has_held = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'held'").fetchone()
        held = conn.execute("SELECT count(*) FROM held").fetchone()[0] if has_held else 0
        has_rejected = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rejected_inputs'").fetchone()
        rejected = conn.execute("SELECT count(*) FROM rejected_inputs").fetchone()[0] if has_rejected else 0
        conn.execute("COMMIT")
    if meta is None:
        raise OutboxError(f"outbox {path} has no totals row", hint="start the agent once to migrate the file")
    rows, size, leased, dead, dropped = meta
    return OutboxStats(rows, size, leased, oldest[0] if oldest else None, dead, dropped, _file_bytes(path), held,
                       rejected)
