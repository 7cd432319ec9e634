"""Streaming ingestion: JSON micro-batches to ``/api/v1/ingest/sources/{source}/{object}``.

``send`` posts exactly one body and classifies the answer; ``deliver`` sends a batch of any size
(split under the body limit) and isolates bad records by bisection so one poison record never
blocks the rest. Throttling, transient and auth errors propagate: the drain decides when to try
again (every record carries its primary key, so resending is an idempotent upsert).
"""

from __future__ import annotations

import asyncio
import logging
import operator
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from agent.datacloud._http import Answer, describe, fetch, raise_for_status
from agent.datacloud.auth import TokenProvider
from agent.errors import AuthError, DataCloudError, RejectedError, ThrottledError
from agent.records import STREAMING_OVERHEAD, streaming_body

log = logging.getLogger(__name__)

MAX_DELETE_IDS: Final = 200
_JSON = {"Content-Type": "application/json"}
# Of an (event id, payload) row; map() with these beats a comprehension, per delivered body.
_EVENT_ID: Final = operator.itemgetter(0)
_PAYLOAD: Final = operator.itemgetter(1)


def split(payloads: Sequence[bytes], max_body_bytes: int) -> list[list[int]]:
    """Indices of ``payloads`` per body so each ``{"data":[a,b,...]}`` stays within ``max_body_bytes``.

    Exact: the envelope plus one comma between records. A record too big on its own gets a body of
    its own (the server will refuse it and ``deliver`` reports it as rejected).
    """
    bodies: list[list[int]] = []
    current: list[int] = []
    size = STREAMING_OVERHEAD
    for i, p in enumerate(payloads):
        extra = len(p) + (1 if current else 0)
        if current and size + extra > max_body_bytes:
            bodies.append(current)
            current, size, extra = [], STREAMING_OVERHEAD, len(p)
        current.append(i)
        size += extra
    if current:
        bodies.append(current)
    return bodies


@dataclass(slots=True)
class _Progress:
    """What one ``deliver`` has settled so far."""

    pace: Callable[[], Awaitable[None]] | None = None
    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    sends: int = 0


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """Outcome of ``deliver``: ids Data Cloud accepted (202) and ids it refused, with its reason."""

    accepted_ids: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    requests: int = 0           # bodies it took, bisection included
    # Set when a request failed after others had been answered (a 429 midway through a bisection):
    # the ids above are settled, the other rows were not delivered and go back to the queue.
    error: DataCloudError | None = None


class Backoff:
    """Capped exponential backoff with full jitter: delay n is uniform in [0, min(cap, base * 2**n)]."""

    def __init__(self, base_seconds: float = 1.0, cap_seconds: float = 300.0, *,
                 rng: random.Random | None = None, seed: int | None = None) -> None:
        self.base = base_seconds
        self.cap = cap_seconds
        self._rng = rng or random.Random(seed)
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 62)))
        self.attempt += 1
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self.attempt = 0


class Pacer:
    """AIMD request pacing: each request waits for its slot at the current rate.

    ``on_success`` adds ``increase_rps`` (up to ``max_rps``); ``on_throttle`` halves the rate (down to
    ``min_rps``) and, when the server sent Retry-After, holds every request until then. Slots are
    reserved in call order, so concurrent callers are spaced too.
    """

    def __init__(self, rate_rps: float, *, min_rps: float = 0.05, max_rps: float | None = None,
                 increase_rps: float = 0.1, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if rate_rps <= 0:
            raise ValueError("rate_rps must be positive")
        self.max_rps = max_rps if max_rps is not None else rate_rps
        self.min_rps = min(min_rps, self.max_rps)
        self.rate = min(rate_rps, self.max_rps)
        self.increase = increase_rps
        self._clock = clock
        self._sleep = sleep
        self._next = clock()

    def reserve(self) -> float:
        """Take the next slot; seconds to wait before using it."""
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + 1.0 / self.rate
        return slot - now

    async def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)

    def on_success(self) -> None:
        self.rate = min(self.max_rps, self.rate + self.increase)

    def on_throttle(self, retry_after: float | None = None) -> None:
        self.rate = max(self.min_rps, self.rate / 2)
        now = self._clock()
        hold = now + retry_after if retry_after else now + 1.0 / self.rate
        self._next = max(self._next, hold)


