"""Hold back readings taken while the wall clock is unsynchronised; re-stamp them once it syncs.

A reading carries the wall time its source put on it. While the :class:`~agent.clock.ClockGuard`
says the clock is unsynchronised that time is untrusted (1970, or a stale saved time), so the
reading is not queued: it is stored in the outbox's ``held`` table with its place on the boot
clock, which keeps counting correctly whatever the wall clock does. Once the clock syncs,
:meth:`HoldBack.release` re-stamps every held reading of this boot with its true wall time
(quality ``restamped``, event id from the corrected time) and queues it. Held readings of an
earlier boot can never be re-stamped (that boot clock is gone); they go to the dead letters with
the reason, for a technician to judge. Nothing is sent with a wrong time, nothing is lost.

Where a held reading sits on the boot clock (``boot_ms``): the guard reads the boot clock at
admit time, and the reading was taken ``age = wall_now - reading.time_ms`` earlier, both wall
times coming from the same (unsynchronised but running) host clock. When ``0 <= age <=
max_age_ms`` the reading is placed at ``boot_now - age``: exact up to the clock's drift. Any
other age means the time did not come from this clock as it is now (a device's own clock, or the
wall clock stepped in between), so the reading is placed at ``boot_now``: too late by its true
age at admit, which is at most the time it spent inside its source (one poll, one MQTT cycle).

The sync moment itself is a race: a reading stamped by the old clock may reach ``admit`` just
after the clock synced. So for ``max_age_ms`` after the guard was last seen unsynchronised, a
reading is trusted only when its time places it after that last unsynchronised observation; the
others are re-stamped at ``boot_now`` on the spot. A time before the floor is never trusted.
The remaining error is bounded by the gap between two observations of the guard (``run`` checks
it every ``interval_seconds``, and every ``admit`` checks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.clock import NOT_BEFORE_MS, ClockGuard
from agent.errors import RecordError
from agent.outbox import HeldReading, Outbox, ReleaseResult
from agent.records import Reading, RecordBuilder

__all__ = ["DEFAULT_MAX_AGE_MS", "HoldBack", "Restamp"]

log = logging.getLogger(__name__)

# How long a reading may spend inside a source (poll, MQTT cycle assembly) before admit. Longer
# ages are taken as "not this clock's time" (see the module docstring).
DEFAULT_MAX_AGE_MS = 10 * 60_000

_LOST_HINT = (
    "the agent restarted before the clock ever synchronised, so these readings' times cannot be "
    "recovered; they are kept as dead letters (`solar-agent outbox dead-letters`). Requeue them "
    "only if readings flagged clock_quality=unsynced with their original time are acceptable, and "
    "make sure NTP works (`timedatectl timesync-status`, UDP 123 reachable)"
)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Restamp:
    """A snapshot of both clocks taken while synced: a pure re-stamp function for the writer thread.

    ``wall_ms`` is the true wall time at boot-clock instant ``boot_ms`` of boot ``boot_id``.
    """

    boot_id: str
    boot_ms: int
    wall_ms: int
    not_before_ms: int = NOT_BEFORE_MS

    def __call__(self, boot_id: str, boot_ms: int) -> int | None:
        if boot_id != self.boot_id or boot_ms > self.boot_ms:
            return None   # another boot, or not a stamp of ours (from this boot's future)
        wall = self.wall_ms - (self.boot_ms - boot_ms)
        return wall if wall >= self.not_before_ms else None


def _never(boot_id: str, boot_ms: int) -> int | None:
    return None


class HoldBack:
    """Decides, per reading, whether its time may be used now; holds and re-stamps the others.

    Args:
        outbox: where held readings are stored (``hold``) and released (``release_held``).
        clock: the guard that knows whether the wall clock is synchronised, and the boot clock.
        builder: encodes released readings (event id from the corrected time).
        wall_ms: the clock the sources stamp readings with (the host wall clock); only used to
            tell how long ago an unsynchronised reading was taken.
        max_age_ms: see :data:`DEFAULT_MAX_AGE_MS`.
        not_before_ms: a wall time before this is never used (the guard's floor).
        on_released: called after each release that queued rows (to wake the drain).
    """

    def __init__(
        self,
        outbox: Outbox,
        clock: ClockGuard,
        builder: RecordBuilder,
        *,
        wall_ms: Callable[[], int] = _wall_ms,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        not_before_ms: int = NOT_BEFORE_MS,
        on_released: Callable[[ReleaseResult], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._clock = clock
        self._builder = builder
        self._wall_ms = wall_ms
        self._max_age_ms = max_age_ms
        self._floor = not_before_ms
        self._on_released = on_released
        self._unsynced_at: int | None = None    # boot ms of the last "unsynced" observation
        # Boot ms of the first "synced" observation after it. The sync itself happened somewhere
        # between the two: until max_age_ms after this, a reading may still carry the old clock.
        self._synced_seen_at: int | None = None
        first = clock.stamp()
        if first.quality != "synced":
            # Seen now, before any source runs: a reading stamped before a sync that happens
            # before our first admit is then still caught by the race check.
            self._unsynced_at = first.boot_ms
        self._held_known = True                 # rows may be held (run() starts by releasing)
        self._lost_checked = False              # rows of earlier boots dead-lettered already?
        self._failed_logged = 0
        self._wake = asyncio.Event()
        self.held_total = 0                     # readings held by this instance
        self.restamped_total = 0
        self.lost_total = 0

    async def admit(self, readings: Sequence[Reading]) -> tuple[list[Reading], int]:
        """Split readings into those that may be queued now and those held durably.

        Returns the readings to encode and append (unchanged when their time is trusted, quality
        ``restamped`` with a corrected time when they were stamped just before the clock synced),
        and how many were held (committed when this returns). A reading the builder refuses is
        returned as it is, never held: the caller's encode refuses it again and counts it, the
        same as for any bad reading, and it can never be sent.

        Raises:
            OutboxFullError, OutboxFatalError: from ``Outbox.hold``; nothing was held.
        """
        if not readings:
            return [], 0
        st = self._clock.stamp()
        if st.quality == "synced":
            return self._admit_synced(readings, st.boot_id, st.boot_ms, st.time_ms), 0
        self._unsynced_at = st.boot_ms
        self._synced_seen_at = None
        wall_now = self._wall_ms()
        ready: list[Reading] = []
        held: list[HeldReading] = []
        for r in readings:
            flagged = dataclasses.replace(r, clock_quality="unsynced")
            try:
                self._builder.build(flagged)
            except RecordError:
                ready.append(r)
                continue
            age = wall_now - r.time_ms
            boot_ms = st.boot_ms - age if 0 <= age <= self._max_age_ms else st.boot_ms
            held.append(HeldReading(flagged, st.boot_id, max(0, boot_ms)))
        if held:
            await self._outbox.hold(held)
            self.held_total += len(held)
            self._held_known = True
        return ready, len(held)

    def _admit_synced(self, readings: Sequence[Reading], boot_id: str, boot_now: int, wall_now: int) -> list[Reading]:
        snap = Restamp(boot_id, boot_now, wall_now, self._floor)
        since = self._unsynced_at
        if since is not None and self._synced_seen_at is None:
            self._synced_seen_at = boot_now
        # Racing while a reading handed over now (read at most max_age_ms ago) may predate the sync.
        racing = self._synced_seen_at is not None and boot_now - self._synced_seen_at <= self._max_age_ms
        if since is not None and not racing:
            self._unsynced_at = self._synced_seen_at = None
        if since is not None and self._held_known:
            self._wake.set()        # the clock synced since we last held: release without waiting
        out: list[Reading] = []
        for r in readings:
            trusted = r.time_ms >= self._floor
            if trusted and racing:
                assert since is not None
                # Stamped after the last unsynchronised observation, by the clock as it is now?
                trusted = since <= boot_now - (wall_now - r.time_ms) <= boot_now
            if trusted:
                out.append(r)
                continue
            fixed = snap(boot_id, boot_now)
            assert fixed is not None    # boot_now of this boot, wall_now past the floor
            out.append(dataclasses.replace(r, time_ms=fixed, clock_quality="restamped"))
        return out

    def wake(self) -> None:
        """Release now instead of at the next tick."""
        self._wake.set()

    async def release(self) -> ReleaseResult | None:
        """Re-stamp and queue what is held, when the clock is synchronised.

        While it is not, only the first call does anything: it moves rows of earlier boots to the
        dead letters. None when nothing was attempted.

        Raises:
            OutboxFatalError: the commit failed.
        """
        st = self._clock.stamp()
        restamp: Callable[[str, int], int | None]
        if st.quality == "synced":
            if self._unsynced_at is not None and self._synced_seen_at is None:
                self._synced_seen_at = st.boot_ms   # run() calls this every few seconds: the sync is seen early
            if not self._held_known:
                return None
            restamp = Restamp(st.boot_id, st.boot_ms, st.time_ms, self._floor)
        else:
            self._unsynced_at = st.boot_ms
            self._synced_seen_at = None
            if self._lost_checked:
                return None
            # Rows of earlier boots are lost whatever this clock does: settle them once at start,
            # so status shows them at once; this boot's rows wait (the re-stamp says "not yet").
            restamp = _never
        holds_before = self.held_total
        result = await self._outbox.release_held(restamp, self._builder.encode, boot_id=st.boot_id)
        self._lost_checked = True
        # A hold that committed while the release ran may not have been seen by it.
        self._held_known = (result.waiting + result.failed) > 0 or self.held_total != holds_before
        self.restamped_total += result.restamped
        self.lost_total += result.lost
        if result.restamped or result.duplicates:
            log.info("clock: re-stamped %d readings held while the clock was unsynchronised "
                     "boot_id=%s duplicates=%d", result.restamped, st.boot_id, result.duplicates)
        if result.lost:
            log.error("clock: %d held readings moved to dead letters, their time is unknown boot_ids=%s hint=%s",
                      result.lost, ",".join(result.lost_boots), _LOST_HINT)
        if result.failed and result.failed != self._failed_logged:
            # Logged when the count changes, not on every tick: the rows stay until fixed.
            log.error("clock: %d held readings cannot be encoded and stay held error=%s hint=%s",
                      result.failed, result.error,
                      "the schema changed since they were read; restore the field or requeue after fixing it")
        self._failed_logged = result.failed
        if self._on_released is not None and (result.restamped or result.lost):
            self._on_released(result)
        return result

    async def run(self, interval_seconds: float = 5.0) -> None:
        """Release held readings whenever the clock is synchronised; runs until cancelled.

        Starts with one release, so rows held by an earlier run are handled at once (re-stamped,
        or dead-lettered when they came from another boot). A failing release is not retried in a
        tight loop: an outbox error is fatal and propagates.
        """
        while True:
            await self.release()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval_seconds)
            self._wake.clear()
