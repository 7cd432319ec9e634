"""Records the outbox hands out; plain frozen dataclasses shared by the drain and the clients."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeasedRow:
    rowid: int
    event_id: str
    payload: bytes           # compact UTF-8 JSON of the record
    enqueued_ms: int
    attempts: int = 0


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
