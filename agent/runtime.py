"""The running agent: wires sources -> records -> outbox -> drain -> Data Cloud.

Every long-lived component (each source, each drain lane, the clock hold-back, the systemd status
publisher, the status server) runs under one :class:`~agent.supervise.Supervisor` inside the run's
TaskGroup: an unexpected exception restarts that component with backoff and shows in health, and
the others keep running. Only an ``OutboxFatalError`` (disk full, I/O error) ends the run, with
``EXIT_FATAL``, so systemd restarts the service.

Signals: SIGTERM/SIGINT stop the sources first (each gets ``SOURCE_STOP_SECONDS``), let an
in-flight delivery finish within ``DRAIN_STOP_SECONDS``, close the outbox and return 0. A stop
always completes: tasks that do not end when cancelled are cancelled again and then abandoned, and
the ``run`` command arms a hard exit at ``STOP_DEADLINE_SECONDS`` (committed rows are safe in the
WAL whatever happens after). SIGHUP reloads the config when it is valid (``RELOADING=1`` then
``READY=1`` to systemd: same process, new sources and drain) and keeps the running one, loudly,
when it is not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import aiohttp

from agent import __version__
from agent.bulk_lane import BulkLane
from agent.clock import ClockGuard
from agent.config import AgentConfig, load_config
from agent.datacloud import BulkClient, JobBudget, Pacer, StreamingClient, TokenProvider, make_ssl_context
from agent.drain import Drain, LaneState
from agent.errors import AgentError, OutboxFatalError, OutboxFullError, SchemaError
from agent.fleet import STATUS_FIELDS, STATUS_OBJECT, ReportState, StatusBuilder, StatusReporter
from agent.holdback import HoldBack
from agent.metrics import AgentMetrics
from agent.notify import Notifier, Watchdog, watchdog_interval
from agent.outbox import AppendResult, ObjectQueue, Outbox, OutboxStats, ReleaseResult
from agent.records import (
    IDENTITY_FIELDS,
    EncodedRecord,
    Reading,
    RecordBuilder,
    Schema,
    Value,
    format_time,
    load_schema,
)
from agent.sources import (
    RejectedInput,
    Source,
    SupportsBufferedEmit,
    SupportsCommitRequest,
    SupportsFeedHealth,
)
from agent.status import (
    DeviceCheck,
    FeedCheck,
    HealthInputs,
    HealthPolicy,
    HealthReport,
    StatusServer,
    evaluate_health,
)
from agent.supervise import Supervisor

log = logging.getLogger(__name__)

SOURCE_STOP_SECONDS: Final = 3.0      # a source's cancellation, then it is abandoned
DRAIN_STOP_SECONDS: Final = 10.0      # an in-flight delivery may finish; its rows stay leased otherwise
OTHERS_STOP_SECONDS: Final = 2.0
# The whole stop, from SIGTERM to exit, under systemd's TimeoutStopSec=30 with room to spare.
STOP_DEADLINE_SECONDS: Final = 20.0
EXIT_OK = 0
EXIT_FATAL = 70

SourceFactory = Callable[[AgentConfig], list[Source]]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


# A site config is a few kilobytes; a file this large is a mistake (or an attack), not a config.
MAX_CONFIG_BYTES: Final = 1_000_000


def _load_for_reload(path: str) -> AgentConfig:
    size = os.stat(path).st_size
    if size > MAX_CONFIG_BYTES:
        raise AgentError(f"{path} is {size} bytes; a site config is a few kilobytes",
                         hint="restore the file (it was probably overwritten by something else)")
    cfg = load_config(path)
    load_schema(cfg.datacloud.schema_path, cfg.datacloud.object_name)
    return cfg


def full_record_of(builder: RecordBuilder, time_ms: int) -> EncodedRecord:
    """A record with a value in every metric field, as a busy inverter's would be (a schema check:
    a null passes a type check that a value may fail)."""
    metrics: dict[str, Value] = {}
    for f in builder.schema.fields:
        if f.name in IDENTITY_FIELDS:
            continue
        if f.type == "number":
            metrics[f.name] = 1.0
        else:
            metrics[f.name] = format_time(time_ms) if f.format == "date-time" else "RUNNING"
    return builder.encode(Reading("solar-agent-schema-check", time_ms, "validate", metrics))


async def _samples(queue: ObjectQueue, builder: RecordBuilder, now_ms: Callable[[], int]) -> list[bytes]:
    """Records to check the connector's schema with: the oldest queued (real), then a full one."""
    return [r.payload for r in await queue.peek(1)] + [full_record_of(builder, now_ms()).payload]


