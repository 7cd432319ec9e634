"""The local status endpoint: ``/health``, ``/status`` and Prometheus ``/metrics``.

It listens on a unix socket (``/run/solar-agent/status.sock``, mode 0660: file permissions are the
access control, so no token), and optionally on TCP ``host:port`` for a monitoring system. The TCP
listener refuses to start without a bearer token file, and every TCP request must present the
token (compared in constant time). The two listeners are separate aiohttp applications, so a
request can never reach the token-free handlers through TCP.

The server knows nothing of the agent: it asks a :class:`StatusProvider`. Health is decided by the
pure function :func:`evaluate_health`, tested with a table; the provider gathers its inputs.

Operator actions (``POST /control/drain``, ``POST /control/requeue``) exist only when the provider
also implements :class:`SupportsControl`, and only on the unix socket: the TCP application is
built without them, so a monitoring token can read the agent but never change its queue.
The CLI's clients are :func:`fetch_status` and :func:`post_control`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import aiohttp
from aiohttp import web

from agent.errors import AgentError, ConfigError
from agent.metrics import CONTENT_TYPE

__all__ = [
    "REASON_CODES",
    "DeviceCheck",
    "FeedCheck",
    "HealthInputs",
    "HealthPolicy",
    "HealthReport",
    "StatusProvider",
    "StatusServer",
    "SupportsControl",
    "evaluate_health",
    "fetch_status",
    "post_control",
]

log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
_CONFIG = "site config"  # the server does not know the file name; the loader's errors do


# -- health -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthReport:
    """``ok`` is False when at least one reason is given. Reasons start with a stable code.

    ``level`` is ``ok``, ``degraded`` (the agent works, something needs a look) or ``failed``
    (something needs a technician before it can work again: see ``FAILED_CODES``).
    """

    ok: bool
    reasons: list[str] = field(default_factory=list)

    @property
    def level(self) -> str:
        if self.ok:
            return "ok"
        failed = any(r.split(":", 1)[0] in FAILED_CODES for r in self.reasons)
        return "failed" if failed else "degraded"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "level": self.level, "reasons": list(self.reasons)}


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds of :func:`evaluate_health`.

    Args:
        silent_polls: a polled device is silent after this many expected intervals without a reading.
        unreachable_failures: consecutive failed reads before a device counts as unreachable (one
            timeout at dusk is not worth a technician's look).
        push_silent_seconds: a pushing (MQTT) device that gave readings before is silent after this long.
        max_undelivered_seconds: the oldest undelivered reading may be this old (an outage the
            bulk lane will backfill is still worth a look after an hour).
        outbox_full_ratio: warn before the byte cap makes the full-outbox policy drop readings.
        connect_grace_seconds: a feed may take this long to connect after the start.
        feed_no_reading_seconds: a feed that receives messages but has given no reading for this
            long is configured wrong (profile, topics): say so with an example topic.
        recent_seconds: the window of "recent" dead letters and dropped readings.
        dead_letters_recent: this many dead letters within the window make health degraded.
    """

    silent_polls: int = 3
    unreachable_failures: int = 3
    push_silent_seconds: float = 600.0
    max_undelivered_seconds: float = 3600.0
    outbox_full_ratio: float = 0.9
    connect_grace_seconds: float = 30.0
    feed_no_reading_seconds: float = 180.0
    recent_seconds: float = 900.0
    dead_letters_recent: int = 1


@dataclass(frozen=True, slots=True)
class DeviceCheck:
    """One device as health sees it. ``expected_interval_seconds`` None: a push device (MQTT)."""

    name: str
    expected_interval_seconds: float | None
    last_reading_ms: int | None = None
    state: str = "ok"                 # ok | backoff | down | unknown (the source's breaker)
    last_error: str = ""
    failures: int = 0                 # consecutive failed reads