class StreamingClient:
    """Streaming insert/validate/delete for one Ingestion API object.

    Contract: ``send`` returns only on Data Cloud's acceptance and raises ``RejectedError`` (a 400
    in Data Cloud's error envelope; status 413 means split the body), ``ThrottledError``,
    ``RetryableError``, ``AuthError`` or ``DataCloudError`` (404, and every answer that is neither
    acceptance nor a refusal of the records: a proxy page, a 2xx without ``accepted``). No other
    exception leaves it. A 401 invalidates the token and retries once.
    Safe for concurrent use; the session and token provider are the caller's.
    """

    def __init__(self, tokens: TokenProvider, session: aiohttp.ClientSession, source_name: str,
                 object_endpoint: str, *, max_body_bytes: int = 190_000, pacer: Pacer | None = None) -> None:
        self._tokens = tokens
        self._session = session
        # The connector's object endpoint names the object in the URL (datacloud.object_endpoint,
        # which defaults to the schema's object name).
        self._path = f"/api/v1/ingest/sources/{quote(source_name, safe='')}/{quote(object_endpoint, safe='')}"
        self.max_body_bytes = max_body_bytes
        self.pacer = pacer
        self.requests = 0

    async def send(self, payloads: Sequence[bytes]) -> None:
        """POST one ``{"data":[...]}`` body; returns on 202."""
        await self._post(streaming_body(payloads))

    async def _post(self, body: bytes) -> None:
        _check_accepted("streaming insert", await self._call("POST", self._path, body, "streaming insert"))

    async def validate(self, payloads: Sequence[bytes]) -> list[dict[str, Any]]:
        """Synchronous dry run (``/actions/test``): [] when valid, else the server's validation report."""
        try:
            answer = await self._call("POST", self._path + "/actions/test", streaming_body(payloads), "validate")
        except RejectedError as exc:
            return exc.report or [{"message": exc.message}]
        # Success is "a status code in the 200s" with an undocumented body ([VAL], [STW]); a page that
        # is not JSON came from something else (a captive portal), and proves nothing about the records.
        if answer.body and answer.json() is None:
            raise DataCloudError(f"validate: HTTP {answer.status} answered {describe(answer)}",
                                 status=answer.status,
                                 hint="something other than Data Cloud answered (a proxy or captive portal?)")
        return []

    async def delete(self, ids: Sequence[str]) -> None:
        """Delete records by primary key, at most 200 per request."""
        for start in range(0, len(ids), MAX_DELETE_IDS):
            chunk = ids[start:start + MAX_DELETE_IDS]
            _check_accepted("delete", await self._call(
                "DELETE", f"{self._path}?ids={quote(','.join(chunk), safe=',')}", None, "delete"))

    async def deliver(self, rows: Sequence[tuple[str, bytes]], *,
                      pace: Callable[[], Awaitable[None]] | None = None) -> DeliveryResult:
        """Send ``(event_id, payload)`` rows; bisect refused bodies down to the bad records.

        The first request is the caller's to pace (the drain waits before it leases); each one
        after it, another body or a bisection's half, awaits ``pace()`` first: they count against
        the org's requests like any other. A failure before any answer raises; one after (a 429
        midway through a bisection) returns what was settled so far with ``error`` set, so the
        accepted halves and the isolated bad records are not sent and bisected all over again.
        """
        done = _Progress(pace=pace)
        payloads = list(map(_PAYLOAD, rows))
        try:
            body = streaming_body(payloads)
            if len(body) <= self.max_body_bytes:
                # One body (a lease is cut to a body's bytes): no per-record split (measured: a quarter
                # of the client's CPU per record against a null sink, bench/drain.py), built once.
                await self._deliver_part(rows, done, body)
            else:
                for indices in split(payloads, self.max_body_bytes):
                    await self._deliver_part([rows[i] for i in indices], done)
        except DataCloudError as exc:
            if not done.accepted and not done.rejected:
                raise
            return DeliveryResult(done.accepted, done.rejected, done.sends, error=exc)
        return DeliveryResult(done.accepted, done.rejected, done.sends)

    async def _deliver_part(self, rows: Sequence[tuple[str, bytes]], done: _Progress,
                            body: bytes | None = None) -> None:
        """Send ``rows`` as one body (``body`` if already built), bisecting on refusal."""
        if done.sends and done.pace is not None:
            await done.pace()
        done.sends += 1
        try:
            await self._post(body if body is not None else streaming_body(list(map(_PAYLOAD, rows))))
        except RejectedError as exc:
            if len(rows) == 1:
                reason = _reason(exc)
                log.warning("record rejected event_id=%s reason=%s", rows[0][0], reason)
                done.rejected[rows[0][0]] = reason
                return
            # The halves go separately: only the half holding a bad record is refused again.
            mid = len(rows) // 2
            await self._deliver_part(rows[:mid], done)
            await self._deliver_part(rows[mid:], done)
            return
        done.accepted.extend(map(_EVENT_ID, rows))

    async def _call(self, method: str, path: str, body: bytes | None, what: str) -> Answer:
        for attempt in (1, 2):
            token = await self._tokens.token()
            if self.pacer is not None:
                await self.pacer.wait()
            headers = {**token.header, **_JSON} if body is not None else token.header
            self.requests += 1
            answer = await fetch(self._session, method, token.instance_url + path, what=what,
                                 timeout=self._tokens.timeout, ssl=self._tokens.ssl_context, data=body,
                                 headers=headers)
            if answer.status == 401 and attempt == 1:
                log.info("data cloud answered 401; fetching a new token once what=%s", what)
                self._tokens.invalidate(token)
                continue
            try:
                raise_for_status(what, answer)
            except ThrottledError as exc:
                if self.pacer is not None:
                    self.pacer.on_throttle(exc.retry_after)
                raise
            if self.pacer is not None:
                self.pacer.on_success()
            return answer
        raise AuthError(f"{what}: unreachable")  # pragma: no cover - the loop returns or raises