async def _status_samples(queue: ObjectQueue, builder: StatusBuilder, now_ms: Callable[[], int],
                          reporting: bool) -> list[bytes]:
    """The same for the gateway status object; none while reporting is off and nothing is queued."""
    sample = [builder.sample(now_ms()).payload] if reporting else []
    return [r.payload for r in await queue.peek(1)] + sample


def _status_schema(cfg: AgentConfig) -> Schema | None:
    """The gateway status object of the schema file; None (said once, loudly) when the file lacks it."""
    try:
        return load_schema(cfg.datacloud.schema_path, STATUS_OBJECT, STATUS_FIELDS)
    except SchemaError as exc:
        if cfg.fleet.interval_seconds > 0:
            log.warning("fleet: no gateway status records: %s hint=%s", exc.message,
                        "use the schema file shipped with this version (it holds both objects) and upload it "
                        "to the connector, or set [fleet] interval_seconds = 0")
        return None


def _lane_json(st: LaneState, now: int) -> dict[str, Any]:
    return {
        "sent": st.sent_total, "requests": st.requests_total, "rejected": st.rejected_total,
        "failures": st.failures_total, "consecutive_failures": st.consecutive_failures,
        "last_success_age_s": None if st.last_success_ms is None else round((now - st.last_success_ms) / 1000, 1),
        "last_success_ms": st.last_success_ms,
        "retry_in_s": None if not st.retry_at_ms else max(0.0, round((st.retry_at_ms - now) / 1000, 1)),
        "last_error": st.last_error, "active": st.active,
    }


def _hard_exit(seconds: float) -> None:
    # Runs on a timer thread when a stop overran: every accepted reading is committed (WAL), so
    # ending now loses nothing that was acknowledged; the next start releases the leases.
    log.critical("agent: the stop did not finish within %.0fs; exiting now (committed readings are safe) hint=%s",
                 seconds, "report it with the journal: some task did not end when cancelled")
    logging.shutdown()
    os._exit(EXIT_OK)


async def _cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], seconds: float) -> None:
    """Cancel ``tasks`` and wait for them, at most ``seconds``; re-cancel a task that swallowed it.

    A library that catches CancelledError (seen with device drivers) must not hold up a stop.
    """
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            log.warning("agent: %d task(s) did not stop when cancelled: %s", len(pending),
                        ", ".join(sorted(t.get_name() for t in pending)))
            return
        _done, pending = await asyncio.wait(pending, timeout=min(left, 0.5))


def build_sources(cfg: AgentConfig) -> list[Source]:
    """One source per Modbus bus and per MQTT feed in the config."""
    sources: list[Source] = []
    # Imported only when configured: pymodbus and paho cost megabytes of RSS on a small gateway.
    if cfg.modbus:
        from agent.sources.modbus import ModbusSource

        sources += [ModbusSource(bus) for bus in cfg.modbus]
    if cfg.mqtt:
        from agent.sources.mqtt import MqttSource

        sources += [MqttSource(feed, site_id=cfg.site.id) for feed in cfg.mqtt]
    return sources


class RecentEvents:
    """How many events happened within the last ``window_seconds`` (health's "recent" counts)."""

    def __init__(self, window_seconds: float) -> None:
        self._window_ms = int(window_seconds * 1000)
        self._events: collections.deque[tuple[int, int]] = collections.deque()

    def add(self, now_ms: int, n: int = 1) -> None:
        if n > 0:
            self._events.append((now_ms, n))
            self._trim(now_ms)

    def count(self, now_ms: int) -> int:
        self._trim(now_ms)
        return sum(n for _, n in self._events)

    def _trim(self, now_ms: int) -> None:
        while self._events and now_ms - self._events[0][0] > self._window_ms:
            self._events.popleft()


@dataclass(slots=True)
class _Run:
    """Everything that lives for one configuration (a reload builds a new one)."""

    cfg: AgentConfig
    outbox: Outbox
    drain: Drain
    sources: list[Source]
    builder: RecordBuilder
    started_ms: int
    tokens: TokenProvider
    holdback: HoldBack                     # readings taken while the clock is unsynchronised
    supervisor: Supervisor
    stats: OutboxStats | None = None       # cached for health(), which must not do I/O
    status_server: StatusServer | None = None
    source_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The gateway's own status records (agent/fleet.py): their lanes, and the reporter writing them.
    status_drain: Drain | None = None
    status_queue: ObjectQueue | None = None
    reporter: StatusReporter | None = None

    @property
    def drains(self) -> list[Drain]:
        return [self.drain] if self.status_drain is None else [self.drain, self.status_drain]