@dataclass(frozen=True, slots=True)
class FeedCheck:
    """One MQTT feed (broker connection) as health sees it."""

    name: str
    connected: bool
    ever_connected: bool
    last_connect_error: str = ""
    last_unusable_ms: int | None = None   # the last message that could have been a reading and was not
    last_reading_ms: int | None = None
    example_topic: str = ""           # its topic
    example_reason: str = ""


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """Everything :func:`evaluate_health` looks at; all times in epoch milliseconds."""

    now_ms: int
    started_ms: int
    devices: Sequence[DeviceCheck] = ()
    oldest_undelivered_ms: int | None = None     # enqueue time of the oldest outbox row
    auth_ok: bool | None = None                  # None: no token asked for yet
    auth_error: str = ""
    outbox_bytes: int = 0
    outbox_max_bytes: int = 0                    # 0: no cap
    clock_synced: bool = True
    feeds: Sequence[FeedCheck] = ()
    components_restarting: Sequence[tuple[str, str]] = ()   # (name, last error): restarting or just restarted
    components_failed: Sequence[tuple[str, str]] = ()       # (name, last error): the supervisor gave up
    dead_letters_recent: int = 0                 # records moved to dead letters within recent_seconds
    dropped_recent: int = 0                      # readings dropped or refused by a full outbox, same window
    held: int = 0                                # readings held until the clock syncs
    schema_mismatch: str = ""                    # why Data Cloud refuses our records (delivery stopped)
    status_schema_mismatch: str = ""             # same for the gateway status object (only its lanes stop)


# Stable reason codes; the README (operations guide) explains each one to the technician.
DEVICE_SILENT = "device_silent"
DEVICE_UNREACHABLE = "device_unreachable"
DELIVERY_LAGGING = "delivery_lagging"
AUTH_FAILING = "auth_failing"
OUTBOX_NEARLY_FULL = "outbox_nearly_full"
CLOCK_UNSYNCED = "clock_unsynced"
BROKER_DISCONNECTED = "broker_disconnected"
FEED_NO_READINGS = "feed_no_readings"
DEAD_LETTERS_RECENT = "dead_letters_recent"
READINGS_DROPPED = "readings_dropped"
COMPONENT_RESTARTING = "component_restarting"
COMPONENT_FAILED = "component_failed"
SCHEMA_MISMATCH = "schema_mismatch"
FLEET_REPORTS_STOPPED = "fleet_reports_stopped"
REASON_CODES = (
    SCHEMA_MISMATCH, FLEET_REPORTS_STOPPED, DEVICE_SILENT, DEVICE_UNREACHABLE, DELIVERY_LAGGING, AUTH_FAILING,
    OUTBOX_NEARLY_FULL, CLOCK_UNSYNCED, BROKER_DISCONNECTED, FEED_NO_READINGS, DEAD_LETTERS_RECENT, READINGS_DROPPED,
    COMPONENT_RESTARTING, COMPONENT_FAILED,
)
# Reasons that need a technician before the agent can do its work again.
FAILED_CODES = frozenset({AUTH_FAILING, COMPONENT_FAILED, SCHEMA_MISMATCH})

_FEED_HINTS = {
    "unrecognised_topic": "the profile does not know these topics: check profile= and topics= of this feed",
    "malformed": "the payloads do not match the profile: see `solar-agent outbox rejected`",
    "decode_error": "the decoder fails on these payloads: see `solar-agent outbox rejected` and report it",
    "stale": "only old (retained) values arrive: is the device publishing, is its clock right?",
    "ignored": "only non-reading topics arrive (names, status): check topics= of this feed",
}


def _ago(now: int, ms: int | None) -> str:
    return "never" if ms is None else f"{(now - ms) / 1000:.0f}s ago"


def _device_reasons(inputs: HealthInputs, policy: HealthPolicy) -> list[str]:
    reasons: list[str] = []
    now = inputs.now_ms
    for dev in inputs.devices:
        if dev.state in ("backoff", "down") and dev.failures >= policy.unreachable_failures:
            reasons.append(f"{DEVICE_UNREACHABLE}: device={dev.name} state={dev.state} "
                           f"last_reading={_ago(now, dev.last_reading_ms)} error={dev.last_error or '-'}")
            continue
        if dev.expected_interval_seconds is None:
            # A push device sets its own pace: silent only after it spoke and then stopped for long.
            if dev.last_reading_ms is not None and now - dev.last_reading_ms > policy.push_silent_seconds * 1000:
                reasons.append(f"{DEVICE_SILENT}: device={dev.name} last_reading={_ago(now, dev.last_reading_ms)} "
                               f"limit={policy.push_silent_seconds:g}s")
            continue
        allowed_ms = policy.silent_polls * dev.expected_interval_seconds * 1000
        # Never read since the start: count from the start, so a fresh agent gets its grace period.
        since = dev.last_reading_ms if dev.last_reading_ms is not None else inputs.started_ms
        if now - since > allowed_ms:
            reasons.append(f"{DEVICE_SILENT}: device={dev.name} last_reading={_ago(now, dev.last_reading_ms)} "
                           f"expected_every={dev.expected_interval_seconds:g}s")
    return reasons


