"""The SQLite outbox: one writer thread, group commit, leases, dead letters, the bulk journal.

Contract (the package docstring has the whole of it):

* Every method that writes runs in an explicit ``BEGIN IMMEDIATE`` transaction on the writer
  thread. ``append``, ``ack``, ``reject``, ``requeue_dead_letters`` and ``save_job`` return after
  a COMMIT made with the configured ``synchronous`` level (FULL by default).
* Leases are soft state. A stream lease (``lease``) lives only in a TEMP table of the writer's
  connection (``soft_leases``, a few rows in SQLite's page cache): it writes nothing to the outbox
  file but the totals row, where marking the rows
  rewrote every page holding them (about the payload's size again in WAL frames, per delivered
  batch: SD-card wear). A bulk lease (``lease_bulk``) is one row of ``bulk_ranges`` (migration 5):
  every row of its object with ``lo <= seq <= hi``, which is why ``lease``, ``when_full`` and the
  lease look-ups walk the gaps between ranges; only when a leased or waiting row sits inside the
  window are the rows marked one by one (``lease_id``). ``lease_bulk`` and ``nack`` commit with
  ``synchronous=NORMAL``. Either way
  a power cut may only forget the lease (the rows go back to the queue, which ``open`` does for
  every crash leftover anyway); in WAL mode the file stays consistent, and the next durable commit
  syncs the WAL up to and including it.
* ``open`` releases every lease left by a crash, except the rows of a bulk job recorded in
  ``bulk_jobs`` in a non-terminal state: the bulk lane resumes that job and acks or nacks them.
* Running totals live in the one-row ``meta`` table, updated in the same transactions, so
  ``stats`` costs two index look-ups whatever the backlog.
* Only one ``Outbox`` may have a file open (an ``flock`` on ``<path>.lock``): a second writer would
  release the first one's leases. ``read_stats`` takes no lock and writes nothing.
* Held readings (``hold`` / ``release_held``) live in their own ``held`` table, outside the queue:
  they have no trustworthy time, so no event id yet, and no lease ever sees them. ``release_held``
  moves them to the queue re-stamped, or to the dead letters when their boot is gone, one
  transaction per chunk, so a crash leaves every reading in exactly one of the two places.
* Each row knows its object (``events.object``, migration 4): NULL for the site's readings, the
  schema object's name for the gateway's own status records. ``lease``/``lease_bulk``/``object_stats``
  take one object (``obj``, None = readings), so each object has its own lanes; ack, nack and reject
  work by lease and keep the object; dead letters, requeue and salvage carry it along.
* ``sqlite3`` errors are translated here: disk full, I/O and other storage errors become
  ``OutboxFatalError`` (and every later call raises it too); the process must exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar
from urllib.parse import quote

from agent.config import OutboxConfig
from agent.errors import OutboxError, OutboxFatalError, OutboxFullError, RecordError
from agent.outbox import _held, _schema
from agent.outbox._salvage import Salvage, move_aside
from agent.outbox._writer import WriterThread
from agent.outbox.types import (
    ANY_OBJECT,
    TERMINAL_JOB_STATES,
    AppendResult,
    BulkJobRecord,
    DeadLetter,
    HeldReading,
    Lease,
    LeasedRow,
    OutboxStats,
    RejectedRow,
    ReleaseResult,
)
from agent.records import EncodedRecord, Reading, RejectedInput, encode_json

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

BUSY_TIMEOUT_MS: Final = 5000
_IN_CHUNK: Final = 500          # ids per IN (...) list, well under SQLite's variable limit
_DROP_LOG_INTERVAL_MS: Final = 60_000
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_SQLITE_FULL: Final = 13
_SQLITE_IOERR: Final = 10
# Distinct rejected inputs kept (newest first): enough to see every kind of garbage a site sends,
# bounded so a device spewing unique garbage cannot grow the file.
REJECTED_INPUTS_CAP: Final = 1000
# The WAL file stays at most this large after a checkpoint (SQLite's journal_size_limit): a surge
# (a bulk lease, a salvage) must not keep its WAL's disk space for ever on a small SD card.
WAL_SIZE_LIMIT_BYTES: Final = 8 * 1024 * 1024
# A lingering group of this much payload commits at once: a commit costs about seven pages
# whatever it holds (the table's last page, both indexes, the totals row, sqlite_sequence, the
# header page, the WAL's last file block), under a fifth of this. So a busy site commits every
# second or two and loses at most that in a power cut; commit_interval_ms bounds the quiet ones.
GROUP_COMMIT_BYTES: Final = 128 * 1024
# Pages the WAL may hold before a commit moves them into the main file. A page written many times
# between two checkpoints is copied once: a larger WAL copies less (SD-card wear), measured on the
# reference site (bench/wear.py). Within the journal_size_limit above, so the file stays that size.
WAL_AUTOCHECKPOINT_PAGES: Final = 1000
# What a commit of N payload bytes may cost on disk before the next checkpoint: the WAL holds every
# page the transaction wrote (table, index and freelist pages, the totals row, frame headers):
# measured 3 to 6 times the payload for 20-record appends (with drop_oldest deleting as much); then
# the main file grows by the new pages at the checkpoint. Judging the free-space floor by the
# payload alone let the WAL eat the floor (issue #12). Overestimating only drops a little earlier.
_DISK_COST_FACTOR: Final = 8
# Closer than this to the floor, appends checkpoint the WAL before measuring (twice SQLite's
# default auto-checkpoint of 1000 pages of 4 KiB: what the WAL can hold that the main file lacks).
_CHECKPOINT_MARGIN_BYTES: Final = 2 * 1000 * 4096
_DISK_COST_OVERHEAD: Final = 16 * 4096


_OLDEST_READING: Final = "SELECT enqueued_ms FROM events WHERE object IS NULL ORDER BY seq LIMIT 1"
# Rows no lease holds: neither a bulk lease (in the row) nor a stream lease (in the TEMP table).
_UNLEASED: Final = "lease_id IS NULL AND seq NOT IN (SELECT seq FROM soft_leases)"
_SOFT_LEASE: Final = "seq IN (SELECT seq FROM soft_leases WHERE lease_id = ?)"
_SOFT_LEASED: Final = "seq IN (SELECT seq FROM soft_leases)"
# The bulk lease of a row: in the row (lease_id), or a range of its object's seqs (bulk_ranges).
BULK_LEASE_OF_ROW: Final = ("coalesce(lease_id, (SELECT r.lease_id FROM bulk_ranges r "
                            "WHERE r.object IS events.object AND events.seq BETWEEN r.lo AND r.hi))")
# seq bounds (exclusive) of the part of the queue outside every bulk range: see _gaps.
_SEQ_END: Final = 2**63 - 1
# An ack rewrites at most this many other rows to empty the table in one go (_t_delete_leased):
# they fit SQLite's page cache, so the TEMP copy never touches the disk.
_ACK_KEEP_MAX: Final = 1000


def _union(stored: bytes, later: bytes) -> bytes | None:
    """Two copies of one record as one: the stored copy, with the fields only the later one has.

    A value the stored copy has is kept: a cycle re-emitted fuller repeats it anyway, and a copy
    assembled again from redelivered messages after a restart may have mixed in another cycle's.
    None when the later copy adds nothing, or when either is not a JSON object (not a record this
    agent wrote: leave the row alone).
    """
    try:
        a, b = json.loads(stored), json.loads(later)
    except ValueError:
        return None
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    added = {k: v for k, v in b.items() if v is not None and a.get(k) is None}
    if not added:
        return None
    a.update(added)
    return encode_json(a)


def _disk_cost(payload_bytes: int) -> int:
    return payload_bytes * _DISK_COST_FACTOR + _DISK_COST_OVERHEAD


def _statvfs_free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _chunks(items: Sequence[T], n: int = _IN_CHUNK) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


@dataclasses.dataclass(slots=True)
class _Totals:
    rows: int
    bytes: int
    leased: int
    dead_letters: int
    dropped_total: int
    next_lease_id: int
    # Held rows and rejected inputs are not in `meta` (migration 1 fixed its columns); open() counts them.
    held: int = 0
    held_bytes: int = 0
    rejected: int = 0


class _Corrupt(Exception):
    """quick_check or the file header says the database is damaged."""


class Outbox:
    """The durable queue between the sources and Data Cloud (see the module docstring).

    Args:
        config: path, synchronous level, byte cap, free-space floor and full policy.
        now_ms: wall clock in epoch milliseconds; tests inject their own.
        disk_free: free bytes of the file system holding a directory (statvfs; tests give a small disk).
    """

    def __init__(self, config: OutboxConfig, *, now_ms: Callable[[], int] = _wall_ms,
                 disk_free: Callable[[Path], int] = _statvfs_free) -> None:
        self._config = config
        self._disk_free = disk_free
        self._path = Path(config.path)
        self._now_ms = now_ms
        self._sync_full = config.synchronous == "full"
        self._wal_fd: int | None = None     # the syncer thread's handle on the WAL (synchronous=full)
        self._writer: WriterThread | None = None
        self._conn: sqlite3.Connection | None = None     # touched on the writer thread only
        self._lock_fd: int | None = None
        self._t = _Totals(0, 0, 0, 0, 0, 1)
        self._fatal: OutboxFatalError | None = None
        self._drops_unlogged = 0
        self._drop_logged_ms: int | None = None
        self.commits = 0              # every COMMIT (exposed for tests and metrics)
        self.append_commits = 0       # COMMITs of append groups: fewer than append calls under load
        self._soft: set[int] = set()  # open stream leases (their rows are in the soft_leases TEMP table)
        # Bulk leases held as ranges (bulk_ranges, mirrored here): lease id -> (object, lo, hi).
        self._ranges: dict[int, tuple[str | None, int, int]] = {}
        self.corrupt_moved_to: Path | None = None   # set by open() when it moved a damaged file aside
        self.salvaged_rows = 0

    @property
    def path(self) -> Path:
        return self._path

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the file, check it, salvage it if damaged, release crash leftovers."""
        if self._writer is not None:
            raise OutboxError(f"outbox {self._path} is already open")
        writer = WriterThread(f"outbox-writer[{self._path.name}]", self._t_append_group,
                              linger_seconds=self._config.commit_interval_ms / 1000,
                              sync=self._sync_wal if self._sync_full else None, group_bytes=GROUP_COMMIT_BYTES)
        writer.start()
        self._writer = writer
        try:
            await writer.call(functools.partial(self._guarded, self._t_open))
        except BaseException:
            await self._shutdown(writer)
            raise

    async def close(self) -> None:
        """Finish queued operations, close the connection, stop the thread. Idempotent."""
        writer = self._writer
        if writer is not None:
            await self._shutdown(writer)

    async def _shutdown(self, writer: WriterThread) -> None:
        fut = writer.call(self._t_close, barrier=True)     # the waiting appends commit first
        writer.stop()
        try:
            await fut
        finally:
            await asyncio.to_thread(writer.join)
            self._writer = None

    async def __aenter__(self) -> Outbox:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- queue operations --------------------------------------------------------------------

    async def append(self, records: Sequence[EncodedRecord]) -> AppendResult:
        """Store records durably; returns after the COMMIT that holds them, made at once.

        Appends waiting together share it (group commit), and so do those queued by ``enqueue``.

        Raises:
            OutboxFullError: the cap or the floor is hit and ``when_full`` is ``reject_new``, or
                ``drop_oldest`` cannot free enough (everything left is leased). Nothing is stored.
            OutboxFatalError: the commit failed (disk full, I/O error).
        """
        if not records:
            return AppendResult(0, 0, 0)
        writer = self._require_open()
        result: AppendResult = await writer.call_grouped(list(records), urgent=True)
        return result

    def enqueue(self, records: Sequence[EncodedRecord]) -> asyncio.Future[AppendResult]:
        """Queue records for the next group commit and return at once; the future settles at the commit.

        The commit comes within ``commit_interval_ms`` (sooner under load, after ``commit_soon``, or
        with an ``append``), shared by every record queued meanwhile: one commit instead of one per
        poll and source is what spares an SD card. Until then a power cut loses the records, so only
        a caller with nothing to acknowledge (a Modbus poll) may go on without awaiting the future;
        an MQTT feed awaits it before its acks. Errors are ``append``'s, in the future; a closed or
        failed outbox raises here.
        """
        writer = self._require_open()
        if not records:
            done: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
            done.set_result(AppendResult(0, 0, 0))
            return done
        fut: asyncio.Future[AppendResult] = writer.call_grouped(
            list(records), weight=sum(len(r.payload) for r in records))
        return fut

    async def flush(self) -> None:
        """Commit what ``enqueue`` has queued now; returns after that commit (a stop's first step)."""
        writer = self._require_open()
        await writer.call(lambda: None, barrier=True)

    async def checkpoint(self) -> None:
        """Commit what is queued and move the whole WAL into the main file (a measurement's edge)."""
        writer = self._require_open()
        await writer.call(functools.partial(self._guarded, self._t_checkpoint), barrier=True)

    def _t_checkpoint(self) -> None:
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def commit_soon(self) -> None:
        """Commit the appends waiting for ``commit_interval_ms`` now (an MQTT feed's ack window is full)."""
        if self._writer is not None:
            self._writer.commit_soon()

    async def lease(self, max_records: int, max_bytes: int, older_than_ms: int | None = None, *,
                    obj: str | None = None) -> Lease | None:
        """Lease ready rows of one object, oldest first, up to ``max_records`` and ``max_bytes`` of payload.

        At least one row is leased when any is ready, even if it alone is bigger than ``max_bytes``.
        ``older_than_ms`` keeps to rows enqueued before that wall time. ``obj`` is the object (None:
        the readings). None when nothing is ready.
        """
        lease: Lease | None = await self._call(self._t_lease, max_records, max_bytes, older_than_ms, obj)
        return lease

    async def lease_bulk(
        self, max_records: int, max_bytes: int | None = None, older_than_ms: int | None = None, *,
        obj: str | None = None,
    ) -> Lease | None:
        """Like ``lease`` but only marks the rows (``rows == ()``); read them with ``iter_lease``."""
        lease: Lease | None = await self._call(self._t_lease_bulk, max_records, max_bytes, older_than_ms, obj)
        return lease

    async def iter_lease(self, lease: Lease, chunk_rows: int = 5000) -> AsyncIterator[list[bytes]]:
        """The payloads still in ``lease``, in queue order, ``chunk_rows`` at a time."""
        after = 0
        while True:
            chunk: list[tuple[int, bytes]] = await self._call(self._t_chunk, lease.id, after, chunk_rows)
            if not chunk:
                return
            after = chunk[-1][0]
            yield [p for _, p in chunk]
            if len(chunk) < chunk_rows:
                return

    async def ack(self, lease: Lease, event_ids: Collection[str] | None = None) -> int:
        """Delete delivered rows of ``lease`` (all of them when ``event_ids`` is None); returns the count."""
        ids = None if event_ids is None else list(event_ids)
        return await self._call(self._t_ack, lease.id, ids)

    async def nack(self, lease: Lease, retry_at_ms: int, event_ids: Collection[str] | None = None) -> int:
        """Return rows of ``lease`` to the queue, invisible until ``retry_at_ms``; attempts + 1."""
        ids = None if event_ids is None else list(event_ids)
        return await self._call(self._t_nack, lease.id, retry_at_ms, ids)

    async def reject(self, lease: Lease, reasons: Mapping[str, str]) -> int:
        """Move the named rows of ``lease`` to the dead-letter table with their reason; others stay leased."""
        return await self._call(self._t_reject, lease.id, dict(reasons))

    async def stats(self) -> OutboxStats:
        return await self._call(self._t_stats)

    async def object_stats(self, obj: str | None = None) -> OutboxStats:
        """``stats`` of one object's queued rows (None: the readings): rows, bytes, leased, oldest.

        The other fields (dead letters, drops, held, rejected inputs, file size) are the whole file's.
        """
        return await self._call(self._t_object_stats, obj)

    async def peek(self, limit: int = 20, *, obj: str | None = ANY_OBJECT) -> list[LeasedRow]:
        """The oldest queued rows (leased or not), without leasing them; of one object, or of all."""
        return await self._call(self._t_peek, limit, obj)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self._call(self._t_dead_letters, limit)

    async def requeue_dead_letters(self, event_ids: Collection[str] | None = None) -> int:
        """Put dead letters back in the queue (all when ``event_ids`` is None).

        Returns how many left the dead-letter table.

        A requeue is a technician's decision, so it is not subject to the byte cap.
        """
        ids = None if event_ids is None else list(event_ids)
        return await self._call(self._t_requeue, ids)

    # ---- readings held while the clock is unsynchronised ---------------------------------------

    async def hold(self, items: Sequence[HeldReading]) -> int:
        """Store readings that have no trustworthy time yet; durable when it returns.

        They share the byte cap and the free-space floor with the queue: when either would be
        passed, ``drop_oldest`` deletes the oldest *held* rows (counted in ``dropped_total``) and
        ``reject_new`` raises. Returns how many were stored.

        Raises:
            RecordError: a reading cannot be serialised (a metric that is not JSON). Nothing is stored.
            OutboxFullError: see above. Nothing is stored.
            OutboxFatalError: the commit failed.
        """
        if not items:
            return 0
        rows = [(h.boot_id, h.boot_ms, _held.dump_reading(h.reading)) for h in items]
        return await self._call(self._t_hold, rows)

    async def held_count(self) -> int:
        """How many readings are held (none of them is leasable)."""
        return await self._call(lambda: self._t.held)

    async def release_held(
        self,
        restamp: Callable[[str, int], int | None],
        encode: Callable[[Reading], EncodedRecord],
        *,
        boot_id: str,
        limit: int = 5000,
    ) -> ReleaseResult:
        """Move held readings to the queue with their corrected time, oldest first.

        Each held row, in one transaction per ``limit`` rows:

        * from ``boot_id`` (the running boot) and ``restamp(boot_id, boot_ms)`` gives a time: it
          is queued as ``encode(reading with that time, clock_quality="restamped")``, so its
          event id comes from the corrected time; a row already queued under that id is kept;
        * from another boot: its boot clock is gone, so its time can never be known. It goes to
          the dead letters, encoded with its original time and ``clock_quality="unsynced"``, with
          the reason ``clock never synchronised during boot <id>; reading time unknown``.
          Requeueing it is a technician's decision;
        * otherwise (``restamp`` says None: not yet) or when ``encode`` raises ``RecordError``, it
          stays held.

        Args:
            restamp: (boot id, boot ms) -> corrected epoch ms or None. Runs on the writer thread:
                it must be a pure, fast function (a snapshot of the clocks, not a clock read).
            encode: the record builder's ``encode``; also runs on the writer thread.
            boot_id: the running boot; rows of any other boot are lost.
            limit: rows per transaction.
        """
        if limit < 1:
            raise OutboxError(f"release_held: limit must be >= 1 (got {limit})")
        total = ReleaseResult()
        after = 0
        while True:
            part, after = await self._call(self._t_release_chunk, restamp, encode, boot_id, after, limit)
            total = _merge(total, part)
            if after < 0:
                return total

    # ---- inputs that could not become readings ------------------------------------------------

    async def record_rejected(self, item: RejectedInput) -> None:
        """Record a poison input; durable when it returns (the source acks the input after).

        The same input again (same source, topic and payload) counts up its row, except when the
        peer marked it redelivered: a copy of an input recorded just before a crash. Beyond
        ``REJECTED_INPUTS_CAP`` rows the least recently seen go. Not subject to the byte cap: the
        table is bounded by itself.
        """
        await self._call(self._t_record_rejected, item)

    async def rejected_inputs(self, limit: int = 100) -> list[RejectedRow]:
        """The most recently seen rejected inputs, newest first."""
        return await self._call(self._t_rejected_inputs, limit)

    # ---- bulk journal --------------------------------------------------------------------------

    async def save_job(self, job: BulkJobRecord) -> None:
        """Insert or update the job (keyed by lease id); durable when it returns."""
        await self._call(self._t_save_job, job)

    async def jobs(self, obj: str | None = ANY_OBJECT) -> list[BulkJobRecord]:
        """The journaled bulk jobs, of one object (None: the readings) or of all."""
        return await self._call(self._t_jobs, obj)

    async def delete_job(self, lease_id: int) -> None:
        await self._call(self._t_delete_job, lease_id)

    # ---- plumbing ------------------------------------------------------------------------------

    def _require_open(self) -> WriterThread:
        if self._fatal is not None:
            raise self._fatal
        if self._writer is None:
            raise OutboxError("outbox is not open", hint="call open() or use `async with Outbox(...)`")
        return self._writer

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        writer = self._require_open()
        return await writer.call(functools.partial(self._guarded, fn, *args, **kwargs))

    def _guarded(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._fatal is not None:
            raise self._fatal
        try:
            return fn(*args, **kwargs)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> OutboxError:
        name = getattr(exc, "sqlite_errorname", type(exc).__name__)
        if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
            return OutboxError(f"outbox {self._path}: {name}: {exc}")
        primary = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if primary == _SQLITE_FULL:
            hint = (f"free disk space under {self._path.parent} or lower outbox.max_bytes; "
                    "the agent exits for systemd to restart it")
        elif primary == _SQLITE_IOERR:
            hint = ("the storage failed (check dmesg and the SD card/disk health); "
                    "the agent exits for systemd to restart it")
        else:
            hint = "the agent exits for systemd to restart it; if this repeats, move the outbox file aside"
        err = OutboxFatalError(f"outbox {self._path}: cannot commit: {name}: {exc}", hint=hint)
        self._fatal = err
        log.critical("outbox fatal error path=%s error=%s hint=%s", self._path, name, hint)
        return err

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, with the totals written in the same transaction."""
        conn = self._conn
        assert conn is not None
        saved = dataclasses.replace(self._t)
        soft = not durable and self._sync_full
        if soft:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if self._t != saved:
                    t = self._t
                    conn.execute(
                        "UPDATE meta SET rows=?, bytes=?, leased=?, dead_letters=?, dropped_total=?, "
                        "next_lease_id=? WHERE id=1",
                        (t.rows, t.bytes, t.leased, t.dead_letters, t.dropped_total, t.next_lease_id),
                    )
                conn.execute("COMMIT")
            except BaseException:
                self._t = saved
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            self.commits += 1
        finally:
            if soft:
                conn.execute("PRAGMA synchronous=FULL")

    # ---- writer-thread side: open/close --------------------------------------------------------

    def _t_open(self) -> None:
        path = self._path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._t_lock()
        try:
            conn = self._t_connect_checked()
        except _Corrupt as exc:
            conn = self._t_recover(str(exc))
        self._conn = conn
        row = conn.execute(
            "SELECT rows, bytes, leased, dead_letters, dropped_total, next_lease_id FROM meta WHERE id=1"
        ).fetchone()
        self._t = _Totals(*row)
        self._t.held, self._t.held_bytes = conn.execute(
            "SELECT count(*), coalesce(sum(length(reading)), 0) FROM held").fetchone()
        self._t.rejected = conn.execute("SELECT count(*) FROM rejected_inputs").fetchone()[0]
        self._t_release_leftovers()
        # Stream leases: on this connection only, never in the outbox file (see the module docstring).
        conn.execute("CREATE TEMP TABLE soft_leases (seq INTEGER PRIMARY KEY, lease_id INTEGER NOT NULL)")
        conn.execute("CREATE INDEX temp.soft_leases_lease ON soft_leases (lease_id)")
        self._soft.clear()

    def _t_lock(self) -> None:
        lock_path = self._path.with_name(self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise OutboxError(
                f"outbox {self._path} is open in another process",
                hint="stop the agent first (systemctl stop solar-agent), or use `solar-agent status` to read it",
            ) from exc
        self._lock_fd = fd

    def _t_connect(self) -> sqlite3.Connection:
        if not self._path.exists():
            # Create it ourselves so the mode is 0600; SQLite gives -wal/-shm the same mode.
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(self._path, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _t_connect_checked(self) -> sqlite3.Connection:
        self._t_check()
        conn = self._t_connect()
        try:
            self._t_pragmas(conn)
            _schema.migrate(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_corruption(exc):
                raise _Corrupt(str(exc)) from exc
            raise
        return conn

    def _t_pragmas(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._sync_full else 'NORMAL'}")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        # Debian's SQLite (Raspberry Pi OS too) is built with SECURE_DELETE: every page an ack frees
        # is zeroed and written again. FAST zeroes only what is written anyway: measured, acks wrote
        # 1.5x the payload of the rows they deleted before, 1.0x after (bench/wear.py).
        conn.execute("PRAGMA secure_delete=FAST")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")

    def _t_check(self) -> None:
        """PRAGMA quick_check on a read-only connection.

        Read-only, because closing the last read-write connection checkpoints the WAL into the
        main file: on a damaged file that would rewrite the evidence we are about to move aside.
        """
        if not self._path.exists() or self._path.stat().st_size == 0:
            return
        try:
            ro = sqlite3.connect(f"file:{quote(str(self._path))}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error:
            return   # the read-write open below reports what is wrong
        try:
            result = [r[0] for r in ro.execute("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise _Corrupt(str(exc)) from exc
            raise
        finally:
            ro.close()
        if result != ["ok"]:
            raise _Corrupt("; ".join(str(r) for r in result[:5]))

    def _t_recover(self, reason: str) -> sqlite3.Connection:
        moved = move_aside(self._path)
        self.corrupt_moved_to = moved
        conn = self._t_connect()
        self._t_pragmas(conn)
        _schema.migrate(conn)
        self._conn = conn
        self._t = _Totals(0, 0, 0, 0, 0, 1)
        started = time.monotonic()
        with Salvage(moved) as old:
            for batch in old.events():
                with self._tx() as c:
                    before = c.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
                    c.executemany(
                        "INSERT OR IGNORE INTO events (event_id, bytes, enqueued_ms, time_ms, attempts, payload, "
                        "object) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        batch,
                    )
                    n, b = c.execute("SELECT count(*), total(bytes) FROM events WHERE seq > ?", (before,)).fetchone()
                    self._t.rows += n
                    self._t.bytes += int(b)
                    self.salvaged_rows += n
            dead = old.dead_letters()
            if dead:
                with self._tx() as c:
                    c.executemany("INSERT OR IGNORE INTO dead_letters (event_id, payload, reason, rejected_ms, "
                                  "time_ms, attempts, object) VALUES (?, ?, ?, ?, ?, ?, ?)", dead)
                    self._t.dead_letters = c.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            held = old.held()
            if held:
                with self._tx() as c:
                    c.executemany("INSERT INTO held (boot_id, boot_ms, held_ms, reading) VALUES (?, ?, ?, ?)", held)
                    self._t.held += len(held)
                    self._t.held_bytes += sum(len(h[3]) for h in held)
        log.error(
            "outbox was corrupt and has been replaced path=%s moved_to=%s reason=%r salvaged_rows=%d "
            "salvaged_dead_letters=%d salvaged_held=%d unreadable=%d salvage_error=%s took_ms=%d hint=%s",
            self._path, moved, reason, self.salvaged_rows, len(dead), len(held), old.skipped, old.error,
            (time.monotonic() - started) * 1000,
            "readings on damaged pages are lost; check the storage (dmesg, SD card wear) and keep "
            f"{moved.name} for analysis or delete it",
        )
        return conn

    def _t_release_leftovers(self) -> None:
        terminal = sorted(TERMINAL_JOB_STATES)
        live = f"(SELECT lease_id FROM bulk_jobs WHERE state NOT IN ({_marks(len(terminal))}))"
        with self._tx() as conn:
            conn.execute(f"UPDATE events SET lease_id = NULL WHERE lease_id IS NOT NULL AND lease_id NOT IN {live}",
                         terminal)
            released = conn.execute("SELECT changes()").fetchone()[0]
            for lease_id, obj, lo, hi in conn.execute(
                    f"SELECT lease_id, object, lo, hi FROM bulk_ranges WHERE lease_id NOT IN {live}", terminal
            ).fetchall():
                released += self._t_range_rows(conn, (obj, lo, hi))
                conn.execute("DELETE FROM bulk_ranges WHERE lease_id = ?", (lease_id,))
            ranges = {r[0]: (r[1], r[2], r[3])
                      for r in conn.execute("SELECT lease_id, object, lo, hi FROM bulk_ranges")}
            self._t.leased = conn.execute("SELECT count(*) FROM events WHERE lease_id IS NOT NULL").fetchone()[0]
            self._t.leased += sum(self._t_range_rows(conn, span) for span in ranges.values())
        self._ranges = ranges
        if released:
            log.info("outbox released leases left by a previous run path=%s rows=%d kept_for_bulk=%d",
                     self._path, released, self._t.leased)

    def _t_range_rows(self, conn: sqlite3.Connection, span: tuple[str | None, int, int]) -> int:
        obj, lo, hi = span
        n: int = conn.execute("SELECT count(*) FROM events WHERE seq BETWEEN ? AND ? AND object IS ?",
                              (lo, hi, obj)).fetchone()[0]
        return n

    def _gaps(self, obj: str | None) -> list[tuple[int, int]]:
        """The seq intervals (exclusive bounds, in order) outside every bulk range of ``obj`` (ANY_OBJECT: of any).

        Rows in a range have no lease_id, so "not leased" must skip the ranges; walking the gaps
        does it by seq bounds that the indexes serve, instead of stepping over a million rows.
        """
        spans = sorted((lo, hi) for o, lo, hi in self._ranges.values() if obj == ANY_OBJECT or o == obj)
        gaps: list[tuple[int, int]] = []
        after = 0
        for lo, hi in spans:
            if lo > after + 1:
                gaps.append((after, lo))
            after = max(after, hi)
        gaps.append((after, _SEQ_END))
        return gaps

    def _lease_cond(self, lease_id: int) -> tuple[str, tuple[Any, ...]]:
        """SQL condition (and its arguments) for the rows of a lease: stream, bulk range or bulk in-row."""
        if lease_id in self._soft:
            return _SOFT_LEASE, (lease_id,)
        span = self._ranges.get(lease_id)
        if span is not None:
            obj, lo, hi = span
            return "seq BETWEEN ? AND ? AND object IS ?", (lo, hi, obj)
        return "lease_id = ?", (lease_id,)

    def _t_close(self) -> None:
        if self._wal_fd is not None:        # the syncer is idle: close waits for it (a barrier)
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ---- writer-thread side: append (group commit) -----------------------------------------------

    def _t_append_group(self, items: Sequence[list[EncodedRecord]]) -> list[Any]:
        if self._fatal is not None:
            return [self._fatal] * len(items)
        if self._conn is None:
            return [OutboxError("outbox is not open")] * len(items)
        results: list[Any] = []
        try:
            free = self._t_free_after_checkpoint()
            incoming = sum(len(r.payload) for records in items for r in records)
            # With synchronous=full the writer's syncer thread fsyncs the WAL before any caller
            # hears of this commit, while this thread goes on (_writer.py): durable all the same.
            with self._tx(durable=False) as conn:
                if self._t.bytes + incoming <= self._config.max_bytes and not self._below_floor(free, incoming):
                    # Nothing to drop for anyone: the whole group in one statement.
                    results = self._t_append_all(conn, items, incoming)
                else:
                    for records in items:
                        try:
                            res = self._t_append_one(conn, records, free)
                        except OutboxFullError as exc:
                            results.append(exc)
                            continue
                        results.append(res)
                        if free is not None:
                            free -= _disk_cost(sum(len(r.payload) for r in records))
            if free is not None and free < self._config.min_free_bytes + _CHECKPOINT_MARGIN_BYTES:
                # Near the floor the WAL gives its space back after every commit: what stays on the
                # disk is the main file, whose pages the drops free for the next rows.
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            return [self._translate(exc)] * len(items)
        self.append_commits += 1
        return results

    def _t_append_all(self, conn: sqlite3.Connection, items: Sequence[list[EncodedRecord]],
                      incoming: int) -> list[Any]:
        """Every record of a group in one executemany; the same results as one call per item."""
        now = self._now_ms()
        before = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        changes = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events (event_id, bytes, enqueued_ms, time_ms, payload, object) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.event_id, len(r.payload), now, r.time_ms, r.payload, r.object) for records in items for r in records],
        )
        n = conn.total_changes - changes
        if n == sum(len(records) for records in items):
            self._t.rows += n
            self._t.bytes += incoming
            return [AppendResult(len(records), 0, 0) for records in items]
        # Some were queued already (a redelivered MQTT message, a cycle re-emitted fuller): each item
        # gets credit for the copies that are new, in submission order; the others may complete a row.
        new = dict(conn.execute("SELECT event_id, bytes FROM events WHERE seq > ?", (before,)).fetchall())
        results: list[Any] = []
        known: list[EncodedRecord] = []
        for records in items:
            appended = 0
            for r in records:
                size = new.pop(r.event_id, None)
                if size is not None:
                    appended += 1
                    self._t.rows += 1
                    self._t.bytes += size
                else:
                    known.append(r)
            results.append(AppendResult(appended, len(records) - appended, 0))
        self._t_complete_known(conn, known, now)
        return results

    def _t_complete_known(self, conn: sqlite3.Connection, known: Iterable[EncodedRecord], now: int) -> None:
        """Records whose event id is queued already: a fuller copy completes the queued row.

        A replay (a redelivered message, a restart) carries the same payload: nothing to do. A
        topic-per-field feed re-emits a cycle that an idle flush cut short, with the fields that came
        later and the same time (sources/profiles/_base.py, Assembler): the queued row must get them,
        or they are lost while it waits for the next flush. The row becomes the union of both copies
        (the stored one, with the fields only the later one has: see ``_union``), as a
        new row at the end of the queue: a row in flight keeps its lease and its ack, and the union
        is sent after it (Data Cloud upserts by event id).
        """
        for r in known:
            row = conn.execute(
                f"SELECT seq, payload, bytes, {BULK_LEASE_OF_ROW} IS NOT NULL OR {_SOFT_LEASED} "
                "FROM events WHERE event_id = ?", (r.event_id,)).fetchone()
            if row is None or row[1] == r.payload:
                continue
            seq, stored, size, leased = row
            merged = _union(stored, r.payload)
            if merged is None:
                continue
            conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
            conn.execute("INSERT INTO events (event_id, bytes, enqueued_ms, time_ms, payload, object) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (r.event_id, len(merged), now, r.time_ms, merged, r.object))
            self._t.bytes += len(merged) - size
            if leased:
                self._t.leased -= 1

    def _sync_wal(self) -> None:
        """Flush the WAL to the disk (the syncer thread: after append groups committed unsynced)."""
        try:
            if self._wal_fd is None:
                self._wal_fd = os.open(f"{self._path}-wal", os.O_RDONLY | os.O_CLOEXEC)
            os.fsync(self._wal_fd)
        except OSError as exc:
            hint = ("the storage failed (check dmesg and the SD card/disk health); "
                    "the agent exits for systemd to restart it")
            err = OutboxFatalError(f"outbox {self._path}: cannot sync the WAL: {exc.strerror or exc}", hint=hint)
            self._fatal = err
            log.critical("outbox fatal error path=%s error=%s hint=%s", self._path, exc, hint)
            raise err from exc

    def _free_bytes(self) -> int | None:
        if self._config.min_free_bytes <= 0:
            return None
        return self._disk_free(self._path.parent)

    def _t_free_after_checkpoint(self) -> int | None:
        """Free bytes, measured after moving the WAL into the main file when the floor is near.

        Between checkpoints the WAL holds pages the main file will also need at the next checkpoint,
        so near the floor a measurement must come after one (TRUNCATE also gives the WAL's space
        back). Far from the floor this costs nothing: no checkpoint is forced.
        """
        free = self._free_bytes()
        if free is None or free >= self._config.min_free_bytes + _CHECKPOINT_MARGIN_BYTES:
            return free
        # (While a commit runs, its own WAL frames may dip below the floor by that commit's size;
        # the checkpoint after it gives them back.)
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self._free_bytes()

    def _below_floor(self, free: int | None, incoming: int) -> bool:
        """Would committing ``incoming`` payload bytes take the disk below ``min_free_bytes``?"""
        return free is not None and free < self._config.min_free_bytes + _disk_cost(incoming)

    def _t_append_one(self, conn: sqlite3.Connection, records: list[EncodedRecord], free: int | None) -> AppendResult:
        incoming = sum(len(r.payload) for r in records)
        cfg = self._config
        deficit = self._t.bytes + incoming - cfg.max_bytes
        why = "max_bytes"
        if self._below_floor(free, incoming) and incoming > deficit:
            # Deleting rows frees pages inside the file, not on disk: drop as much as we add, so
            # the new rows reuse those pages and the file stops growing.
            deficit, why = incoming, "min_free_bytes"
        dropped = 0
        if deficit > 0:
            dropped = self._t_make_room(conn, deficit, len(records), why)
        now = self._now_ms()
        before = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        changes = conn.total_changes
        conn.executemany(
            "INSERT OR IGNORE INTO events (event_id, bytes, enqueued_ms, time_ms, payload, object) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(r.event_id, len(r.payload), now, r.time_ms, r.payload, r.object) for r in records],
        )
        n = conn.total_changes - changes
        if n == len(records):
            self._t.rows += n
            self._t.bytes += incoming
            return AppendResult(n, 0, dropped)
        new = dict(conn.execute("SELECT event_id, bytes FROM events WHERE seq > ?", (before,)).fetchall())
        self._t.rows += n
        self._t.bytes += sum(new.values())
        known = [r for r in records if new.pop(r.event_id, None) is None]
        self._t_complete_known(conn, known, now)
        return AppendResult(n, len(records) - n, dropped)

    def _t_make_room(self, conn: sqlite3.Connection, deficit: int, incoming_rows: int, why: str) -> int:
        hint_full = _full_hint(why, self._path.parent)
        if self._config.when_full == "reject_new":
            log.warning("outbox full, rejecting new records path=%s limit=%s rows=%d queued_bytes=%d hint=%s",
                        self._path, why, incoming_rows, self._t.bytes, hint_full)
            raise OutboxFullError(f"outbox {self._path} is full ({why})", hint=hint_full)
        # Oldest first, outside the bulk ranges of any object (their few rows of another object are
        # spared too: dropping goes on after the range).
        freed, last = 0, None
        for after, before in self._gaps(ANY_OBJECT):
            freed, last = _oldest_until(conn.execute(
                f"SELECT seq, bytes FROM events WHERE {_UNLEASED} AND seq > ? AND seq < ? ORDER BY seq",
                (after, before)), deficit, freed, last)
            if freed >= deficit:
                break
        if last is None or freed < deficit:
            log.warning("outbox full and not enough to drop path=%s limit=%s rows=%d need_bytes=%d "
                        "droppable_bytes=%d leased=%d hint=%s",
                        self._path, why, incoming_rows, deficit, freed, self._t.leased, hint_full)
            raise OutboxFullError(
                f"outbox {self._path} is full ({why}): dropping every row that is not leased would free "
                f"{freed} bytes, {deficit} are needed; nothing of this append was stored", hint=hint_full
            )
        n = 0
        for after, before in self._gaps(ANY_OBJECT):
            conn.execute(f"DELETE FROM events WHERE {_UNLEASED} AND seq > ? AND seq < ? AND seq <= ?",
                         (after, before, last))
            n += conn.execute("SELECT changes()").fetchone()[0]
            if before > last:
                break
        self._t.rows -= n
        self._t.bytes -= freed
        self._t.dropped_total += n
        self._log_drops(n, why, hint_full)
        return int(n)

    def _log_drops(self, n: int, why: str, hint: str) -> None:
        # Rate-limited: under a long outage every append drops; one line a minute says it all.
        self._drops_unlogged += n
        now = self._now_ms()
        if self._drop_logged_ms is None or now - self._drop_logged_ms >= _DROP_LOG_INTERVAL_MS:
            log.warning("outbox full, dropped oldest records path=%s limit=%s dropped=%d dropped_total=%d hint=%s",
                        self._path, why, self._drops_unlogged, self._t.dropped_total, hint)
            self._drops_unlogged = 0
            self._drop_logged_ms = now

    # ---- writer-thread side: leases -------------------------------------------------------------

    def _ready(self, older_than_ms: int | None, obj: str | None = None) -> tuple[str, tuple[int | str, ...]]:
        # Readings (object IS NULL) go by events_lease; another object by its partial index events_object.
        where, params = ("object IS NULL AND ", ()) if obj is None else ("object = ? AND ", (obj,))
        where += f"{_UNLEASED} AND retry_at_ms <= ?"
        if older_than_ms is None:
            return where, (*params, self._now_ms())
        return where + " AND enqueued_ms < ?", (*params, self._now_ms(), older_than_ms)

    def _t_lease(self, max_records: int, max_bytes: int, older_than_ms: int | None,
                 obj: str | None = None) -> Lease | None:
        if max_records < 1:
            raise OutboxError(f"lease: max_records must be >= 1 (got {max_records})")
        where, params = self._ready(older_than_ms, obj)
        # The rows stay as they are: the lease goes to the TEMP table; of the file, only the totals
        # row changes (readers of the file see the leased count).
        with self._tx(durable=False) as conn:
            picked: list[tuple[int, str, bytes, int, int, int]] = []
            total = 0
            full = False
            for after, before in self._gaps(obj):
                cur = conn.execute(
                    f"SELECT seq, event_id, payload, enqueued_ms, attempts, retry_at_ms FROM events "
                    f"WHERE {where} AND seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                    (*params, after, before, max_records - len(picked)),
                )
                for row in cur:
                    size = len(row[2])
                    if picked and total + size > max_bytes:
                        full = True
                        break
                    picked.append(row)
                    total += size
                cur.close()
                if full or len(picked) >= max_records:
                    break
            if not picked:
                return None
            lease_id = self._t.next_lease_id
            self._t.next_lease_id += 1
            conn.executemany("INSERT INTO soft_leases (seq, lease_id) VALUES (?, ?)",
                             [(row[0], lease_id) for row in picked])
            self._t.leased += len(picked)
        self._soft.add(lease_id)
        rows = tuple(LeasedRow(s, e, p, q, a, lease_id, r, obj) for s, e, p, q, a, r in picked)
        return Lease(lease_id, rows, len(rows), total)

    def _t_lease_bulk(self, max_records: int, max_bytes: int | None, older_than_ms: int | None,
                      obj: str | None = None) -> Lease | None:
        if max_records < 1:
            raise OutboxError(f"lease_bulk: max_records must be >= 1 (got {max_records})")
        where, params = self._ready(older_than_ms, obj)
        with self._tx(durable=False) as conn:
            # One gap (the part between two ranges) at a time: a lease never spans another's range.
            for after, before in self._gaps(obj):
                first, last, count, total = self._t_window(conn, where, (*params, after, before), max_records,
                                                           max_bytes)
                if count:
                    break
            else:
                return None
            lease_id = self._t.next_lease_id
            self._t.next_lease_id += 1
            # The lease is a range when every row of the object between its first and last is in it
            # (the usual backlog); else (a row in between is leased or waits for a retry) the rows
            # are marked one by one, as they always were.
            if self._t_range_rows(conn, (obj, first, last)) == count:
                span = (obj, int(first), int(last))
                conn.execute("INSERT INTO bulk_ranges (lease_id, object, lo, hi) VALUES (?, ?, ?, ?)",
                             (lease_id, *span))
            else:
                span = None
                conn.execute(f"UPDATE events SET lease_id = ? WHERE {where} AND seq BETWEEN ? AND ?",
                             (lease_id, *params, first, last))
            self._t.leased += count
        if span is not None:
            self._ranges[lease_id] = span
        return Lease(lease_id, (), int(count), int(total))

    @staticmethod
    def _t_window(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], max_records: int,
                  max_bytes: int | None) -> tuple[int, int, int, int]:
        """(first seq, last seq, rows, bytes) of the oldest ready rows within one gap, up to the limits."""
        window = f"SELECT seq, bytes FROM events WHERE {where} AND seq > ? AND seq < ? ORDER BY seq LIMIT ?"
        row = conn.execute(f"SELECT min(seq), max(seq), count(*), total(bytes) FROM ({window})",
                           (*params, max_records)).fetchone()
        if max_bytes is not None and row[3] > max_bytes:
            # Too many bytes: cut at a running sum, in SQL (a million-row backfill is never walked in
            # Python). Only then: a backfill that fits, the common case, skips this second pass.
            row = conn.execute(
                f"SELECT min(seq) OVER (), seq, n, cum FROM (SELECT seq, count(*) OVER w AS n, "
                f"sum(bytes) OVER w AS cum FROM ({window}) WINDOW w AS (ORDER BY seq ROWS UNBOUNDED PRECEDING)) "
                f"WHERE cum <= ? ORDER BY seq DESC LIMIT 1",
                (*params, max_records, max_bytes),
            ).fetchone() or conn.execute(f"SELECT seq, seq, 1, bytes FROM ({window})", (*params, 1)).fetchone()
        if not row or not row[2]:
            return 0, 0, 0, 0
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def _t_chunk(self, lease_id: int, after: int, limit: int) -> list[tuple[int, bytes]]:
        assert self._conn is not None
        span = self._ranges.get(lease_id)
        cond: str
        args: tuple[Any, ...]
        if span is not None:
            # One seq range, not two: SQLite starts a rowid search at one lower bound only, and
            # from lo every chunk would step over all the chunks before it again.
            obj, lo, hi = span
            cond, args = "seq >= ? AND seq <= ? AND object IS ?", (max(lo, after + 1), hi, obj)
        else:
            cond, args = "lease_id = ? AND seq > ?", (lease_id, after)
        return self._conn.execute(
            f"SELECT seq, payload FROM events WHERE {cond} ORDER BY seq LIMIT ?", (*args, limit)).fetchall()

    def _t_ack(self, lease_id: int, ids: list[str] | None) -> int:
        done = 0
        with self._tx() as conn:
            for cond, args in self._in_lease(self._lease_cond(lease_id), ids):
                n, b = conn.execute(f"SELECT count(*), total(bytes) FROM events WHERE {cond}", args).fetchone()
                if n:
                    self._t_delete_leased(conn, cond, args, n)
                    self._t.rows -= n
                    self._t.bytes -= int(b)
                    self._t.leased -= n
                    done += n
            self._t_forget_soft(conn, lease_id, ids)
            dropped = self._t_drop_range(conn, lease_id) if ids is None else None
        if dropped:
            del self._ranges[lease_id]
        return done

    def _t_drop_range(self, conn: sqlite3.Connection, lease_id: int) -> bool:
        """Forget a bulk range (its rows are acked, re-queued, or released); True if there was one."""
        if lease_id not in self._ranges:
            return False
        conn.execute("DELETE FROM bulk_ranges WHERE lease_id = ?", (lease_id,))
        return True

    def _t_materialize(self, conn: sqlite3.Connection, lease_id: int) -> None:
        """Turn a range lease into marks in its rows, so that some of them can leave it alone."""
        cond, args = self._lease_cond(lease_id)
        conn.execute(f"UPDATE events SET lease_id = ? WHERE {cond}", (lease_id, *args))
        self._t_drop_range(conn, lease_id)

    def _t_delete_leased(self, conn: sqlite3.Connection, cond: str, args: tuple[Any, ...], n: int) -> None:
        """Delete the ``n`` rows matching ``cond``, writing as few pages as the table allows.

        Deleting row by row merges each emptied page into its neighbour first, which writes most of
        them once more (about 0.7x the payload per delivered batch). When the lease holds all but a
        few queued rows (the steady state of a site the drain keeps up with, a backfill of the whole
        backlog), a DELETE without WHERE frees the pages as they are and the few others are written
        back as they were (same seq, so FIFO and every other lease hold).
        """
        keep = self._t.rows - n                 # running totals first: counting a large table costs a walk
        if keep <= _ACK_KEEP_MAX and keep * 4 <= n:
            keep = conn.execute("SELECT count(*) FROM events").fetchone()[0] - n
        if keep == 0:
            conn.execute("DELETE FROM events")
        elif keep <= _ACK_KEEP_MAX and keep * 4 <= n:
            # coalesce: on an unleased row "lease_id = ?" is NULL, and NOT NULL would leave it out.
            conn.execute(f"CREATE TEMP TABLE ack_keep AS SELECT * FROM events WHERE coalesce(({cond}), 0) = 0", args)
            conn.execute("DELETE FROM events")
            conn.execute("INSERT INTO events SELECT * FROM temp.ack_keep")
            conn.execute("DROP TABLE temp.ack_keep")
            kept = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            if kept != keep:
                # Never an empty table for a wrong condition: the transaction rolls back, the rows stay.
                raise OutboxError(f"outbox {self._path}: an ack would keep {kept} rows of the {keep} outside "
                                  "its lease; nothing was deleted")
        else:
            conn.execute(f"DELETE FROM events WHERE {cond}", args)

    def _t_nack(self, lease_id: int, retry_at_ms: int, ids: list[str] | None) -> int:
        done = 0
        with self._tx(durable=False) as conn:
            ranged = lease_id in self._ranges
            base = self._lease_cond(lease_id)
            if ranged and ids is not None:
                self._t_materialize(conn, lease_id)   # the rows named here leave the lease, the others stay
                base = ("lease_id = ?", (lease_id,))
            for cond, args in self._in_lease(base, ids):
                conn.execute(
                    f"UPDATE events SET lease_id = NULL, retry_at_ms = ?, attempts = attempts + 1 WHERE {cond}",
                    (retry_at_ms, *args),
                )
                done += conn.execute("SELECT changes()").fetchone()[0]
            self._t.leased -= done
            self._t_forget_soft(conn, lease_id, ids)
            if ranged and ids is None:
                self._t_drop_range(conn, lease_id)
        if ranged:
            del self._ranges[lease_id]
        return done

    def _t_forget_soft(self, conn: sqlite3.Connection, lease_id: int, ids: list[str] | None) -> None:
        """Drop a stream lease's rows that were acked or nacked (all of them when ``ids`` is None)."""
        if lease_id not in self._soft:
            return
        if ids is None:
            conn.execute("DELETE FROM soft_leases WHERE lease_id = ?", (lease_id,))
        else:
            for chunk in _chunks(ids):
                conn.execute(
                    "DELETE FROM soft_leases WHERE lease_id = ? AND seq IN "
                    f"(SELECT seq FROM events WHERE event_id IN ({_marks(len(chunk))}))", (lease_id, *chunk))
            # Acked rows are gone from events, so their event ids no longer find them: drop by absence.
            conn.execute("DELETE FROM soft_leases WHERE lease_id = ? AND seq NOT IN (SELECT seq FROM events)",
                         (lease_id,))
        if conn.execute("SELECT 1 FROM soft_leases WHERE lease_id = ? LIMIT 1", (lease_id,)).fetchone() is None:
            self._soft.discard(lease_id)

    @staticmethod
    def _in_lease(lease: tuple[str, tuple[Any, ...]],
                  ids: list[str] | None) -> Iterator[tuple[str, tuple[Any, ...]]]:
        """``lease`` (a ``_lease_cond``) narrowed to ``ids``, in chunks of bound parameters."""
        base, args = lease
        if ids is None:
            yield base, args
            return
        for chunk in _chunks(ids):
            yield f"{base} AND event_id IN ({_marks(len(chunk))})", (*args, *chunk)

    def _t_reject(self, lease_id: int, reasons: dict[str, str]) -> int:
        now = self._now_ms()
        done = 0
        with self._tx() as conn:
            base, args = self._lease_cond(lease_id)
            for eid, reason in reasons.items():
                row = conn.execute(
                    f"SELECT bytes, payload, time_ms, attempts, object FROM events WHERE event_id = ? AND {base}",
                    (eid, *args),
                ).fetchone()
                if row is None:
                    continue
                size, payload, time_ms, attempts, obj = row
                known = conn.execute("SELECT 1 FROM dead_letters WHERE event_id = ?", (eid,)).fetchone()
                conn.execute("INSERT OR REPLACE INTO dead_letters (event_id, payload, reason, rejected_ms, time_ms, "
                             "attempts, object) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (eid, payload, reason, now, time_ms, attempts + 1, obj))
                conn.execute("DELETE FROM events WHERE event_id = ?", (eid,))
                self._t.rows -= 1
                self._t.bytes -= size
                self._t.leased -= 1
                self._t.dead_letters += 0 if known else 1
                done += 1
            self._t_forget_soft(conn, lease_id, [])
        return done

    def _t_requeue(self, ids: list[str] | None) -> int:
        now = self._now_ms()
        conds: list[tuple[str, tuple[Any, ...]]] = (
            [("1", ())] if ids is None else [(f"event_id IN ({_marks(len(c))})", tuple(c)) for c in _chunks(ids)]
        )
        done = 0
        with self._tx() as conn:
            before = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
            for cond, args in conds:
                conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, bytes, enqueued_ms, time_ms, payload, object) "
                    f"SELECT event_id, length(payload), ?, time_ms, payload, object FROM dead_letters WHERE {cond} "
                    "ORDER BY rejected_ms, event_id",
                    (now, *args),
                )
                conn.execute(f"DELETE FROM dead_letters WHERE {cond}", args)
                done += conn.execute("SELECT changes()").fetchone()[0]
            n, b = conn.execute("SELECT count(*), total(bytes) FROM events WHERE seq > ?", (before,)).fetchone()
            self._t.rows += n
            self._t.bytes += int(b)
            self._t.dead_letters -= done
        return done

    # ---- writer-thread side: held readings ----------------------------------------------------

    def _t_hold(self, rows: list[tuple[str, int, bytes]]) -> int:
        incoming = sum(len(r[2]) for r in rows)
        cfg = self._config
        now = self._now_ms()
        free = self._t_free_after_checkpoint()
        with self._tx() as conn:
            deficit = self._t.bytes + self._t.held_bytes + incoming - cfg.max_bytes
            why = "max_bytes"
            if self._below_floor(free, incoming) and incoming > deficit:
                deficit, why = incoming, "min_free_bytes"   # as in append: reuse the freed pages
            if deficit > 0:
                self._t_drop_held(conn, deficit, len(rows), why)
            conn.executemany(
                "INSERT INTO held (boot_id, boot_ms, held_ms, reading) VALUES (?, ?, ?, ?)",
                [(b, ms, now, blob) for b, ms, blob in rows],
            )
            self._t.held += len(rows)
            self._t.held_bytes += incoming
        if free is not None and free < cfg.min_free_bytes + _CHECKPOINT_MARGIN_BYTES:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # as in append: near the floor
        return len(rows)

    def _t_drop_held(self, conn: sqlite3.Connection, deficit: int, incoming_rows: int, why: str) -> None:
        hint = ("the clock has not synchronised for a long time: check `timedatectl timesync-status` and that "
                "UDP 123 is reachable; " + _full_hint(why, self._path.parent))
        if self._config.when_full == "reject_new":
            log.warning("outbox full, rejecting new held readings path=%s limit=%s rows=%d hint=%s",
                        self._path, why, incoming_rows, hint)
            raise OutboxFullError(f"outbox {self._path} is full ({why})", hint=hint)
        # Only held rows are dropped for held rows: queued rows have a good time and may be sent.
        freed, last = _oldest_until(conn.execute("SELECT id, length(reading) FROM held ORDER BY id"), deficit)
        if last is None or freed < deficit:
            raise OutboxFullError(
                f"outbox {self._path} is full ({why}): dropping every held reading would free {freed} bytes, "
                f"{deficit} are needed; nothing was held", hint=hint)
        conn.execute("DELETE FROM held WHERE id <= ?", (last,))
        n = conn.execute("SELECT changes()").fetchone()[0]
        self._t.held -= n
        self._t.held_bytes -= freed
        self._t.dropped_total += n
        self._log_drops(n, why, hint)

    def _t_release_chunk(
        self,
        restamp: Callable[[str, int], int | None],
        encode: Callable[[Reading], EncodedRecord],
        boot_id: str,
        after: int,
        limit: int,
    ) -> tuple[ReleaseResult, int]:
        """One transaction of ``release_held``; returns its result and the next ``after`` (-1: done)."""
        now = self._now_ms()
        restamped = nbytes = duplicates = lost = waiting = failed = 0
        lost_boots: set[str] = set()
        error: str | None = None
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT id, boot_id, boot_ms, reading FROM held WHERE id > ? ORDER BY id LIMIT ?", (after, limit),
            ).fetchall()
            done: list[tuple[int, int]] = []
            for rid, bid, bms, blob in rows:
                reading = _held.load_reading(blob)
                if bid == boot_id:
                    t = restamp(bid, bms)
                    if t is None:
                        waiting += 1
                        continue
                    fixed = dataclasses.replace(reading, time_ms=t, clock_quality="restamped")
                else:
                    fixed = dataclasses.replace(reading, clock_quality="unsynced")
                try:
                    rec = encode(fixed)
                except RecordError as exc:
                    failed += 1
                    error = error or f"device {reading.device_id}: {exc}"
                    continue
                if bid == boot_id:
                    conn.execute(
                        "INSERT OR IGNORE INTO events (event_id, bytes, enqueued_ms, time_ms, payload, object) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (rec.event_id, len(rec.payload), now, rec.time_ms, rec.payload, rec.object),
                    )
                    if conn.execute("SELECT changes()").fetchone()[0]:
                        restamped += 1
                        nbytes += len(rec.payload)
                    else:
                        duplicates += 1
                else:
                    reason = f"clock never synchronised during boot {bid}; reading time unknown"
                    conn.execute("INSERT OR IGNORE INTO dead_letters (event_id, payload, reason, rejected_ms, "
                                 "time_ms, attempts, object) VALUES (?, ?, ?, ?, ?, 0, ?)",
                                 (rec.event_id, rec.payload, reason, now, rec.time_ms, rec.object))
                    self._t.dead_letters += conn.execute("SELECT changes()").fetchone()[0]
                    lost += 1
                    lost_boots.add(bid)
                done.append((rid, len(blob)))
            for chunk in _chunks(done):
                conn.execute(f"DELETE FROM held WHERE id IN ({_marks(len(chunk))})", [r for r, _ in chunk])
            self._t.rows += restamped
            self._t.bytes += nbytes
            self._t.held -= len(done)
            self._t.held_bytes -= sum(b for _, b in done)
        part = ReleaseResult(restamped, nbytes, duplicates, lost, tuple(sorted(lost_boots)), waiting, failed, error)
        return part, (rows[-1][0] if len(rows) == limit else -1)

    # ---- writer-thread side: reads and the journal ---------------------------------------------

    def _t_stats(self) -> OutboxStats:
        assert self._conn is not None
        row = self._conn.execute("SELECT enqueued_ms FROM events ORDER BY seq LIMIT 1").fetchone()
        t = self._t
        return OutboxStats(t.rows, t.bytes, t.leased, row[0] if row else None, t.dead_letters,
                           t.dropped_total, _file_bytes(self._path), t.held, t.rejected)

    def _t_object_stats(self, obj: str | None) -> OutboxStats:
        assert self._conn is not None
        conn = self._conn
        t = self._t
        # The other objects' rows are few and indexed (events_object); the readings' totals are the
        # running totals minus them, so neither count walks the readings' backlog.
        cond, args = ("object = ?", (obj,)) if obj is not None else ("object IS NOT NULL", ())
        n, size, leased = conn.execute(
            f"SELECT count(*), total(bytes), total({BULK_LEASE_OF_ROW} IS NOT NULL OR {_SOFT_LEASED}) FROM events "
            f"WHERE {cond}", args).fetchone()
        if obj is None:
            n, size, leased = t.rows - n, t.bytes - int(size), t.leased - leased
            # A walk of the table in seq order that stops at the first reading (at or near its start):
            # events_object cannot serve "object IS NULL", and "ORDER BY seq" is the rowid order.
            row = conn.execute(_OLDEST_READING).fetchone()
        else:
            row = conn.execute("SELECT enqueued_ms FROM events WHERE seq = "
                               "(SELECT min(seq) FROM events WHERE object = ?)", (obj,)).fetchone()
        return OutboxStats(int(n), int(size), int(leased), row[0] if row else None, t.dead_letters,
                           t.dropped_total, _file_bytes(self._path), t.held, t.rejected)

    def _t_peek(self, limit: int, obj: str | None) -> list[LeasedRow]:
        assert self._conn is not None
        cond, args = ("1", ()) if obj == ANY_OBJECT else (
            ("object IS NULL", ()) if obj is None else ("object = ?", (obj,)))
        rows = self._conn.execute(
            "SELECT seq, event_id, payload, enqueued_ms, attempts, "
            f"coalesce({BULK_LEASE_OF_ROW}, (SELECT lease_id FROM soft_leases s WHERE s.seq = events.seq)), "
            "retry_at_ms, object "
            f"FROM events WHERE {cond} ORDER BY seq LIMIT ?", (*args, limit),
        ).fetchall()
        return [LeasedRow(*r) for r in rows]

    def _t_dead_letters(self, limit: int) -> list[DeadLetter]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT event_id, payload, reason, rejected_ms, object FROM dead_letters "
            "ORDER BY rejected_ms, event_id LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(*r) for r in rows]

    def _t_record_rejected(self, item: RejectedInput) -> None:
        digest = hashlib.sha256(item.topic.encode("utf-8", "surrogateescape") + b"\0" + item.payload).digest()[:16]
        bump = 0 if item.redelivered else 1
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO rejected_inputs (source, topic, digest, reason, detail, payload_bytes, payload_head, "
                "first_ms, last_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (source, digest) DO UPDATE SET count = count + ?, last_ms = excluded.last_ms",
                (item.source, item.topic, digest, item.reason, item.detail[:500], item.payload_bytes,
                 item.payload, item.received_ms, item.received_ms, bump),
            )
            n = conn.execute("SELECT count(*) FROM rejected_inputs").fetchone()[0]
            if n > REJECTED_INPUTS_CAP:
                conn.execute(
                    "DELETE FROM rejected_inputs WHERE id IN "
                    "(SELECT id FROM rejected_inputs ORDER BY last_ms, id LIMIT ?)", (n - REJECTED_INPUTS_CAP,))
                n = REJECTED_INPUTS_CAP
            self._t.rejected = n

    def _t_rejected_inputs(self, limit: int) -> list[RejectedRow]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT id, source, topic, reason, detail, payload_bytes, payload_head, first_ms, last_ms, count "
            "FROM rejected_inputs ORDER BY last_ms DESC, id DESC LIMIT ?", (limit,),
        ).fetchall()
        return [RejectedRow(*r) for r in rows]

    def _t_save_job(self, job: BulkJobRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO bulk_jobs (lease_id, job_id, state, files_uploaded, updated_ms, object) "
                "VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (lease_id) DO UPDATE SET job_id = excluded.job_id, state = excluded.state, "
                "files_uploaded = excluded.files_uploaded, updated_ms = excluded.updated_ms",
                (job.lease_id, job.job_id, job.state, job.files_uploaded, job.updated_ms, job.object),
            )

    def _t_jobs(self, obj: str | None) -> list[BulkJobRecord]:
        assert self._conn is not None
        cond, args = ("1", ()) if obj == ANY_OBJECT else (
            ("object IS NULL", ()) if obj is None else ("object = ?", (obj,)))
        rows = self._conn.execute(
            f"SELECT lease_id, job_id, state, files_uploaded, updated_ms, object FROM bulk_jobs WHERE {cond} "
            "ORDER BY lease_id", args,
        ).fetchall()
        return [BulkJobRecord(*r) for r in rows]

    def _t_delete_job(self, lease_id: int) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM bulk_jobs WHERE lease_id = ?", (lease_id,))
            # A range outliving its job would hold its rows until the next start: release them now.
            ranged = self._t_drop_range(conn, lease_id)
            if ranged:
                self._t.leased -= self._t_range_rows(conn, self._ranges[lease_id])
        if ranged:
            del self._ranges[lease_id]