class Agent:
    """The agent process. ``run`` returns an exit code.

    Args:
        hard_exit_seconds: when set (the ``run`` command), a stop request arms a timer that ends the
            process with exit 0 after this many seconds even if some task never finishes. Left
            unset in-process (tests, the demo), where exiting the interpreter is not ours to do.
        health_policy: the thresholds of ``health()``; the defaults suit a site (tests shorten them).
    """

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        source_factory: SourceFactory = build_sources,
        on_committed: Callable[[Sequence[EncodedRecord]], None] | None = None,
        status_enabled: bool = True,
        clock: ClockGuard | None = None,
        now_ms: Callable[[], int] = wall_ms,
        hard_exit_seconds: float | None = None,
        health_policy: HealthPolicy | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = AgentMetrics()
        self._source_factory = source_factory
        self._on_committed = on_committed
        self._status_enabled = status_enabled
        self._now_ms = now_ms
        self._hard_exit_seconds = hard_exit_seconds
        self._hard_exit: threading.Timer | None = None
        self._stop_requested: float | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._run: _Run | None = None
        self.notifier = Notifier.from_env()
        self.watchdog = Watchdog(self.notifier)
        self.clock = clock or ClockGuard(assume_synced=cfg.clock.assume_synced)
        self.ready = asyncio.Event()
        self._reloads = 0
        self.health_policy = health_policy or HealthPolicy()
        self._recent_dead = RecentEvents(self.health_policy.recent_seconds)
        self._recent_dropped = RecentEvents(self.health_policy.recent_seconds)
        # Since the agent started, for the gateway status records' "*_new" counters (agent/fleet.py).
        self._dead_lettered_total = 0
        self._rejected_inputs_total = 0
        self._refused_full_total = 0
        self.fleet = ReportState()

    # -- control ------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self._stop.is_set():
            # One line for a clean stop (at its end); this one only with -v.
            log.debug("agent: stop requested; stopping within %.0fs", STOP_DEADLINE_SECONDS)
            self._stop_requested = time.monotonic()
            self._arm_hard_exit()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def _arm_hard_exit(self) -> None:
        if self._hard_exit_seconds is None or self._hard_exit is not None:
            return
        timer = threading.Timer(self._hard_exit_seconds, _hard_exit, args=(self._hard_exit_seconds,))
        timer.daemon = True
        timer.start()
        self._hard_exit = timer

    async def stop_sources(self) -> None:
        """Stop reading devices (the drain goes on): the first step of a stop, and the demo's last phase.

        Returns once every reading the sources handed over is committed (buffered emits included).
        """
        run = self._run
        if run is None:
            return
        await _cancel_and_wait(run.source_tasks, SOURCE_STOP_SECONDS)
        await run.outbox.flush()

    @property
    def drain(self) -> Drain | None:
        return self._run.drain if self._run else None

    @property
    def outbox(self) -> Outbox | None:
        return self._run.outbox if self._run else None

    @property
    def supervisor(self) -> Supervisor | None:
        return self._run.supervisor if self._run else None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        with contextlib.ExitStack() as signals:
            for sig, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                                 (signal.SIGHUP, self.request_reload)):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, handler)
                    signals.callback(loop.remove_signal_handler, sig)
            fatal: list[BaseException] = []
            try:
                while await self._run_config(self.cfg):
                    pass
            except* OutboxFatalError as group:
                fatal.extend(group.exceptions)
            finally:
                self.notifier.close()
            for exc in fatal:
                log.critical("outbox: cannot commit, stopping so systemd restarts the agent: %s", exc)
            if not fatal:
                took = "" if self._stop_requested is None else f" in {time.monotonic() - self._stop_requested:.1f}s"
                log.info("agent: stopped%s", took)
            return EXIT_FATAL if fatal else EXIT_OK

    async def _try_reload(self) -> AgentConfig | None:
        try:
            # Off the event loop: reading and validating files is blocking I/O.
            new = await asyncio.to_thread(_load_for_reload, self.cfg.source_file)
        except Exception as exc:  # any reloaded file: a bad one is refused, never fatal
            log.error("reload: %s is not valid, keeping the running config: %s", self.cfg.source_file,
                      exc if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}")
            return None
        log.info("reload: %s is valid, restarting sources and drain with it", self.cfg.source_file)
        return new

    async def _run_config(self, cfg: AgentConfig) -> bool:
        """Run one configuration until stop (False) or a valid reload (True)."""
        schema = load_schema(cfg.datacloud.schema_path, cfg.datacloud.object_name)
        builder = RecordBuilder(schema, cfg.site.id, cfg.site.customer_id, __version__)
        ssl_ctx = make_ssl_context(cfg.datacloud.ca_file)
        timeout = aiohttp.ClientTimeout(total=cfg.datacloud.timeout_seconds)
        async with contextlib.AsyncExitStack() as stack:
            outbox = await stack.enter_async_context(Outbox(cfg.outbox))
            session = await stack.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_ctx, limit=8), timeout=timeout)
            )
            tokens = TokenProvider(cfg.datacloud, session)
            # The URL names the connector's object endpoint; the schema lookup its object name.
            streaming = StreamingClient(tokens, session, cfg.datacloud.source_name, cfg.datacloud.endpoint_name,
                                        max_body_bytes=cfg.drain.batch_max_bytes)
            # Both objects' lanes share the org's limits: one request pacer, one bulk job budget.
            pacer = Pacer(cfg.drain.max_requests_per_second)
            budget = JobBudget()
            bulk = BulkLane(BulkClient(tokens, session, cfg.datacloud.source_name, cfg.datacloud.endpoint_name),
                            outbox, schema, max_file_bytes=cfg.drain.bulk_file_max_bytes,
                            tmp_dir=cfg.outbox.path.parent, budget=budget)
            readings = ObjectQueue(outbox, None)
            drain = Drain(readings, streaming, bulk, cfg.drain, pacer=pacer,
                          on_sent=self._count_sent, on_rejected=self._count_rejected,
                          beat=self.watchdog.beat, samples=partial(_samples, readings, builder, self._now_ms))
            # Created before the sources start, so it sees an unsynchronised clock before any reading.
            holdback = HoldBack(outbox, self.clock, builder, on_released=partial(self._released, drain))
            supervisor = Supervisor(fatal=(OutboxFatalError,),
                                    on_restart=lambda name: self.metrics.restarts_total.inc(component=name))
            run = _Run(cfg, outbox, drain, self._source_factory(cfg), builder, self._now_ms(), tokens, holdback,
                       supervisor)
            status_schema = _status_schema(cfg)
            if status_schema is not None:
                # The gateway's status records: a queue, lanes and a schema guard of their own (a
                # connector without the object refuses them, never the readings), same limits.
                status_builder = StatusBuilder(status_schema, cfg.site.id, cfg.site.customer_id, __version__)
                endpoint = cfg.datacloud.status_endpoint_name
                run.status_queue = ObjectQueue(outbox, STATUS_OBJECT)
                run.status_drain = Drain(
                    run.status_queue,
                    StreamingClient(tokens, session, cfg.datacloud.source_name, endpoint,
                                    max_body_bytes=cfg.drain.batch_max_bytes),
                    BulkLane(BulkClient(tokens, session, cfg.datacloud.source_name, endpoint), outbox,
                             status_schema, max_file_bytes=cfg.drain.bulk_file_max_bytes,
                             tmp_dir=cfg.outbox.path.parent, budget=budget, obj=STATUS_OBJECT),
                    cfg.drain, pacer=pacer, on_sent=self._count_sent, on_rejected=self._count_rejected,
                    beat=self.watchdog.beat,
                    samples=partial(_status_samples, run.status_queue, status_builder, self._now_ms,
                                    cfg.fleet.interval_seconds > 0))
                if cfg.fleet.interval_seconds > 0:
                    run.reporter = StatusReporter(status_builder, cfg.fleet.interval_seconds, self._status_snapshot,
                                                  partial(self._commit_status, run), self.fleet, now_ms=self._now_ms)
            for src in run.sources:
                if isinstance(src, SupportsFeedHealth):
                    src.on_outcome = self._count_input
                if isinstance(src, SupportsCommitRequest):
                    src.request_commit = outbox.commit_soon
            self._run = run
            if self._status_enabled:
                # Entered here: a socket in use or a bad listener fails the start with the config's own
                # error. From then on it is the supervised component "status" (StatusServer.watch).
                # Each request runs in its own guard (agent/status.py).
                run.status_server = await stack.enter_async_context(
                    StatusServer(self, socket_path=cfg.status.socket_path, listen=cfg.status.listen,
                                 token_file=cfg.status.token_file,
                                 on_error=lambda reason: self.metrics.errors_total.inc(stage="status")))
            try:
                return await self._supervise(run)
            finally:
                self._run = None

    async def _supervise(self, run: _Run) -> bool:
        sup = run.supervisor
        async with asyncio.TaskGroup() as tg:
            for src in run.sources:
                emit = self._emit_buffered if isinstance(src, SupportsBufferedEmit) else self._emit
                run.source_tasks.append(sup.start(tg, src.name, partial(src.run, emit, self._reject_input)))
            # The drain beats from its loop (also while idle); a hung event loop stops the beats and
            # systemd's watchdog restarts us. Sources do not beat: a dead inverter is not a hang.
            self.watchdog.register("drain")
            self.watchdog.add_check("supervisor", lambda: [c.name for c in sup.gave_up()])
            drain_tasks = [sup.start(tg, "drain.stream", run.drain.stream_loop)]
            if run.drain.bulk is not None:
                drain_tasks.append(sup.start(tg, "drain.bulk", run.drain.bulk_loop))
            if run.status_drain is not None:
                drain_tasks.append(sup.start(tg, "fleet.stream", run.status_drain.stream_loop))
                if run.status_drain.bulk is not None:
                    drain_tasks.append(sup.start(tg, "fleet.bulk", run.status_drain.bulk_loop))
            others = [sup.start(tg, "notify", partial(self._publish_status, run)),
                      sup.start(tg, "clock.holdback", run.holdback.run)]
            if run.reporter is not None:
                others.append(sup.start(tg, "fleet.report", run.reporter.run))
            if run.status_server is not None:
                others.append(sup.start(tg, "status", run.status_server.watch))
            interval = watchdog_interval()
            if interval is not None:
                others.append(tg.create_task(self.watchdog.run(interval / 2), name="agent[watchdog]"))
            self.notifier.ready()
            self.ready.set()
            log.info("agent: running site=%s sources=%d outbox=%s", run.cfg.site.id, len(run.sources),
                     run.cfg.outbox.path)
            reloaded = await self._wait_stop_or_reload()
            if not reloaded:
                self.notifier.stopping()
            # Sources first: nothing new is read while the last deliveries finish.
            await self.stop_sources()
            for d in run.drains:
                d.stop()
            _done, pending = await asyncio.wait(drain_tasks, timeout=DRAIN_STOP_SECONDS)
            if pending:
                log.warning("agent: delivery still running after %.0fs; its rows stay in the outbox",
                            DRAIN_STOP_SECONDS)
            await _cancel_and_wait([*drain_tasks, *others], OTHERS_STOP_SECONDS)
        self.ready.clear()
        return reloaded

    async def _wait_stop_or_reload(self) -> bool:
        while True:
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._stop.is_set():
                return False
            self._reload.clear()
            # systemd 252 knows RELOADING=1 ... READY=1; STOPPING=1 here made it stop the unit.
            self.notifier.reloading()
            new = await self._try_reload()
            if new is not None:
                self.cfg = new
                self._reloads += 1
                return True        # the next run sends READY=1 once it is up
            self.notifier.ready()

    async def _publish_status(self, run: _Run) -> None:
        while True:
            previous = run.stats
            stats = run.stats = await run.outbox.stats()
            if previous is not None and stats.dropped_total > previous.dropped_total:
                # Drops of queued or held rows to make room (drop_oldest): health shows them for a while.
                self._recent_dropped.add(self._now_ms(), stats.dropped_total - previous.dropped_total)
            self.metrics.outbox_events.set(stats.rows)
            self.metrics.dead_letters.set(stats.dead_letters)
            self.metrics.held_events.set(stats.held)
            self.metrics.rejected_inputs.set(stats.rejected_inputs)
            if stats.oldest_enqueued_ms is not None:
                age_s = (self._now_ms() - stats.oldest_enqueued_ms) / 1000
                self.metrics.oldest_undelivered_seconds.set(max(0.0, age_s))
            else:
                self.metrics.oldest_undelivered_seconds.set(0)
            self.metrics.outbox_bytes.set(stats.bytes)
            self.notifier.status(f"backlog={stats.rows} held={stats.held} lane={run.drain.lane} "
                                 f"dead_letters={stats.dead_letters}")
            await asyncio.sleep(5.0)

    # -- the emit path ------------------------------------------------------------------------------
    async def _emit(self, readings: Sequence[Reading]) -> None:
        """Commit readings; returns after the commit (a source that acknowledges its peer needs that)."""
        committed = await self._queue(readings)
        if committed is None:
            return
        try:
            # Shielded: a source stopped while it waits must not lose the accounting of its commit.
            await asyncio.shield(committed)
        except OutboxFullError:
            return          # refused and counted (_commit_done); the source may ack: nothing was stored

    async def _emit_buffered(self, readings: Sequence[Reading]) -> None:
        """Queue readings for the next group commit and return without waiting for it.

        For sources with nothing to acknowledge (Modbus polls): a power cut before the commit loses
        at most ``outbox.commit_interval_ms`` of their readings, and a poll loop is never held up
        by a commit. A fatal outbox error still reaches the source: the next emit raises it.
        """
        await self._queue(readings)

    async def _queue(self, readings: Sequence[Reading]) -> asyncio.Future[AppendResult] | None:
        """Admit and encode readings, queue them for the next group commit (within commit_interval_ms)."""
        run, source, encoded = await self._admit(readings)
        if run is None:
            return None
        committed = run.outbox.enqueue(encoded)
        committed.add_done_callback(partial(self._commit_done, run, source, encoded))
        return committed

    def _commit_done(self, run: _Run, source: str, encoded: list[EncodedRecord],
                     fut: asyncio.Future[AppendResult]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, OutboxFullError):
            self._refused_full(run, len(encoded), exc)
        elif exc is None:
            self._committed(run, source, encoded, fut.result())
        # Anything else is the outbox's fatal error: logged where it happened, raised to a waiting
        # source, and to a buffered one by its next emit (Outbox refuses every call once it failed).

    async def _admit(self, readings: Sequence[Reading]) -> tuple[_Run | None, str, list[EncodedRecord]]:
        """Hold back untrusted times, encode the rest; (None, ...) when nothing is left to append."""
        run = self._run
        if run is None:
            raise asyncio.CancelledError
        encoded: list[EncodedRecord] = []
        source = readings[0].source if readings else ""
        try:
            # Readings whose time cannot be trusted are held durably (committed when admit returns)
            # and re-stamped once the clock syncs; never sent with a wrong time.
            readings, held = await run.holdback.admit(readings)
        except OutboxFullError as exc:
            self._refused_full(run, len(readings), exc)
            return None, source, encoded
        if held:
            self.metrics.received_events_total.inc(held, source=source)
        for reading in readings:
            try:
                encoded.append(run.builder.encode(reading))
            except Exception as exc:  # one bad reading (RecordError, or a value no encoder foresaw) stays alone
                self.metrics.events_discarded_total.inc(reason="bad_record")
                log.warning("record: dropped a reading of device=%s: %s", reading.device_id,
                            exc if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}")
        return (run if encoded else None), source, encoded

    def _committed(self, run: _Run, source: str, encoded: list[EncodedRecord], result: AppendResult) -> None:
        self.metrics.received_events_total.inc(result.appended, source=source)
        if result.dropped:
            self.metrics.events_discarded_total.inc(result.dropped, reason="outbox_full")
        run.drain.notify_appended(result.appended, sum(len(e.payload) for e in encoded))
        if self._on_committed is not None:
            self._on_committed(encoded)

    def _released(self, drain: Drain, result: ReleaseResult) -> None:
        drain.notify_appended(result.restamped, result.restamped_bytes)
        if result.lost:
            self._recent_dead.add(self._now_ms(), result.lost)
            self._dead_lettered_total += result.lost

    def _refused_full(self, run: _Run, n: int, exc: OutboxFullError) -> None:
        self._refused_full_total += n
        self.metrics.events_discarded_total.inc(n, reason="outbox_full")
        self._recent_dropped.add(self._now_ms(), n)
        log.error("outbox: full, %d new readings refused (when_full=%s): %s", n, run.cfg.outbox.when_full, exc)

    async def _reject_input(self, item: RejectedInput) -> None:
        """A source's input that cannot become readings: recorded durably before the source acks it."""
        run = self._run
        if run is None:
            raise asyncio.CancelledError
        await run.outbox.record_rejected(item)
        if not item.redelivered:
            self._rejected_inputs_total += 1

    def _count_input(self, source: str, outcome: str) -> None:
        self.metrics.source_inputs_total.inc(source=source, outcome=outcome)

    def _count_sent(self, lane: str, n: int) -> None:
        self.metrics.sent_events_total.inc(n, lane=lane)

    def _count_rejected(self, reasons: dict[str, str]) -> None:
        self.metrics.events_discarded_total.inc(len(reasons), reason="dead_letter")
        self._recent_dead.add(self._now_ms(), len(reasons))
        self._dead_lettered_total += len(reasons)

    # -- the gateway's own status records (agent/fleet.py) ------------------------------------------
    async def _status_snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return await self.status(), self.health().to_json()

    async def _commit_status(self, run: _Run, record: EncodedRecord) -> None:
        """Append one status record like a reading: durable, then its lane is told."""
        try:
            result = await run.outbox.append([record])
        except OutboxFullError as exc:
            self._refused_full(run, 1, exc)
            return
        if result.dropped:
            self.metrics.events_discarded_total.inc(result.dropped, reason="outbox_full")
        if run.status_drain is not None:
            run.status_drain.notify_appended(result.appended, len(record.payload))
        if self._on_committed is not None:
            self._on_committed([record])

    # -- SupportsControl (operator actions over the status socket) ---------------------------------
    async def flush_now(self, *, bulk: bool = False, wait_seconds: float = 10.0) -> dict[str, Any]:
        """`solar-agent drain --now`: deliver now, wait for that attempt, and say what happened.

        Readings polled but still waiting for their group commit (up to ``outbox.commit_interval_ms``)
        are committed first: "now" includes the poll a technician just watched come in.
        """
        run = self._run
        if run is None:
            raise AgentError("the agent is starting or stopping", hint="try again in a few seconds")
        drain = run.drain
        await run.outbox.flush()
        before = await run.outbox.stats()
        stream, bulk_st = drain.stream_state, drain.bulk_state
        marks = (stream.requests_total, stream.sent_total, bulk_st.jobs_total, bulk_st.sent_total,
                 bulk_st.failures_total)
        for d in run.drains:
            d.flush_now(bulk=bulk)
        deadline = time.monotonic() + wait_seconds
        timed_out = False
        # Poll the lanes' counters with a deadline: the drain has no completion event to wait on,
        # and an operator wants an answer in seconds, not at the next flush interval.
        while before.rows - before.leased > 0:
            if bulk and drain.bulk is not None:
                done = bulk_st.jobs_total > marks[2] or bulk_st.failures_total > marks[4]
            else:
                done = stream.requests_total > marks[0] and not stream.active
            if done or (await run.outbox.stats()).rows == 0:
                break
            if time.monotonic() >= deadline:
                timed_out = True
                break
            await asyncio.sleep(0.05)
        after = await run.outbox.stats()
        now = self._now_ms()
        return {
            "rows_before": before.rows, "rows_after": after.rows, "leased_before": before.leased,
            "streamed": stream.sent_total - marks[1], "stream_requests": stream.requests_total - marks[0],
            "bulk_jobs": bulk_st.jobs_total - marks[2], "bulk_sent": bulk_st.sent_total - marks[3],
            "bulk_requested": bulk, "lane": drain.lane, "dead_letters": after.dead_letters, "held": after.held,
            "last_error": stream.last_error or bulk_st.last_error,
            "retry_in_s": None if not stream.retry_at_ms else max(0.0, round((stream.retry_at_ms - now) / 1000, 1)),
            "timed_out": timed_out,
        }

    async def requeue_dead_letters(self, event_ids: Sequence[str] | None) -> int:
        """`solar-agent outbox requeue`: dead letters back in the queue (all when None); wakes the drain."""
        run = self._run
        if run is None:
            raise AgentError("the agent is starting or stopping", hint="try again in a few seconds")
        moved = await run.outbox.requeue_dead_letters(None if event_ids is None else list(event_ids))
        if moved:
            log.info("outbox: %d dead letter(s) requeued by an operator", moved)
            for d in run.drains:
                d.flush_now()
        return moved

    # -- StatusProvider -----------------------------------------------------------------------------
    async def status(self) -> dict[str, Any]:
        run = self._run
        if run is None:
            return {"running": False}
        stats = await run.outbox.stats()
        now = self._now_ms()

        def age_s(ms: int | None) -> float | None:
            return None if ms is None else round((now - ms) / 1000, 1)

        devices = [
            {"device": h.device, "source": h.source, "state": h.state, "readings": h.readings_total,
             "errors": dict(h.errors), "last_reading_age_s": age_s(h.last_reading_ms), "last_error": h.last_error}
            for src in run.sources for h in src.health()
        ]
        feeds = []
        for src in run.sources:
            if isinstance(src, SupportsFeedHealth):
                f = src.feed_health()
                feeds.append({"feed": f.source, "url": f.url, "connected": f.connected,
                              "last_connect_error": f.last_connect_error, "messages": f.received_total,
                              "outcomes": f.outcomes, "last_message_age_s": age_s(f.last_message_ms),
                              "last_reading_age_s": age_s(f.last_reading_ms),
                              "example_topic": f.example_topic, "example_reason": f.example_reason})
        lanes = {st.name: _lane_json(st, now) for st in (run.drain.stream_state, run.drain.bulk_state)}
        return {
            "running": True,
            "version": __version__,
            "site": run.cfg.site.id,
            "uptime_s": round((now - run.started_ms) / 1000, 1),
            "lane": run.drain.lane,
            "devices": devices,
            "feeds": feeds,
            "lanes": lanes,
            "components": {c.name: c.to_json() for c in run.supervisor.components()},
            "clock": self.clock.describe(),
            "outbox": {
                "path": str(run.cfg.outbox.path), "rows": stats.rows, "bytes": stats.bytes, "leased": stats.leased,
                "oldest_age_s": None if stats.oldest_enqueued_ms is None
                else round((now - stats.oldest_enqueued_ms) / 1000, 1),
                "dead_letters": stats.dead_letters, "dropped_total": stats.dropped_total,
                "held": stats.held, "rejected_inputs": stats.rejected_inputs,
                "file_bytes": stats.file_bytes, "max_bytes": run.cfg.outbox.max_bytes,
            },
            "totals": {
                "readings": int(sum(v for _, v in self.metrics.received_events_total.samples())),
                "dead_lettered": self._dead_lettered_total, "rejected_inputs": self._rejected_inputs_total,
                "dropped": stats.dropped_total + self._refused_full_total,
            },
            "fleet": await self._fleet_status(run, now),
        }

    async def _fleet_status(self, run: _Run, now: int) -> dict[str, Any]:
        """The gateway status records: how often, how many, what is queued, and their lanes."""
        st = self.fleet
        doc: dict[str, Any] = {
            "object": STATUS_OBJECT, "endpoint": run.cfg.datacloud.status_endpoint_name,
            "interval_s": run.cfg.fleet.interval_seconds, "enabled": run.reporter is not None,
            "reports": st.reports,
            "last_interval": None if st.last_start_ms is None else format_time(st.last_start_ms),
            "last_report_age_s": None if st.last_report_ms is None else round((now - st.last_report_ms) / 1000, 1),
        }
        if run.status_drain is not None and run.status_queue is not None:
            queued = await run.status_queue.stats()
            doc["queued"] = queued.rows
            doc["lane"] = run.status_drain.lane
            doc["lanes"] = {s.name: _lane_json(s, now)
                            for s in (run.status_drain.stream_state, run.status_drain.bulk_state)}
        return doc

    def health(self) -> HealthReport:
        run = self._run
        if run is None:
            return HealthReport(False, ["agent is starting or stopping"])
        stats = run.stats
        now = self._now_ms()
        devices = []
        intervals = {f"modbus:{b.name}": b.poll_interval_seconds for b in run.cfg.modbus}
        feeds = []
        for src in run.sources:
            for h in src.health():
                devices.append(DeviceCheck(h.device, intervals.get(src.name), h.last_reading_ms, h.state,
                                           h.last_error, h.consecutive_failures))
            if isinstance(src, SupportsFeedHealth):
                f = src.feed_health()
                feeds.append(FeedCheck(f.source, f.connected, f.ever_connected, f.last_connect_error,
                                       f.last_unusable_ms, f.last_reading_ms, f.example_topic, f.example_reason))
        auth_failing = run.drain.stream_state.last_error.startswith("AuthError")
        sup = run.supervisor
        return evaluate_health(HealthInputs(
            now_ms=now, started_ms=run.started_ms, devices=devices,
            oldest_undelivered_ms=stats.oldest_enqueued_ms if stats else None,
            auth_ok=False if auth_failing else None,
            auth_error=run.drain.stream_state.last_error if auth_failing else "",
            outbox_bytes=stats.bytes if stats else 0, outbox_max_bytes=run.cfg.outbox.max_bytes,
            clock_synced=self.clock.synced(), feeds=feeds,
            components_restarting=[(c.name, c.last_error) for c in sup.degraded(now)],
            components_failed=[(c.name, c.last_error) for c in sup.gave_up()],
            dead_letters_recent=self._recent_dead.count(now), dropped_recent=self._recent_dropped.count(now),
            held=stats.held if stats else 0,
            schema_mismatch=run.drain.guard.mismatch,
            status_schema_mismatch=(f"{STATUS_OBJECT}: {run.status_drain.guard.mismatch}"
                                    if run.status_drain is not None and run.status_drain.guard.mismatch else ""),
        ), self.health_policy)

    def metrics_text(self) -> str:
        run = self._run
        if run is not None:
            for src in run.sources:
                for h in src.health():
                    for kind, n in h.errors.items():
                        self.metrics.device_errors_total.sync(n, device=h.device, kind=kind)
        return self.metrics.render()