def _feed_reasons(inputs: HealthInputs, policy: HealthPolicy) -> list[str]:
    reasons: list[str] = []
    now = inputs.now_ms
    for feed in inputs.feeds:
        if not feed.connected and now - inputs.started_ms > policy.connect_grace_seconds * 1000:
            state = "lost" if feed.ever_connected else "never connected"
            reasons.append(f"{BROKER_DISCONNECTED}: feed={feed.name} {state} error={feed.last_connect_error or '-'}")
            continue
        window = policy.feed_no_reading_seconds * 1000
        # Messages that could be readings keep coming (one within the window) but none gave a reading for
        # the whole window. Only 'ignored' traffic (names, status: a DTU at night) is a quiet site, not this.
        receiving = feed.last_unusable_ms is not None and now - feed.last_unusable_ms <= window
        since = feed.last_reading_ms if feed.last_reading_ms is not None else inputs.started_ms
        if receiving and now - since > window:
            hint = _FEED_HINTS.get(feed.example_reason, "check the feed's profile and topics")
            reasons.append(f"{FEED_NO_READINGS}: feed={feed.name} last_reading={_ago(now, feed.last_reading_ms)} "
                           f"example_topic={feed.example_topic} why={feed.example_reason} hint={hint}")
    return reasons


def evaluate_health(inputs: HealthInputs, policy: HealthPolicy = HealthPolicy()) -> HealthReport:
    """The health verdict, one ``code: detail`` reason per problem, in a stable order."""
    now = inputs.now_ms
    reasons = [f"{COMPONENT_FAILED}: component={name} error={err or '-'}" for name, err in inputs.components_failed]
    reasons += [f"{COMPONENT_RESTARTING}: component={name} error={err or '-'}"
                for name, err in inputs.components_restarting]
    if inputs.schema_mismatch:
        reasons.append(f"{SCHEMA_MISMATCH}: {inputs.schema_mismatch} (delivery stopped, every row kept) "
                       "hint=upload the schema file shipped with this version to the Ingestion API connector, "
                       "then `solar-agent drain --now`")
    if inputs.status_schema_mismatch:
        # Readings flow; only the gateway's own status records wait: worth a look, not a failure.
        reasons.append(f"{FLEET_REPORTS_STOPPED}: {inputs.status_schema_mismatch} (the status records wait in the "
                       "outbox; readings are delivered) hint=upload the schema file shipped with this version "
                       "and create the data stream of solar_gateway_status")
    reasons += _device_reasons(inputs, policy)
    reasons += _feed_reasons(inputs, policy)
    if inputs.oldest_undelivered_ms is not None:
        age = (now - inputs.oldest_undelivered_ms) / 1000
        if age > policy.max_undelivered_seconds:
            reasons.append(f"{DELIVERY_LAGGING}: oldest_undelivered={age:.0f}s "
                           f"limit={policy.max_undelivered_seconds:g}s")
    if inputs.auth_ok is False:
        detail = f" error={inputs.auth_error}" if inputs.auth_error else ""
        reasons.append(f"{AUTH_FAILING}:{detail or ' token request refused'}")
    if inputs.dead_letters_recent >= policy.dead_letters_recent > 0:
        reasons.append(f"{DEAD_LETTERS_RECENT}: count={inputs.dead_letters_recent} "
                       f"within={policy.recent_seconds:g}s hint=solar-agent outbox dead-letters")
    if inputs.dropped_recent > 0:
        reasons.append(f"{READINGS_DROPPED}: count={inputs.dropped_recent} within={policy.recent_seconds:g}s "
                       "hint=the outbox is full (cap or free-space floor): restore the link, free disk space "
                       "or raise outbox.max_bytes")
    if inputs.outbox_max_bytes > 0:
        ratio = inputs.outbox_bytes / inputs.outbox_max_bytes
        if ratio > policy.outbox_full_ratio:
            reasons.append(f"{OUTBOX_NEARLY_FULL}: used={ratio:.0%} bytes={inputs.outbox_bytes} "
                           f"max_bytes={inputs.outbox_max_bytes}")
    if not inputs.clock_synced:
        reasons.append(f"{CLOCK_UNSYNCED}: readings are held with provisional times held={inputs.held}")
    return HealthReport(not reasons, reasons)


