"""The drain: moves rows from the outbox to Data Cloud, choosing the lane.

Two lanes run side by side and never hold the same row (outbox leases are exclusive):

* **stream** — while the backlog is small: flush when a batch is full (by encoded bytes) or when
  ``flush_interval_seconds`` passed since the first unsent row, so requests are as full as the
  latency target allows (a fleet of gateways shares the org's 250 requests/s). Bad records are
  isolated by the streaming client and dead-lettered; the rest of the batch goes on.
* **bulk** — when the oldest undelivered row is older than ``bulk_after_seconds`` or the backlog
  holds ``bulk_min_rows``, the *old* part (rows older than the fresh window) goes to a bulk CSV job
  while fresh rows keep streaming. Rows leave the outbox only when the job reached JobComplete.

Failures: 429 slows the AIMD pacer and waits Retry-After; 5xx/timeouts/resets back off with capped
exponential delay and full jitter (which also spreads a fleet's return after a regional outage);
401 is handled once by the client, a persistent auth failure backs off like an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from agent.config import DrainConfig
from agent.datacloud.streaming import Backoff, DeliveryResult
from agent.errors import DataCloudError, OutboxError, ThrottledError
from agent.outbox import Lease, OutboxStats
from agent.records import STREAMING_OVERHEAD
from agent.schema_guard import HINT as MISMATCH_HINT
from agent.schema_guard import RECHECK_SECONDS, VALIDATE_EVERY_SECONDS, SchemaGuard

log = logging.getLogger(__name__)

TERMINAL_OK = "JobComplete"
# The age trigger starts a bulk job only for a backlog that streaming would need this many full
# requests for: bulk jobs are an org-wide budget (5 running, 20 per hour), a few hundred rows are not
# worth one. Measured with bench/fleet.py: 100 gateways after a 1 h outage used all 20 jobs of the hour.
BULK_AGE_MIN_BATCHES = 20
# A refused job creation (429: five jobs already run org-wide) waits this long, jittered, not Retry-After.
BULK_THROTTLE_SECONDS = (60.0, 300.0)
# One bulk job takes at most this many rows (100 files of 150 MB hold far more; this bounds a job's duration).
BULK_MAX_ROWS_PER_JOB = 2_000_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _report_reason(report: list[dict[str, Any]]) -> str:
    """The first problem of a validation report, short."""
    first = report[0]
    problems = first.get("causingExceptions") or first.get("message") or first.get("reason") or first
    if isinstance(problems, list):
        problems = "; ".join(str(p.get("message", p)) if isinstance(p, dict) else str(p) for p in problems[:3])
    return str(problems)[:300]


@dataclass(slots=True)
class LaneState:
    """What status shows per lane."""

    name: str
    sent_total: int = 0
    requests_total: int = 0
    rejected_total: int = 0
    failures_total: int = 0
    consecutive_failures: int = 0
    last_success_ms: int | None = None
    last_error: str = ""
    retry_at_ms: int | None = None
    active: bool = False
    jobs_total: int = 0

    def ok(self, now_ms: int, sent: int) -> None:
        self.sent_total += sent
        self.consecutive_failures = 0
        self.last_success_ms = now_ms
        self.retry_at_ms = None
        self.last_error = ""

    def failed(self, error: str, retry_at_ms: int) -> None:
        self.failures_total += 1
        self.consecutive_failures += 1
        self.last_error = error
        self.retry_at_ms = retry_at_ms


class DrainOutbox(Protocol):
    """The part of the outbox the drain uses."""

    async def lease(self, max_records: int, max_bytes: int, older_than_ms: int | None = None) -> Lease | None: ...
    async def ack(self, lease: Lease, event_ids: Collection[str] | None = None) -> int: ...
    async def nack(self, lease: Lease, retry_at_ms: int, event_ids: Collection[str] | None = None) -> int: ...
    async def reject(self, lease: Lease, reasons: dict[str, str]) -> int: ...
    async def stats(self) -> OutboxStats: ...
    async def lease_bulk(self, max_records: int, max_bytes: int | None = None,
                         older_than_ms: int | None = None) -> Lease | None: ...


class StreamSink(Protocol):
    """Delivers one batch: accepted and rejected ids; raises Throttled/Retryable/Auth errors."""

    async def deliver(self, rows: list[tuple[str, bytes]], *,
                      pace: Callable[[], Awaitable[None]] | None = None) -> DeliveryResult: ...


@runtime_checkable
class SupportsValidate(Protocol):
    """Optional: a synchronous dry run of records (``/actions/test``); [] when valid, else the report."""

    async def validate(self, payloads: Sequence[bytes]) -> list[dict[str, Any]]: ...


class BulkSink(Protocol):
    """Runs one bulk job over a bulk lease; returns the terminal state (JobComplete, Failed, Aborted)."""

    max_lease_bytes: int

    async def run_job(self, lease: Lease) -> str: ...
    async def resume_jobs(self) -> list[tuple[Lease, str]]: ...
    async def forget(self, lease: Lease) -> None: ...


class Pacing(Protocol):
    async def wait(self) -> None: ...
    def on_success(self) -> None: ...
    def on_throttle(self, retry_after: float | None) -> None: ...


@dataclass(slots=True)
class _Kick:
    """A wake-up, so waits end early on a full batch, a stop or an operator's `drain --now`."""

    event: asyncio.Event = field(default_factory=asyncio.Event)

    def set(self) -> None:
        self.event.set()

    async def wait(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        finally:
            self.event.clear()
        return True


class Drain:
    """Both lanes. ``run`` returns only when cancelled; ``stop`` lets an in-flight delivery finish."""

    def __init__(
        self,
        outbox: DrainOutbox,
        stream: StreamSink,
        bulk: BulkSink | None,
        cfg: DrainConfig,
        *,
        pacer: Pacing | None = None,
        on_sent: Callable[[str, int], None] | None = None,
        on_rejected: Callable[[dict[str, str]], None] | None = None,
        beat: Callable[[str], None] | None = None,
        now_ms: Callable[[], int] = wall_ms,
        rng: random.Random | None = None,
        samples: Callable[[], Awaitable[list[bytes]]] | None = None,
    ) -> None:
        self.outbox = outbox
        self.stream = stream
        self.bulk = bulk
        self.cfg = cfg
        self.pacer = pacer
        self.now_ms = now_ms
        self.stream_state = LaneState("stream")
        self.bulk_state = LaneState("bulk")
        self._on_sent = on_sent or (lambda lane, n: None)
        self._on_rejected = on_rejected or (lambda reasons: None)
        self._beat = beat or (lambda name: None)
        self._rng = rng or random.Random()
        self._stream_backoff = Backoff(cap_seconds=cfg.retry_max_seconds, rng=self._rng)
        self._bulk_backoff = Backoff(base_seconds=10.0, cap_seconds=max(cfg.retry_max_seconds, 600.0), rng=self._rng)
        self._kick = _Kick()
        # The stream lane asks the bulk lane to take the old rows first (a ticket), and waits for an
        # answer given by a bulk-loop pass that STARTED after the question: an answer computed from
        # state older than the question ("streaming still fails, no job") let the stream lane
        # nibble a batch of the backlog before the job took the rest (a flaky test, issue #12).
        self._yield_asked = 0
        self._yield_answered = 0
        self._bulk_pass_saw = 0            # the ticket the current bulk-loop pass started after
        self._yield_event = asyncio.Event()
        self._bulk_kick = _Kick()
        self._unsent_bytes = 0
        self._first_unsent_ms: int | None = None
        self._stopping = False
        self._force_bulk = False
        # Rows per stream lease: bytes decide, this only bounds the lease query.
        self._max_records = 5000
        # A connector schema that is not ours (agent/schema_guard.py). ``samples`` gives records to
        # validate with /actions/test: the oldest queued one, then one with a value in every field.
        self.guard = SchemaGuard()
        self._samples = samples
        self._validate_at = 0.0            # monotonic time of the next validation (0: at start)

    # -- inputs -------------------------------------------------------------------------------------
    def notify_appended(self, count: int, payload_bytes: int) -> None:
        """Called after each outbox commit; wakes the stream lane when a batch is full."""
        if count <= 0:
            return
        if self._first_unsent_ms is None:
            self._first_unsent_ms = self.now_ms()
        self._unsent_bytes += payload_bytes
        if self._unsent_bytes + STREAMING_OVERHEAD >= self.cfg.batch_max_bytes:
            self._kick.set()

    def flush_now(self, bulk: bool = False) -> None:
        """An operator asked for delivery now (`solar-agent drain --now`): end waits and backoffs."""
        self._first_unsent_ms = 0
        if self.guard.mismatch:
            self._validate_at = 0.0        # check the connector's schema again at once
        self.stream_state.retry_at_ms = None
        self._kick.set()
        if bulk:
            self._force_bulk = True
            self._bulk_kick.set()

    @property
    def lane(self) -> str:
        """The lane status shows: bulk while a job runs, else stream, or 'retrying' while backing off."""
        if self.guard.mismatch:
            return "stopped"
        if self.bulk_state.active:
            return "bulk+stream"
        if self.stream_state.consecutive_failures:
            return "retrying"
        return "stream"

    # -- loops --------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Both lanes in one task group (tests and tools); the agent supervises the two loops apart."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.stream_loop(), name="agent[drain].stream")
            if self.bulk is not None:
                tg.create_task(self.bulk_loop(), name="agent[drain].bulk")

    def stop(self) -> None:
        """No new deliveries start; the runtime cancels the task after its deadline."""
        self._stopping = True
        self._kick.set()
        self._bulk_kick.set()

    async def stream_loop(self) -> None:
        """The stream lane until ``stop``; restartable (a restart keeps the lane's counters)."""
        interval = self.cfg.flush_interval_seconds
        # Gateways restarted by the same event (a regional power or LTE outage) must not flush in
        # lockstep: the first flush comes at a random point within one interval (at most the
        # reconnect jitter), and from then on each gateway keeps its own phase.
        spread_s = self._rng.uniform(0, min(interval, self.cfg.reconnect_jitter_seconds))
        self._first_unsent_ms = self.now_ms() - int(interval * 1000) + int(spread_s * 1000)
        while not self._stopping:
            self._beat("drain")
            if self._samples is not None and time.monotonic() >= self._validate_at:
                await self._validate()
            if self.guard.mismatch:
                await self._kick.wait(max(0.0, min(self._validate_at - time.monotonic(), 5.0)))
                continue
            due = self._flush_due_in(interval)
            if due > 0:
                await self._kick.wait(min(due, 5.0))
                continue
            delay = await self.drain_stream_once()
            if delay > 0:
                await self._kick.wait(delay)

    async def _validate(self) -> None:
        """Real records through /actions/test: refused all, it is a schema mismatch (see schema_guard).

        The oldest queued record first; if it is refused, one with a value in every field: the oldest
        may be bad on its own (the normal path dead-letters it), which is no reason to stop.
        """
        assert self._samples is not None
        self._validate_at = time.monotonic() + (RECHECK_SECONDS if self.guard.mismatch else VALIDATE_EVERY_SECONDS)
        if not isinstance(self.stream, SupportsValidate):
            return
        report: list[dict[str, Any]] = []
        try:
            for sample in await self._samples():
                report = await self.stream.validate([sample])
                if not report:
                    break
        except DataCloudError as exc:
            if exc.status in (403, 404, 405, 501):
                # The org does not offer the dry run: the refusal rule still guards the rows.
                log.info("stream: /actions/test is not available (%s); schema checked by refusals only", exc)
                self._validate_at = time.monotonic() + 24 * 3600.0
            else:
                self._validate_at = time.monotonic() + 60.0   # transient: try again soon, deliver meanwhile
            return
        except Exception as exc:  # contained like any delivery error: never stop the lane for a dry run
            log.debug("stream: validation traceback", exc_info=exc)
            self._validate_at = time.monotonic() + 60.0
            return
        if report:
            reason = _report_reason(report)
            if self.guard.mismatch != reason:
                log.error("stream: Data Cloud refuses our records (%s); delivery stopped, every row stays in "
                          "the outbox hint=%s", reason, MISMATCH_HINT)
            self.guard.declare(reason, "validation")
        elif self.guard.mismatch:
            log.info("stream: the connector accepts our records again; delivery resumes")
            self.guard.clear()
            self._kick.set()
            self._bulk_kick.set()

    def _flush_due_in(self, interval: float) -> float:
        """Seconds until the next flush is due: now if a batch is full or the oldest unsent row aged."""
        if self.stream_state.retry_at_ms is not None:
            return max(0.0, (self.stream_state.retry_at_ms - self.now_ms()) / 1000)
        if self._unsent_bytes + STREAMING_OVERHEAD >= self.cfg.batch_max_bytes:
            return 0.0
        if self._first_unsent_ms is None:
            # Nothing announced since the last flush; look again after one interval for rows
            # appended before start (recovered backlog) or nacked rows whose retry time came.
            self._first_unsent_ms = self.now_ms()
        return max(0.0, (self._first_unsent_ms + interval * 1000 - self.now_ms()) / 1000)

    async def drain_stream_once(self) -> float:
        """Send stream batches until the backlog is below one batch; returns seconds to wait after."""
        self._unsent_bytes = 0
        self._first_unsent_ms = None
        while not self._stopping:
            max_records = self._max_records
            if self.bulk is not None and not self.bulk_state.active:
                backfill_due = self.bulk_due(await self.outbox.stats())
                if backfill_due and self.stream_state.consecutive_failures:
                    # After an outage, probe the link with one row; the backlog goes to a bulk job
                    # once the link answers, instead of being streamed in a burst of requests.
                    max_records = 1
                elif backfill_due:
                    await self._yield_old_rows_to_bulk()
            if self.pacer is not None:
                await self.pacer.wait()
            lease = await self.outbox.lease(max_records, self.cfg.batch_max_bytes - STREAMING_OVERHEAD)
            if lease is None:
                return 0.0
            self._beat("drain")
            delay = await self._deliver(lease)
            if delay > 0:
                return delay
            # Full when one more record of the average size would not have fitted; else the backlog is drained.
            room = self.cfg.batch_max_bytes - STREAMING_OVERHEAD - lease.payload_bytes
            if lease.count < max_records and room >= lease.payload_bytes / lease.count:
                return 0.0
        return 0.0

    async def _yield_old_rows_to_bulk(self) -> None:
        """When a backfill is due, let the bulk lane lease the old rows before streaming nibbles them."""
        if self.bulk_state.retry_at_ms and self.bulk_state.retry_at_ms > self.now_ms():
            return  # the bulk lane is backing off: stream meanwhile
        self._yield_asked += 1
        ticket = self._yield_asked
        self._bulk_kick.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                while self._yield_answered < ticket:
                    self._yield_event.clear()
                    await self._yield_event.wait()

    def _answer_yield(self) -> None:
        """The bulk lane decided (leased the old rows, or no job now) for every question it had seen."""
        if self._bulk_pass_saw > self._yield_answered:
            self._yield_answered = self._bulk_pass_saw
            self._yield_event.set()

    async def _deliver(self, lease: Lease) -> float:
        rows = [(r.event_id, r.payload) for r in lease.rows]
        state = self.stream_state
        state.active = True
        try:
            state.requests_total += 1
            result = await self.stream.deliver(rows, pace=self.pacer.wait if self.pacer is not None else None)
        except DataCloudError as exc:
            return await self._delivery_failed(lease, exc)
        except Exception as exc:  # contained: an answer no client check foresaw must not strand the lease
            log.debug("stream: unexpected error traceback", exc_info=exc)
            delay = self._stream_backoff.next_delay()
            return await self._retry_later(lease, f"unexpected {type(exc).__name__}: {exc}", delay)
        finally:
            state.active = False
        accepted = result.accepted_ids
        rejected = result.rejected
        if rejected and not accepted:
            verdict = self.guard.on_refused(rejected)
            if verdict != "dead_letter":
                return await self._refused(lease, rejected, verdict)
        elif accepted:
            self.guard.on_accepted()
        if rejected:
            await self.outbox.reject(lease, rejected)
            state.rejected_total += len(rejected)
            self._on_rejected(rejected)
            log.warning("stream: %d record(s) rejected by Data Cloud, moved to dead letters; first: %s "
                        "hint=see `solar-agent outbox dead-letters`", len(rejected), next(iter(rejected.values())))
        acked = await self.outbox.ack(lease, accepted) if accepted else 0
        if result.error is not None:
            # Part of the batch was settled before a request failed (a 429 midway through a bisection):
            # that part stays settled, the rest goes back to the queue and waits like any failure.
            self._on_sent("stream", acked)
            return await self._delivery_failed(lease, result.error)
        if self.pacer is not None:
            self.pacer.on_success()
        if state.consecutive_failures:
            log.info("stream: delivering again after %d failed attempt(s)", state.consecutive_failures)
        self._stream_backoff.reset()
        state.ok(self.now_ms(), acked)
        self._on_sent("stream", acked)
        return 0.0

    async def _refused(self, lease: Lease, rejected: dict[str, str], verdict: str) -> float:
        """Every record of the batch refused for one reason: keep the rows; defer them or stop."""
        reason = next(iter(rejected.values()))
        if verdict == "defer":
            # Not dead letters yet: the next batch (other rows) tells a schema from bad records.
            await self.outbox.nack(lease, self.now_ms() + int(self.cfg.flush_interval_seconds * 1000))
            log.warning("stream: Data Cloud refused all %d record(s) of a batch (%s); kept in the outbox while "
                        "the next batch shows whether the connector's schema is the cause", lease.count, reason)
            self._kick.set()
            return 0.0
        await self.outbox.nack(lease, 0)
        self._validate_at = time.monotonic() + RECHECK_SECONDS
        log.error("stream: Data Cloud refuses every record for the same reason (%s); delivery stopped, every row "
                  "stays in the outbox hint=%s", reason, MISMATCH_HINT)
        return RECHECK_SECONDS

    async def _delivery_failed(self, lease: Lease, exc: DataCloudError) -> float:
        """The rows of ``lease`` still leased go back with a delay: Retry-After, else the lane's backoff."""
        if isinstance(exc, ThrottledError):
            if self.pacer is not None:
                self.pacer.on_throttle(exc.retry_after)
            # Everyone throttled in the same second hears the same Retry-After: spread the retries
            # over one more such period instead of returning as one wave.
            delay = (exc.retry_after * (1 + self._rng.random()) if exc.retry_after is not None
                     else self._stream_backoff.next_delay())
            return await self._retry_later(lease, f"throttled (429): {exc}", delay)
        delay = self._stream_backoff.next_delay()
        return await self._retry_later(lease, f"{type(exc).__name__}: {exc}", delay)

    async def _retry_later(self, lease: Lease, error: str, delay: float) -> float:
        retry_at = self.now_ms() + int(delay * 1000)
        await self.outbox.nack(lease, retry_at)
        state = self.stream_state
        if state.consecutive_failures == 0 or state.consecutive_failures % 10 == 0:
            log.warning("stream: delivery failed (%s); %d rows back in the outbox, retry in %.1fs",
                        error, lease.count, delay)
        state.failed(error, retry_at)
        return delay

    # -- bulk lane ----------------------------------------------------------------------------------
    def bulk_due(self, stats: OutboxStats) -> bool:
        """True when the backlog is old or large enough for a bulk backfill."""
        if self._force_bulk and stats.rows - stats.leased > 0:
            return True
        if stats.oldest_enqueued_ms is None or stats.rows - stats.leased <= 0:
            return False
        if stats.rows - stats.leased >= self.cfg.bulk_min_rows:
            return True
        age_s = (self.now_ms() - stats.oldest_enqueued_ms) / 1000
        worth_it = stats.bytes >= BULK_AGE_MIN_BATCHES * self.cfg.batch_max_bytes
        return age_s >= self.cfg.bulk_after_seconds and worth_it

    def fresh_window_ms(self) -> int:
        """Rows younger than this stay in the stream lane while a bulk job takes the old part.

        Never longer than ``bulk_after_seconds``: a backlog old enough for bulk always has rows to give.
        """
        return int(min(max(2 * self.cfg.flush_interval_seconds, 5.0), self.cfg.bulk_after_seconds) * 1000)

    async def _resume_bulk_jobs(self) -> None:
        """Finish the jobs a previous run journaled. Started during an outage, this waits for the link
        (the rows stay leased meanwhile) instead of ending the agent."""
        assert self.bulk is not None
        while not self._stopping:
            try:
                settled = await self.bulk.resume_jobs()
            except DataCloudError as exc:
                delay = self._bulk_backoff.next_delay()
                self.bulk_state.failed(f"resuming a bulk job: {type(exc).__name__}: {exc}",
                                       self.now_ms() + int(delay * 1000))
                log.warning("bulk: cannot resume the previous run's job yet (%s); retry in %.0fs", exc, delay)
                await self._bulk_kick.wait(delay)
                continue
            for lease, final in settled:
                await self._settle_bulk(lease, final)
            self.bulk_state.retry_at_ms = None
            return

    async def bulk_loop(self) -> None:
        """The bulk lane until ``stop``; restartable (it resumes journaled jobs first)."""
        assert self.bulk is not None
        await self._resume_bulk_jobs()
        check_every = max(1.0, min(self.cfg.flush_interval_seconds, 30.0))
        while not self._stopping:
            self._beat("drain")
            self._bulk_pass_saw = self._yield_asked
            stats = await self.outbox.stats()
            if self.bulk_state.retry_at_ms and self.bulk_state.retry_at_ms > self.now_ms() and not self._force_bulk:
                self._answer_yield()  # no job now: the stream lane need not wait for one
                await self._bulk_kick.wait((self.bulk_state.retry_at_ms - self.now_ms()) / 1000)
                continue
            # A bulk job on a dead link only burns the org's 20 jobs/hour: wait until streaming works.
            # Nor while the connector refuses our records (a schema mismatch): the job would fail.
            if not self.bulk_due(stats) or self.stream_state.consecutive_failures or self.guard.mismatch:
                self._answer_yield()
                await self._bulk_kick.wait(check_every)
                continue
            if await self.run_bulk_once() is None:
                # Due, yet no row older than the fresh window (a burst of fresh rows past bulk_min_rows:
                # held readings released, dead letters requeued): wait for them to age, do not spin.
                await self._bulk_kick.wait(check_every)

    async def run_bulk_once(self) -> str | None:
        """Lease the old part of the backlog and push it through one bulk job."""
        assert self.bulk is not None
        self._force_bulk = False
        lease_bulk = self.outbox.lease_bulk
        try:
            lease: Lease | None = await lease_bulk(
                BULK_MAX_ROWS_PER_JOB, max_bytes=self.bulk.max_lease_bytes,
                older_than_ms=self.now_ms() - self.fresh_window_ms()
            )
        finally:
            self._answer_yield()
        if lease is None:
            return None
        state = self.bulk_state
        state.active = True
        log.info("bulk: backfilling %d rows (%.1f MB) in a bulk job", lease.count, lease.payload_bytes / 1e6)
        try:
            final = await self.bulk.run_job(lease)
        except OutboxError:
            raise                 # the outbox's own failure is not the job's: fatal ones end the agent
        except Exception as exc:  # DataCloudError and anything unforeseen: the rows go back, the lane backs off
            if not isinstance(exc, DataCloudError):
                log.debug("bulk: unexpected error traceback", exc_info=exc)
            delay = (self._rng.uniform(*BULK_THROTTLE_SECONDS) if isinstance(exc, ThrottledError)
                     else self._bulk_backoff.next_delay())
            retry_at = self.now_ms() + int(delay * 1000)
            await self.outbox.nack(lease, 0)  # due at once; the lane's own backoff paces the retry
            state.failed(f"{type(exc).__name__}: {exc}", retry_at)
            log.warning("bulk: job failed (%s); %d rows back in the outbox, next bulk attempt in %.0fs",
                        exc, lease.count, delay)
            return "Failed"
        finally:
            state.active = False
        await self._settle_bulk(lease, final)
        return final

    async def _settle_bulk(self, lease: Lease, final: str) -> None:
        assert self.bulk is not None
        await self._settle_rows(lease, final)
        await self.bulk.forget(lease)

    async def _settle_rows(self, lease: Lease, final: str) -> None:
        state = self.bulk_state
        state.jobs_total += 1
        if final == TERMINAL_OK:
            acked = await self.outbox.ack(lease)
            self._bulk_backoff.reset()
            state.ok(self.now_ms(), acked)
            self._on_sent("bulk", acked)
            log.info("bulk: job complete, %d rows delivered", acked)
        else:
            delay = self._bulk_backoff.next_delay()
            await self.outbox.nack(lease, 0)  # due at once; the lane's own backoff paces the retry
            state.failed(f"job ended {final}", self.now_ms() + int(delay * 1000))
            log.warning("bulk: job ended %s; its rows are back in the outbox hint=see the job in Data Cloud "
                        "Setup > Data Streams", final)
