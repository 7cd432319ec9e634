"""Records the outbox hands out; plain frozen dataclasses shared by the drain and the clients."""

from __future__ import annotations

from dataclasses import dataclass

# Bulk job states after which the remote side will never touch the job's rows again.
TERMINAL_JOB_STATES = frozenset({"JobComplete", "Failed", "Aborted"})


@dataclass(frozen=True, slots=True)
class LeasedRow:
    rowid: int
    event_id: str
    payload: bytes           # compact UTF-8 JSON of the record
    enqueued_ms: int
    attempts: int = 0
    lease_id: int | None = None   # filled by peek(); a lease's own rows carry their lease id
    retry_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    rows: tuple[LeasedRow, ...]      # empty for a bulk lease (use iter_lease)
    count: int
    payload_bytes: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    rows: int                 # queued, including leased
    bytes: int                # payload bytes queued
    leased: int
    oldest_enqueued_ms: int | None
    dead_letters: int
    dropped_total: int        # rows dropped by the full-disk policy since the file was created
    file_bytes: int


@dataclass(frozen=True, slots=True)
class BulkJobRecord:
    """What the bulk lane knows about one remote job, saved before each remote step."""

    lease_id: int
    job_id: str | None        # None until the create call answered
    state: str                # local view: creating | Open | uploading | UploadComplete | InProgress | JobComplete | Failed | Aborted
    files_uploaded: int = 0
    updated_ms: int = 0


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one ``append`` did: rows stored, rows already queued (kept the first), old rows dropped to fit."""

    appended: int
    duplicates: int
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record Data Cloud refused, with the server's reason; ``requeue_dead_letters`` sends it again."""

    event_id: str
    payload: bytes
    reason: str
    rejected_ms: int