# -- the provider contract ----------------------------------------------------------------------------


@runtime_checkable
class StatusProvider(Protocol):
    """What the status server asks the agent. Called on the event loop, one request at a time each.

    ``status`` returns a JSON-able dict: per device the last reading, errors and state; per lane
    the last success, backlog and retry state; outbox stats; dead letters; versions; the clock.
    ``health`` and ``metrics_text`` must be quick and never block (no I/O): they read state the
    agent keeps up to date. Exceptions they raise become a 500 for that request only.
    """

    async def status(self) -> dict[str, Any]: ...

    def health(self) -> HealthReport: ...

    def metrics_text(self) -> str: ...


@runtime_checkable
class SupportsControl(Protocol):
    """Optional capability: operator actions, served on the unix socket only.

    ``flush_now`` ends the drain's waits and backoffs (a bulk job too when ``bulk``), waits at most
    ``wait_seconds`` for that attempt to finish, and returns a JSON-able summary of what happened
    (rows before/after, rows sent per lane, the lane's last error). ``requeue_dead_letters`` puts
    the given dead letters (all when None) back in the queue and returns how many moved. Both run
    on the event loop; errors they raise (``AgentError``) become a 409 with the message and hint.
    """

    async def flush_now(self, *, bulk: bool = False, wait_seconds: float = 10.0) -> dict[str, Any]: ...

    async def requeue_dead_letters(self, event_ids: Sequence[str] | None) -> int: ...


# -- the server ---------------------------------------------------------------------------------------

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guard_middleware(on_error: Callable[[str], None] | None) -> Callable[[web.Request, _Handler],
                                                                         Awaitable[web.StreamResponse]]:
    """Each request in its own guard: an exception answers that request with a 500 and nothing else.

    One log line per minute at most (the traceback only at debug level), counted per reason.
    """
    last_logged = [0.0]

    @web.middleware
    async def guard(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise                      # aiohttp's own answers (404, 405): not a failure
        except Exception as exc:
            reason = type(exc).__name__
            if on_error is not None:
                on_error(reason)
            now = asyncio.get_running_loop().time()
            if now - last_logged[0] >= 60.0:
                last_logged[0] = now
                log.error("status: request %s %s failed: %s: %.300s hint=%s", request.method, request.path,
                          reason, exc, "the agent keeps running; run with -v for the traceback")
            log.debug("status request traceback", exc_info=exc)
            return web.json_response({"error": f"{reason}: {exc}"[:300]}, status=500)

    return guard


def _routes(provider: StatusProvider) -> list[web.RouteDef]:
    async def health(_: web.Request) -> web.Response:
        report = provider.health()
        return web.json_response(report.to_json(), status=200 if report.ok else 503)

    async def status(_: web.Request) -> web.Response:
        body = await provider.status()
        body.setdefault("health", provider.health().to_json())
        return web.json_response(body, dumps=_dumps)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=provider.metrics_text().encode(), headers={"Content-Type": CONTENT_TYPE})

    return [web.get("/health", health), web.get("/status", status), web.get("/metrics", metrics)]


def _control_routes(control: SupportsControl) -> list[web.RouteDef]:
    async def drain(request: web.Request) -> web.Response:
        bulk = request.query.get("bulk", "0")
        if bulk not in ("0", "1"):
            return web.json_response({"error": "bulk must be 0 or 1"}, status=400)
        try:
            result = await control.flush_now(bulk=bulk == "1")
        except AgentError as exc:
            return web.json_response({"error": exc.message, "hint": exc.hint}, status=409)
        return web.json_response(result, dumps=_dumps)

    async def requeue(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, RecursionError):      # not JSON, not UTF-8, a huge number, nested too deep
            body = None
        ids = body.get("ids") if isinstance(body, dict) else None
        every = isinstance(body, dict) and body.get("all") is True
        valid_ids: list[str] | None = None
        if isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids):
            valid_ids = list(ids)
        if every == (valid_ids is not None):
            return web.json_response({"error": 'send {"all": true} or {"ids": ["<event id>", ...]}'},
                                     status=400)
        try:
            moved = await control.requeue_dead_letters(None if every else valid_ids)
        except AgentError as exc:
            return web.json_response({"error": exc.message, "hint": exc.hint}, status=409)
        return web.json_response({"requeued": moved})

    return [web.post("/control/drain", drain), web.post("/control/requeue", requeue)]