def _check_accepted(what: str, answer: Answer) -> None:
    """Insert and delete answer 202 ``{"accepted": true}`` ([INS], [DEL]); anything else is not acceptance.

    A 2xx page from a proxy or captive portal must not count as delivery: the rows would be acked
    and never land. ``{"accepted": false}`` (undocumented) is not acceptance either.
    """
    doc = answer.json()
    flag = doc.get("accepted") if isinstance(doc, dict) else None
    if flag is True or (answer.status == 202 and flag is None):
        return
    raise DataCloudError(f"{what}: HTTP {answer.status} answered {describe(answer)}, not 202 Accepted",
                         status=answer.status,
                         hint="something other than Data Cloud answered (a proxy or captive portal?); "
                              "the rows stay queued and are sent again")


def _reason(exc: RejectedError) -> str:
    """A short reason for the dead-letter table: the report's messages, else the server's message."""
    if exc.status == 413:
        return f"record larger than the streaming body limit: {exc.message}"
    parts: list[str] = []
    for entry in exc.report:
        for key in ("causingExceptions", "message", "reason", "error"):
            value = entry.get(key)
            if isinstance(value, list):
                parts.extend(str(v.get("message", v)) if isinstance(v, dict) else str(v) for v in value)
            elif value:
                parts.append(str(value))
    return "; ".join(parts)[:1000] if parts else exc.message