def _oldest_until(cur: sqlite3.Cursor, deficit: int, freed: int = 0,
                  last: int | None = None) -> tuple[int, int | None]:
    """Walk (key, size) rows, oldest first, until ``freed`` reaches ``deficit``: (freed, last key taken)."""
    for key, size in cur:
        freed += size
        last = key
        if freed >= deficit:
            break
    cur.close()
    return freed, last


def _full_hint(why: str, where: Path) -> str:
    # What helps: delivering (the backlog leaves), then room. Raising min_free_bytes would drop more.
    first = "restore delivery (`solar-agent status`: lanes, health)"
    if why == "min_free_bytes":
        return (f"{first}; free disk space under {where} (journalctl --vacuum-size, old files); "
                "outbox.min_free_bytes is the space kept free for the system: lowering it keeps more readings, "
                "raising it drops more")
    return f"{first}; raise outbox.max_bytes if the disk has room (df -h {where})"


def _merge(a: ReleaseResult, b: ReleaseResult) -> ReleaseResult:
    return ReleaseResult(
        a.restamped + b.restamped, a.restamped_bytes + b.restamped_bytes, a.duplicates + b.duplicates,
        a.lost + b.lost, tuple(sorted({*a.lost_boots, *b.lost_boots})), a.waiting + b.waiting,
        a.failed + b.failed, a.error or b.error,
    )


def _is_corruption(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _file_bytes(path: Path) -> int:
    total = 0
    for p in (path, Path(f"{path}-wal")):
        with contextlib.suppress(FileNotFoundError):
            total += p.stat().st_size
    return total
