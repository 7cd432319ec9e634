"""Records the outbox hands out; plain frozen dataclasses shared by the drain and the clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.records import Reading

# Bulk job states after which the remote side will never touch the job's rows again.
TERMINAL_JOB_STATES = frozenset({"JobComplete", "Failed", "Aborted"})
# ``peek(obj=ANY_OBJECT)``: rows of every object. Object names never hold '*' (a-z A-Z 0-9 _ -).
ANY_OBJECT: Final = "*"


@dataclass(frozen=True, slots=True)
class LeasedRow:
    rowid: int
    event_id: str
    payload: bytes           # compact UTF-8 JSON of the record
    enqueued_ms: int
    attempts: int = 0
    lease_id: int | None = None   # filled by peek(); a lease's own rows carry their lease id
    retry_at_ms: int = 0
    object: str | None = None     # None: the reading object (see EncodedRecord.object)


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
    held: int = 0             # readings held back while the clock was unsynchronised (not leasable)
    rejected_inputs: int = 0  # rows in rejected_inputs (distinct poison inputs kept, capped)


@dataclass(frozen=True, slots=True)
class BulkJobRecord:
    """What the bulk lane knows about one remote job, saved before each remote step."""

    lease_id: int
    job_id: str | None        # None until the create call answered
    # local view: creating | Open | uploading | UploadComplete | InProgress | JobComplete | Failed | Aborted
    state: str
    files_uploaded: int = 0
    updated_ms: int = 0
    object: str | None = None      # the object of the job's rows (None: the reading object)


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one ``append`` did: rows stored, rows already queued (a replay, or a fuller copy that
    completed the queued row), old rows dropped to fit."""

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
    object: str | None = None     # None: the reading object


@dataclass(frozen=True, slots=True)
class HeldReading:
    """A reading taken while the wall clock was unsynchronised, placed on the boot clock.

    ``reading.time_ms`` is the untrusted wall time the source put on it (kept for the record);
    ``boot_ms`` is where it sits on the boot clock of ``boot_id``, which is what a re-stamp uses.
    """

    reading: Reading
    boot_id: str
    boot_ms: int


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """What one ``release_held`` did.

    ``restamped`` rows went to the queue with their corrected time (``duplicates`` of them were
    already queued under the same event id); ``lost`` rows came from another boot and went to the
    dead letters (``lost_boots`` names those boots); ``waiting`` rows stay held because the clock
    cannot re-stamp them yet; ``failed`` rows stay held because they no longer encode (``error``
    has the first reason, e.g. a schema change).
    """

    restamped: int = 0
    restamped_bytes: int = 0
    duplicates: int = 0
    lost: int = 0
    lost_boots: tuple[str, ...] = ()
    waiting: int = 0
    failed: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """One row of ``rejected_inputs``: a distinct input that could not become readings."""

    id: int
    source: str
    topic: str
    reason: str
    detail: str
    payload_bytes: int
    payload_head: bytes
    first_ms: int
    last_ms: int
    count: int
