"""The durable outbox: every reading is committed here before anything else happens to it.

Contract (see design.md "Durability"):

* ``append`` returns only after the transaction holding the records has committed with the
  configured ``synchronous`` level. Concurrent appends share one transaction (group commit).
  ``enqueue`` queues records for a commit that waits up to ``commit_interval_ms`` for more (fewer
  commits: less SD-card wear); its future settles when that commit is made.
  Appending an ``event_id`` that is already queued is not an error: a replay (a redelivered MQTT
  message) changes nothing; a fuller copy (a cycle re-emitted with its late fields) makes the
  queued row the union of both, queued anew if the first was in flight.
* ``lease`` hands out queued rows that are not leased and whose retry time has come, oldest first,
  up to ``max_records`` and ``max_bytes`` of payload. ``older_than_ms`` restricts to rows enqueued
  before that wall time (the bulk lane takes the old part of a backlog). A leased row is invisible
  to other leases until ``ack`` (deleted: Data Cloud accepted it), ``nack`` (back in the queue,
  not before ``retry_at_ms``) or ``reject`` (moved to the dead-letter table with the reason).
  Leases left behind by a crash are released when the outbox is opened, except the rows of a
  bulk job journalled in a non-terminal state (the bulk lane resumes that job and acks or nacks
  them). Leases are soft state: a power cut may forget one, which only returns its rows early.
* ``lease_bulk`` leases a large range without loading it, and without writing its rows (the lease
  is a seq range of its object, one row in ``bulk_ranges``); ``iter_lease`` streams its payloads in
  chunks, so a backfill of millions of rows never sits in memory.
* The bulk journal (``save_job`` / ``jobs`` / ``delete_job``) lives in the same file so a restart
  at any point of a bulk job knows what was done remotely.
* Caps: ``max_bytes`` of queued payload and ``min_free_bytes`` free on the file system. When an
  append would pass either, ``drop_oldest`` deletes the oldest rows that are not leased (counted in
  ``dropped_total``, logged) and ``reject_new`` raises ``OutboxFullError``; nothing is silent.
* A damaged file (``PRAGMA quick_check``) is moved aside as ``<name>.corrupt-<UTC stamp>`` with its
  WAL, a fresh outbox is created, the readable rows are copied in, and the error is logged.
* Readings taken while the wall clock is unsynchronised are ``hold``-ed in a table of their own,
  never leasable, and ``release_held`` moves them to the queue with their re-stamped time (or to
  the dead letters when their boot is gone and their time can never be known).
* Inputs that can never become readings (poison MQTT messages) are recorded in ``rejected_inputs``
  (``record_rejected``, durable when it returns, so the source may ack them after): one row per
  distinct input with a count, the newest ``REJECTED_INPUTS_CAP`` kept.
* Every row belongs to one object: the site's readings (``object`` NULL) or another schema object
  by name (the gateway's status records). ``lease``, ``lease_bulk`` and ``object_stats`` take one
  object; :class:`ObjectQueue` is that view for the drain, so each object has its own lanes while
  all share the file, its caps and its full policy.
* One writer thread owns the connection; the event loop is never blocked. A disk I/O error or a
  full disk while committing raises ``OutboxFatalError``: the process must exit non-zero.
"""

from agent.outbox.objects import ObjectQueue
from agent.outbox.readonly import open_readonly, read_stats
from agent.outbox.store import Outbox
from agent.outbox.types import (
    ANY_OBJECT,
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

__all__ = [
    "ANY_OBJECT", "AppendResult", "BulkJobRecord", "DeadLetter", "HeldReading", "Lease", "LeasedRow",
    "ObjectQueue", "Outbox", "OutboxStats", "RejectedRow", "ReleaseResult", "open_readonly", "read_stats",
]
