"""The emulator: an aiohttp server that speaks the Data Cloud Ingestion API wire contract.

One server answers the login host (``/services/oauth2/token``), the core instance
(``/services/a360/token``) and the Data Cloud tenant (``/api/v1/ingest/...``), plus an admin
API under ``/__emulator/`` (faults, stats, records) that faults and limits never touch.
Every request runs through one middleware: outage, latency, reset, rate limit, injected status,
bearer check, handler, lost response; in that order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

from aiohttp import web

from agent.emulator import answers
from agent.emulator._http import ApiError, error_response
from agent.emulator.auth import HTML_REDIRECT_PAGE, OAuthError, TokenAuthority, load_verifying_key
from agent.emulator.bulk import Job, JobBook
from agent.emulator.bulkcsv import CsvFileError, DeleteConverter, UpsertConverter
from agent.emulator.dropped import DroppedLog
from agent.emulator.schema import (
    ObjectSchema,
    default_schema_path,
    load_schema,
    parse_json_strict,
    validate_record,
)
from agent.emulator.settings import ANSWERS_AFTER, ANSWERS_BEFORE, DEFAULT_LOGIN_AUDIENCES, EmulatorSettings, Faults
from agent.emulator.store import LandedStore, StagedJob
from agent.emulator.tls import ensure_certificates, server_context

log = logging.getLogger(__name__)
access_log = logging.getLogger("agent.emulator.access")

T = TypeVar("T")
INGEST_ENDPOINTS: Final = frozenset({
    "stream_insert", "stream_test", "stream_delete",
    "job_create", "job_list", "job_get", "job_patch", "job_delete", "job_upload",
})
_CHUNK: Final = 1 << 16
# Upload bytes handed to the converter thread at a time: big enough that per-block work is
# noise, small enough that conversion keeps pace with the socket.
_STAGE_BLOCK: Final = 1 << 20


@dataclass
class EmulatorStats:
    """Request counters. ``requests[endpoint][status]``; status 0 = connection dropped, no answer."""

    requests: dict[str, dict[int, int]] = field(default_factory=dict)
    rate_limited: int = 0  # 429s from the rate limiter (not injected ones)
    injected: int = 0  # injected error statuses
    resets: int = 0  # connections closed without an answer (reset_rate, outage)
    lost_responses: int = 0  # accepted, then the connection was dropped
    peak_rps: int = 0  # most non-admin requests seen within one wall-clock second
    _second: int = 0
    _in_second: int = 0

    def record(self, endpoint: str, status: int) -> None:
        by_status = self.requests.setdefault(endpoint, {})
        by_status[status] = by_status.get(status, 0) + 1

    def tick(self) -> None:
        sec = int(time.time())
        if sec != self._second:
            self._second, self._in_second = sec, 0
        self._in_second += 1
        self.peak_rps = max(self.peak_rps, self._in_second)

    def count(self, endpoint: str | None = None, status: int | None = None) -> int:
        """Requests answered, optionally only for one endpoint and/or one status."""
        return sum(
            n for ep, by in self.requests.items() if endpoint in (None, ep)
            for st, n in by.items() if status in (None, st)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": {ep: {str(st): n for st, n in by.items()} for ep, by in self.requests.items()},
            "total": self.count(),
            "rate_limited": self.rate_limited,
            "injected": self.injected,
            "resets": self.resets,
            "lost_responses": self.lost_responses,
            "peak_rps": self.peak_rps,
        }


class _TokenBucket:
    """Requests per second with a burst of one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def take(self) -> float:
        """0 when allowed, else the seconds until a token is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class _Dropped(Exception):
    """Raised to end a request whose connection the emulator has deliberately closed."""


class Emulator:
    """A local Data Cloud on a real socket. ``async with Emulator(settings) as emu: emu.url``."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self._objects: dict[str, ObjectSchema] = load_schema(
            settings.schema_path or default_schema_path(), settings.primary_key)
        if settings.object_name not in self._objects:
            raise ValueError(f"object {settings.object_name!r} is not in the schema file")
        self._endpoints = _endpoint_map(self._objects, settings.object_endpoints)
        key = load_verifying_key(settings.public_key_pem) if settings.public_key_pem else None
        audiences = tuple(a.rstrip("/") for a in (settings.audiences or DEFAULT_LOGIN_AUDIENCES))
        self._auth = TokenAuthority(key, settings.client_id, settings.username, audiences,
                                    settings.token_lifetime_seconds)
        self._faults = Faults()
        self._rng = random.Random()
        self._bucket = _TokenBucket(settings.rate_limit_rps)
        self._jobs = JobBook(settings.max_concurrent_jobs, settings.max_jobs_per_hour, settings.max_files_per_job)
        self._uploading: set[str] = set()
        self._staged: dict[str, StagedJob] = {}  # job id -> its converted rows, upload order
        self._workdir = Path(tempfile.mkdtemp(prefix="solar-emulator-"))
        self.store = LandedStore(settings.db_path or self._workdir / "landed.sqlite", settings.object_name)
        # One store thread keeps writes in arrival order (a later upsert of a key wins).
        self._store_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emulator-store")
        self._tasks: set[asyncio.Task[None]] = set()
        self._landed = asyncio.Condition()
        self.stats = EmulatorStats()
        self.dropped = DroppedLog()  # fire-and-forget: accepted, then dropped as invalid when processed
        self._release_hung = asyncio.Event()
        self.url = ""
        self.ca_file: Path | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Emulator:
        s = self.settings
        ssl_ctx = None
        if s.tls_dir is not None:
            ca, cert, key = await asyncio.to_thread(ensure_certificates, s.tls_dir)
            ssl_ctx = server_context(cert, key)
            self.ca_file = ca
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.host, s.port))
        sock.listen(128)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        scheme = "https" if ssl_ctx else "http"
        self.url = f"{scheme}://{s.host}:{port}"
        app = web.Application(middlewares=[self._middleware])
        self._add_routes(app)
        # A test peer: handlers sleeping in injected latency must not hold up its teardown for 60 s.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=ssl_ctx).start()
        log.info("emulator listening url=%s source=%s object=%s", self.url, s.source_name, s.object_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release_hung.set()  # requests told to hang end now, so the server can stop
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self._store_exec.shutdown(wait=True)
        for staged in self._staged.values():
            await asyncio.to_thread(staged.close)
        self.store.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    # --- public test API ---------------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the active faults. ``expire_tokens`` acts once, at this call."""
        if faults.seed is not None:
            self._rng.seed(faults.seed)
        if faults.expire_tokens:
            self._auth.expire_all()
            faults = replace(faults, expire_tokens=False)
        self._faults = faults

    async def wait_landed(self, n: int, timeout: float, obj: str | None = None) -> None:
        """Wait until at least ``n`` distinct keys have landed in ``obj`` (default: the main object);
        TimeoutError after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout), self._landed:
                await self._landed.wait_for(lambda: self.store.count(obj) >= n)
        except TimeoutError:
            raise TimeoutError(f"{self.store.count(obj)} of {n} records landed within {timeout}s") from None

    async def wait_dropped(self, n: int, timeout: float) -> None:
        """Wait until at least ``n`` records were dropped at processing; TimeoutError after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout), self._landed:
                await self._landed.wait_for(lambda: self.dropped.total >= n)
        except TimeoutError:
            raise TimeoutError(f"{self.dropped.total} of {n} records dropped within {timeout}s") from None

    def staged_rows(self, job_id: str) -> int:
        """Rows of a job validated and staged so far (a file still uploading included); 0 once landed."""
        staged = self._staged.get(job_id)
        return staged.staged_rows if staged is not None else 0

    def job_state(self, job_id: str) -> str | None:
        job = self._jobs.jobs.get(job_id)
        return job.state if job else None

    # --- plumbing ------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("emulator task failed task=%s", task.get_name(), exc_info=task.exception())

    async def _in_store(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._store_exec, fn)

    async def _notify_landed(self) -> None:
        async with self._landed:
            self._landed.notify_all()

    async def _land(self, op: Callable[[], None], what: str) -> None:
        """Apply a store write now, or after the processing delay (async ingestion)."""
        delay = self.settings.processing_delay_seconds
        if delay <= 0:
            await self._in_store(op)
            await self._notify_landed()
            return

        async def later() -> None:
            await asyncio.sleep(delay)  # emulates Data Cloud's processing cadence
            await self._in_store(op)
            await self._notify_landed()

        self._spawn(later(), name=f"emulator.land[{what}]")

    def _drop(self, request: web.Request) -> None:
        if request.transport is not None:
            request.transport.abort()
        raise _Dropped

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route
        endpoint = route.name or "unknown"
        if endpoint.startswith("admin_"):
            return await handler(request)
        started = time.monotonic()
        faults = self._faults
        self.stats.tick()
        ingest = endpoint in INGEST_ENDPOINTS
        odd = faults.answers.get(endpoint)
        status = 0
        try:
            if faults.outage:
                self.stats.resets += 1
                self._drop(request)
            if faults.latency_seconds > 0:
                await asyncio.sleep(faults.latency_seconds)  # injected latency, by design
            if odd in ANSWERS_BEFORE:
                try:
                    response = await answers.before(odd, request, faults, self._release_hung)
                except ConnectionAbortedError:
                    self._drop(request)
                status = response.status
                return response
            try:
                if ingest:
                    self._pre_ingest(request, faults)
                response = await handler(request)
            except ApiError as err:
                response = error_response(err, request.path, self.settings.tenant_id)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise
                response = error_response(ApiError(exc.status, exc.reason), request.path, self.settings.tenant_id)
            if odd in ANSWERS_AFTER:
                response = await answers.after(odd, response, request, faults)
            if ingest and response.status < 300 and self._roll(faults.lose_response_rate):
                self.stats.lost_responses += 1
                self._drop(request)
            status = response.status
            return response
        except _Dropped:
            # The transport is gone; aiohttp must not try to answer. Cancelling the handler is the
            # one exit aiohttp treats as a silent, expected end of a request.
            raise asyncio.CancelledError from None
        finally:
            self.stats.record(endpoint, status)
            access_log.info(
                "%s %s status=%s endpoint=%s ms=%.1f", request.method, request.path_qs,
                status or "dropped", endpoint, (time.monotonic() - started) * 1000)

    def _pre_ingest(self, request: web.Request, faults: Faults) -> None:
        if self._roll(faults.reset_rate):
            self.stats.resets += 1
            self._drop(request)
        wait = self._bucket.take()
        if wait > 0:
            self.stats.rate_limited += 1
            raise ApiError(429, "request rate limit exceeded", retry_after=wait, code="LIMIT_EXCEEDED",
                           retry_after_header=faults.retry_after_header)
        if faults.status_rates:
            pick, acc = self._rng.random(), 0.0
            for st, rate in sorted(faults.status_rates.items()):
                acc += rate
                if pick < acc:
                    self.stats.injected += 1
                    retry = faults.retry_after_seconds if st == 429 else None
                    header = faults.retry_after_header if st == 429 else None
                    raise ApiError(st, "injected fault", retry_after=retry, retry_after_header=header)
        if not self._auth.check_bearer(request.headers.get("Authorization")):
            raise ApiError(401, "JWT is invalid or expired", code="INVALID_TOKEN")

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/services/oauth2/token", self._oauth_token, name="oauth_token")
        r.add_post("/services/a360/token", self._a360_token, name="a360_token")
        src = "/api/v1/ingest/sources/{source}/{object}"
        r.add_post(src, self._stream_insert, name="stream_insert")
        r.add_post(src + "/actions/test", self._stream_test, name="stream_test")
        r.add_delete(src, self._stream_delete, name="stream_delete")
        r.add_post("/api/v1/ingest/jobs", self._job_create, name="job_create")
        r.add_get("/api/v1/ingest/jobs", self._job_list, name="job_list")
        r.add_get("/api/v1/ingest/jobs/{id}", self._job_get, name="job_get")
        r.add_patch("/api/v1/ingest/jobs/{id}", self._job_patch, name="job_patch")
        r.add_delete("/api/v1/ingest/jobs/{id}", self._job_delete, name="job_delete")
        r.add_put("/api/v1/ingest/jobs/{id}/batches", self._job_upload, name="job_upload")
        r.add_post("/__emulator/faults", self._admin_set_faults, name="admin_set_faults")
        r.add_get("/__emulator/faults", self._admin_get_faults, name="admin_get_faults")
        r.add_get("/__emulator/stats", self._admin_stats, name="admin_stats")
        r.add_get("/__emulator/records", self._admin_records, name="admin_records")
        r.add_get("/__emulator/objects", self._admin_objects, name="admin_objects")
        r.add_get("/__emulator/dropped", self._admin_dropped, name="admin_dropped")

    # --- tokens --------------------------------------------------------------------------------
    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_type != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "Content-Type must be application/x-www-form-urlencoded")
        return {k: str(v) for k, v in (await request.post()).items()}

    async def _oauth_token(self, request: web.Request) -> web.Response:
        try:
            body = self._auth.login(await self._form(request), self.url)
        except OAuthError as err:
            return web.json_response(err.body(), status=err.status)
        return web.json_response(body)

    async def _a360_token(self, request: web.Request) -> web.Response:
        try:
            body = self._auth.exchange(await self._form(request), html_on_reuse=self._faults.html_on_reused_core_token)
        except OAuthError as err:
            return web.json_response(err.body(), status=err.status)
        if body is None:
            return web.Response(text=HTML_REDIRECT_PAGE, content_type="text/html")
        bare = self.url.split("://", 1)[1]
        # A bare host means https to every client; over plain HTTP the scheme must be explicit.
        scheme_needed = self.settings.dc_instance_url_style == "scheme" or self.url.startswith("http://")
        body["instance_url"] = self.url if scheme_needed else bare
        return web.json_response(body)

    # --- streaming -----------------------------------------------------------------------------
    def _object(self, request: web.Request) -> ObjectSchema:
        """The schema object behind the URL's object endpoint (404 for an unknown connector or endpoint)."""
        src, name = request.match_info["source"], request.match_info["object"]
        obj = self._objects.get(self._endpoints.get(name, ""))
        if src != self.settings.source_name or obj is None:
            raise ApiError(404, f"no ingestion object {src}/{name}", code="NOT_FOUND")
        return obj

    async def _read_limited(self, request: web.Request, limit: int) -> bytes:
        too_big = ApiError(413, f"the request body is over {limit} bytes", code="PAYLOAD_TOO_LARGE")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        buf = bytearray()
        async for chunk in request.content.iter_chunked(_CHUNK):
            buf += chunk
            if len(buf) > limit:
                raise too_big
        return bytes(buf)

    async def _records(self, request: web.Request, obj: ObjectSchema, validate: bool) -> list[Any]:
        """The ``data`` array of a streaming body; with ``validate``, a 400 report for any mismatch."""
        raw = await self._read_limited(request, self.settings.max_body_bytes)
        try:
            payload = parse_json_strict(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ApiError(400, f"Malformed JSON: {exc}") from None
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, list):
            raise ApiError(400, "the body must be a JSON object with a \"data\" array")
        if not data:
            raise ApiError(400, "the \"data\" array is empty")
        if validate:
            report = [{"record": json.dumps(record, separators=(",", ":")), "causingExceptions": problems}
                      for record in data if (problems := self._problems(obj, record))]
            if report:
                raise ApiError(400, "Bad Request: JSON is properly formatted but has a mismatch with Schema.",
                               details={"validationReport": report})
        return data

    def _problems(self, obj: ObjectSchema, record: Any) -> list[str]:
        s = self.settings
        return validate_record(obj, record, reject_unknown=s.reject_unknown_fields, require_all=s.require_all_fields)

    async def _stream_insert(self, request: web.Request) -> web.Response:
        obj = self._object(request)
        s = self.settings
        endpoint = request.match_info["object"]
        if s.fire_and_forget:
            # Only the envelope is checked now; each record is judged when processed, and an invalid
            # one is dropped there without telling the sender (Data Cloud's fire-and-forget, [SI]).
            data = await self._records(request, obj, validate=False)
            await self._land(partial(self._process_stream, obj, endpoint, data), "stream")
        else:
            data = await self._records(request, obj, s.validate_streaming)
            if any(not isinstance(r, dict) for r in data):
                raise ApiError(400, "Bad Request: JSON is properly formatted but has a mismatch with Schema.",
                               details={"validationReport": [{"record": json.dumps(r), "causingExceptions": [
                                   "#: expected type: JSONObject"]} for r in data if not isinstance(r, dict)]})
            pairs = self._pairs(obj, data)
            await self._land(lambda: self.store.upsert(pairs, obj.name), "stream")
        return web.json_response({"accepted": True}, status=202)

    @staticmethod
    def _pairs(obj: ObjectSchema, data: list[Any]) -> list[tuple[str, str]]:
        return [
            (str(r[obj.primary_key]), json.dumps({f: r.get(f) for f in obj.fields}, separators=(",", ":")))
            for r in data if r.get(obj.primary_key) not in (None, "")
        ]

    def _process_stream(self, obj: ObjectSchema, endpoint: str, data: list[Any]) -> None:
        """Fire-and-forget processing (store thread): valid records land, invalid ones are dropped."""
        valid = []
        for record in data:
            problems = self._problems(obj, record)
            if problems:
                self.dropped.add(obj.name, endpoint, record, problems)
            else:
                valid.append(record)
        self.store.upsert(self._pairs(obj, valid), obj.name)

    async def _stream_test(self, request: web.Request) -> web.Response:
        obj = self._object(request)
        await self._records(request, obj, validate=True)
        # [VAL]/[STW]: "a status code in the 200s"; the body is undocumented. Nothing is stored.
        return web.json_response({"accepted": True}, status=200)

    async def _stream_delete(self, request: web.Request) -> web.Response:
        obj = self._object(request)
        ids = [i for i in request.query.get("ids", "").split(",") if i]
        if request.can_read_body:
            raw = await self._read_limited(request, self.settings.max_body_bytes)
            if raw.strip():
                try:
                    body = parse_json_strict(raw)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ApiError(400, f"Malformed JSON: {exc}") from None
                body_ids = body.get("ids") if isinstance(body, dict) else None
                if not isinstance(body_ids, list) or not all(isinstance(i, str) and i for i in body_ids):
                    raise ApiError(400, "the body must be {\"ids\": [\"<primary key>\", ...]}")
                ids.extend(body_ids)
        if not ids:
            raise ApiError(400, "no ids: pass ?ids=a,b or a JSON body {\"ids\": [...]}")
        if len(ids) > self.settings.max_delete_ids:
            raise ApiError(400, f"{len(ids)} ids; at most {self.settings.max_delete_ids} per request, "
                                "use a bulk delete job")
        await self._land(lambda: self.store.delete(ids, obj.name), "delete")
        return web.json_response({"accepted": True}, status=202)

    # --- bulk ----------------------------------------------------------------------------------
    async def _json_body(self, request: web.Request) -> Any:
        raw = await self._read_limited(request, 1 << 20)
        try:
            return parse_json_strict(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"Malformed JSON: {exc}") from None

    async def _job_create(self, request: web.Request) -> web.Response:
        job = self._jobs.create(await self._json_body(request), set(self._endpoints), self.settings.source_name)
        log.info("bulk job created job=%s operation=%s object=%s", job.id, job.operation, job.object)
        return web.json_response(job.to_json(), status=201)

    async def _job_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._jobs.get(request.match_info["id"]).to_json())

    async def _job_list(self, request: web.Request) -> web.Response:
        jobs = self._jobs.list(dict(request.query))
        return web.json_response({"data": [j.to_json() for j in jobs]})

    async def _job_delete(self, request: web.Request) -> web.Response:
        job = self._jobs.delete(request.match_info["id"])
        await self._drop_staged(job.id)
        return web.Response(status=204)

    async def _job_patch(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        job_id = request.match_info["id"]
        if job_id in self._uploading:
            raise ApiError(409, "a file upload to this job is still in progress")
        job = self._jobs.patch(job_id, body)
        if job.state == "Aborted":
            await self._drop_staged(job.id)
        else:
            self._spawn(self._process(job), name=f"emulator.job[{job.id}]")
        return web.json_response(job.to_json())

    async def _process(self, job: Job) -> None:
        """UploadComplete -> InProgress -> JobComplete | Failed, over bulk_processing_seconds."""
        half = self.settings.bulk_processing_seconds / 2
        await asyncio.sleep(half)  # emulated queueing time
        if job.id not in self._jobs.jobs:
            return  # deleted while queued
        job.set_state("InProgress")
        started = time.monotonic()
        await asyncio.sleep(half)  # emulated processing time
        if self._faults.fail_next_jobs > 0:
            self._faults.fail_next_jobs -= 1
            await self._drop_staged(job.id)
            job.set_state("Failed")
            log.info("bulk job failed (injected) job=%s", job.id)
            return
        staged = self._staged.pop(job.id, None)
        if staged is not None:
            # A job names the object endpoint; the rows land in that endpoint's object.
            await self._in_store(partial(self.store.land_staged, staged, self._endpoints[job.object]))
            await asyncio.to_thread(staged.drop)
        job.processing_ms = int((time.monotonic() - started) * 1000)
        job.set_state("JobComplete")
        log.info("bulk job complete job=%s rows=%d", job.id, job.rows)
        await self._notify_landed()

    async def _job_upload(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id in self._uploading:
            raise ApiError(409, "one file at a time per job: an upload is in progress")
        job = self._jobs.check_upload(job_id)
        if request.content_type != "text/csv":
            raise ApiError(400, f"Content-Type {request.content_type!r}; bulk data must be text/csv")
        limit = self.settings.max_file_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"the file is over {limit} bytes", code="PAYLOAD_TOO_LARGE")
        self._uploading.add(job_id)
        try:
            staged = self._staged.get(job_id)
            if staged is None:
                path = self._workdir / f"staged-{job_id}.sqlite"
                staged = self._staged[job_id] = await asyncio.to_thread(StagedJob, path, job.operation)
            obj = self._objects[self._endpoints[job.object]]  # a job names the object endpoint
            converter = (UpsertConverter(obj, reject_unknown=self.settings.reject_unknown_csv_columns)
                         if job.operation == "upsert" else DeleteConverter())
            try:
                n = await self._stage_upload(request, converter, staged, limit)
            except CsvFileError as exc:
                raise ApiError(400, f"invalid CSV file: {exc}") from None
        finally:
            self._uploading.discard(job_id)
        job.files += 1
        job.rows += n
        job.set_state(job.state)
        log.info("bulk file staged job=%s file=%d rows=%d", job_id, job.files, n)
        return web.Response(status=202)

    async def _stage_upload(self, request: web.Request, converter: UpsertConverter | DeleteConverter,
                            staged: StagedJob, limit: int) -> int:
        """Validate, convert and stage the body while it streams in (never a whole file in memory).

        Block k is converted on a worker thread while block k+1 is read, so a 150 MB file is
        staged moments after its last byte. Any error (bad row, 413, dropped client) rolls the
        file back: a refused file leaves nothing staged. Returns the file's row count.
        """
        loop = asyncio.get_running_loop()
        file = await asyncio.to_thread(staged.begin_file)

        def feed(data: bytes, last: bool) -> None:
            staged.add(file, converter.feed(data))
            if last:
                staged.add(file, converter.close())

        pending: asyncio.Future[None] | None = None
        committed = False
        try:
            size = 0
            buf = bytearray()
            async for chunk in request.content.iter_chunked(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the file is over {limit} bytes", code="PAYLOAD_TOO_LARGE")
                buf += chunk
                if len(buf) >= _STAGE_BLOCK:
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(None, feed, bytes(buf), False)
                    buf.clear()
            if pending is not None:
                await pending
            pending = None
            await asyncio.to_thread(feed, bytes(buf), True)
            n = await asyncio.to_thread(staged.commit_file)
            committed = True
            return n
        finally:
            if not committed:
                # A block may still be converting on its thread: its add() comes after this
                # rollback and stages nothing. Its outcome no longer matters, so it is consumed.
                await asyncio.to_thread(staged.rollback_file)
                if pending is not None:
                    pending.add_done_callback(_consume)

    async def _drop_staged(self, job_id: str) -> None:
        staged = self._staged.pop(job_id, None)
        if staged is not None:
            await asyncio.to_thread(staged.drop)

    # --- admin ---------------------------------------------------------------------------------
    async def _admin_set_faults(self, request: web.Request) -> web.Response:
        try:
            faults = Faults.from_json(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.set_faults(faults)
        return web.json_response(self._faults.to_json())

    async def _admin_get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults.to_json())

    async def _admin_stats(self, request: web.Request) -> web.Response:
        body = self.stats.as_dict()
        body["jobs"] = {j.id: j.state for j in self._jobs.jobs.values()}
        return web.json_response(body)

    async def _admin_dropped(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        return web.json_response(self.dropped.as_json(limit))

    async def _admin_records(self, request: web.Request) -> web.Response:
        """``?object=NAME`` (default: the main object), ``?limit=N``, ``?count_only=1``."""
        name = request.query.get("object", self.settings.object_name)
        if name not in self._objects:
            return web.json_response({"error": f"no object {name!r} in the schema file",
                                      "objects": sorted(self._objects)}, status=404)
        if request.query.get("count_only") in ("1", "true"):
            return web.json_response({"object": name, "count": self.store.count(name)})
        try:
            limit = int(request.query.get("limit", "1000"))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        rows = await self._in_store(lambda: self.store.rows(limit, name))
        return web.json_response({"object": name, "count": self.store.count(name), "records": rows})

    async def _admin_objects(self, request: web.Request) -> web.Response:
        """Every object of the schema file with the endpoint(s) that reach it and its landed count."""
        counts = self.store.counts()
        endpoints: dict[str, list[str]] = {}
        for endpoint, name in self._endpoints.items():
            endpoints.setdefault(name, []).append(endpoint)
        return web.json_response({"objects": [
            {"object": name, "endpoints": sorted(endpoints.get(name, [])), "count": counts.get(name, 0)}
            for name in sorted(self._objects)]})


def _endpoint_map(objects: dict[str, ObjectSchema], mapped: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Object endpoint name -> schema object: the mapped ones, and every other object under its own name."""
    out: dict[str, str] = {}
    for endpoint, obj in mapped:
        if obj not in objects:
            raise ValueError(f"object_endpoints: {obj!r} is not an object of the schema file")
        if endpoint in out or not _ENDPOINT_RE.match(endpoint):
            raise ValueError(f"object_endpoints: {endpoint!r} is a duplicate or not a valid endpoint name")
        out[endpoint] = obj
    renamed = set(out.values())
    for name in objects:
        if name not in renamed and name not in out:
            out[name] = name
    return out


_ENDPOINT_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


def _consume(fut: asyncio.Future[None]) -> None:
    """Mark an abandoned future's outcome as seen (its error was already answered otherwise)."""
    if not fut.cancelled():
        fut.exception()