def _dumps(obj: Any) -> str:
    # Paths and other plain objects in the status become strings rather than a 500.
    return json.dumps(obj, default=str)


def _bearer_middleware(token: bytes) -> Callable[[web.Request, _Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def check(request: web.Request, handler: _Handler) -> web.StreamResponse:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        # compare_digest keeps the comparison time independent of where the bytes differ.
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token):
            return web.json_response({"error": "unauthorized"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="solar-agent"'})
        return await handler(request)

    return check


def _parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(_CONFIG, "status.listen", "expected host:port", value=listen,
                          hint='e.g. listen = "127.0.0.1:9108"')
    return host, int(port)


def _read_token(token_file: Path | None) -> bytes:
    if token_file is None:
        raise ConfigError(_CONFIG, "status.token_file", "a TCP status listener needs a bearer token file",
                          hint="make one (head -c 32 /dev/urandom | base64 > /etc/solar-agent/status.token,"
                               " chmod 600), or drop status.listen to use the unix socket only")
    try:
        mode = token_file.stat().st_mode
        token = token_file.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(_CONFIG, "status.token_file", f"cannot read the token file: {exc.strerror}",
                          value=str(token_file),
                          hint="check the path and that the agent can read it") from exc
    if len(token) < 16:
        raise ConfigError(_CONFIG, "status.token_file", "the token must be at least 16 characters",
                          value=str(token_file), hint="head -c 32 /dev/urandom | base64 > the file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("status token file is readable by others path=%s hint=%s", token_file,
                    f"chmod 600 {token_file}")
    return token


def _prepare_socket(path: Path) -> None:
    """Create the parent directory and remove a stale socket; refuse if another agent answers there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (path.exists() or path.is_symlink()):
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise ConfigError(_CONFIG, "status.socket_path", "exists and is not a socket", value=str(path),
                          hint="point socket_path at a free path, e.g. /run/solar-agent/status.sock")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left behind by a crash: nobody listens
        return
    finally:
        probe.close()
    raise ConfigError(_CONFIG, "status.socket_path", "another process is serving this socket",
                      value=str(path),
                      hint="is a second solar-agent running? systemctl status solar-agent")


class StatusServer:
    """Serves the provider on a unix socket and/or TCP; an async context manager.

    Args:
        provider: answers health, status and metrics.
        socket_path: the unix socket (None: no unix listener).
        listen: ``host:port`` for TCP, empty for none; port 0 picks a free port (see ``tcp_port``).
        token_file: the bearer token TCP clients must send; required when ``listen`` is set.
        on_error: called with the exception's class name when a request fails (a metrics counter).

    Raises ``ConfigError`` on entry when the TCP listener has no usable token, the address is
    malformed or taken, or the socket path is in use.
    """

    def __init__(
        self,
        provider: StatusProvider,
        *,
        socket_path: Path | None,
        listen: str = "",
        token_file: Path | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        if socket_path is None and not listen:
            raise ConfigError(_CONFIG, "status", "neither socket_path nor listen is set",
                              hint="keep the default socket_path = /run/solar-agent/status.sock")
        self._provider = provider
        self._socket_path = socket_path
        self._listen = listen
        self._token_file = token_file
        self._runners: list[web.AppRunner] = []
        self._bound_socket: Path | None = None
        self.tcp_port: int | None = None
        self._on_error = on_error

    async def __aenter__(self) -> StatusServer:
        try:
            await self._start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()

    async def _start(self) -> None:
        routes = _routes(self._provider)
        tcp: tuple[str, int, bytes] | None = None
        if self._listen:
            # Validate everything before the first listener opens, so nothing half-starts.
            host, port = _parse_listen(self._listen)
            tcp = (host, port, await asyncio.to_thread(_read_token, self._token_file))
        if self._socket_path is not None:
            path = self._socket_path
            await asyncio.to_thread(_prepare_socket, path)
            unix_routes = list(routes)
            if isinstance(self._provider, SupportsControl):
                # Unix socket only: its file mode is the access control for changing the queue.
                unix_routes += _control_routes(self._provider)
            runner = await self._runner(unix_routes, [_guard_middleware(self._on_error)])
            await web.UnixSite(runner, str(path)).start()
            self._bound_socket = path
            await asyncio.to_thread(os.chmod, path, SOCKET_MODE)
            log.info("status listening socket=%s", path)
        if tcp is not None:
            host, port, token = tcp
            runner = await self._runner(routes, [_bearer_middleware(token), _guard_middleware(self._on_error)])
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(_CONFIG, "status.listen", f"cannot listen: {exc.strerror}",
                                  value=self._listen,
                                  hint="pick a free port on a local address") from exc
            self.tcp_port = int(runner.addresses[0][1])
            log.info("status listening tcp=%s:%d auth=bearer", host, self.tcp_port)

    async def watch(self, interval_seconds: float = 5.0) -> None:
        """Keep serving: the supervised part of the server (component ``status``).

        Starts the listeners if they are not running (after a failure), then checks every
        ``interval_seconds`` that the unix socket is still ours: a socket file removed under us (a
        cleanup of /run, a technician's rm) leaves an agent nobody can ask. Then it stops the
        listeners and raises, so the supervisor restarts it, which binds a new socket.
        """
        if not self._runners:
            try:
                await self._start()
            except BaseException:
                await self._stop()
                raise
        while True:
            await asyncio.sleep(interval_seconds)
            path = self._bound_socket
            if path is not None and not await asyncio.to_thread(_is_socket, path):
                await self._stop()
                raise AgentError(f"the status socket {path} disappeared", hint="it is bound again at once")

    async def _runner(self, routes: list[web.RouteDef], middlewares: list[Any]) -> web.AppRunner:
        app = web.Application(middlewares=middlewares)
        app.add_routes(routes)
        # No access log: a Prometheus scrape every 15 s would flood the journal.
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        return runner

    async def _stop(self) -> None:
        while self._runners:
            await self._runners.pop().cleanup()
        if self._bound_socket is not None:
            # Only our own socket: a refused start must not unlink another agent's.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(_unlink_socket, self._bound_socket)
            self._bound_socket = None


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def _unlink_socket(path: Path) -> None:
    if path.is_socket():
        path.unlink()


# -- the CLI's client -----------------------------------------------------------------------------------


async def fetch_status(socket_path: Path, *, timeout_seconds: float = 5.0) -> dict[str, Any] | None:
    """The agent's ``/status`` over its unix socket; None when the agent is not running.

    Raises ``AgentError`` (with a hint) when the socket exists but cannot be used: no permission,
    or the agent answered with an error.
    """
    return await _request(socket_path, "GET", "/status", None, timeout_seconds)


async def post_control(socket_path: Path, path: str, body: dict[str, Any] | None = None, *,
                       timeout_seconds: float = 30.0) -> dict[str, Any] | None:
    """POST an operator action (``/control/...``) over the unix socket; None when the agent is not running.

    Raises ``AgentError`` like :func:`fetch_status`, with the agent's own message and hint when it
    refused the action.
    """
    return await _request(socket_path, "POST", path, body, timeout_seconds)


async def _request(socket_path: Path, method: str, path: str, body: dict[str, Any] | None,
                   timeout_seconds: float) -> dict[str, Any] | None:
    connector = aiohttp.UnixConnector(path=str(socket_path))
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, f"http://solar-agent{path}", json=body) as response,
        ):
            if response.status != 200:
                detail: dict[str, Any] = {}
                with contextlib.suppress(aiohttp.ContentTypeError, json.JSONDecodeError):
                    detail = await response.json()
                message = detail.get("error") if isinstance(detail, dict) else None
                raise AgentError(
                    f"the agent answered {path} with HTTP {response.status}" + (f": {message}" if message else ""),
                    hint=(detail.get("hint") if isinstance(detail, dict) else None)
                    or "journalctl -u solar-agent -n 50")
            answer: dict[str, Any] = await response.json()
            return answer
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, PermissionError):
            # Root is refused only by something else (another mount namespace, a security module).
            hint = ("run it with sudo (the socket belongs to the service)" if os.geteuid() != 0 else
                    f"even root may not open it: check ls -l {socket_path} and the security modules (dmesg)")
            raise AgentError(f"no permission to open {socket_path}", hint=hint) from exc
        return None  # absent or refused: not running
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        raise AgentError(f"the agent did not answer {path} on {socket_path}: {exc!r}",
                         hint="systemctl status solar-agent; journalctl -u solar-agent -n 50") from exc
