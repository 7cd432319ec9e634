"""Bulk ingestion: CSV jobs for backfills (datacloud-api.md §3).

``BulkClient`` is the thin wire layer (one method per endpoint, answers mapped to the error tree).
``BulkUploader`` runs one job end to end from a stream of stored JSON records: CSV files of at most
``max_file_bytes`` written to temp files (the backlog never sits in memory), uploaded one at a time,
closed with UploadComplete, polled to JobComplete or Failed. The journal is written BEFORE every
remote step, so after a crash :meth:`BulkUploader.resume` knows what may have happened remotely.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Final, Protocol
from urllib.parse import urlencode

import aiohttp

from agent.datacloud._http import Answer, describe, fetch, json_object, raise_for_status
from agent.datacloud.auth import TokenProvider
from agent.errors import DataCloudError, JobError
from agent.outbox.types import BulkJobRecord
from agent.records import CsvEncoder

log = logging.getLogger(__name__)

MAX_FILES_PER_JOB: Final = 100
MAX_FILE_BYTES: Final = 150_000_000
TERMINAL: Final = frozenset({"JobComplete", "Failed", "Aborted"})
# A job's status is polled after a quarter of its age (between poll_initial and poll_max seconds).
POLL_AGE_FRACTION: Final = 4


class JobJournal(Protocol):
    """Durable memory of bulk jobs. ``save`` returns only once the record is durable; it is called
    before each remote step, so the journal may be one step ahead of the server, never behind."""

    async def save(self, job: BulkJobRecord) -> None: ...


class JobBudget:
    """Client-side view of the bulk limits: at most ``per_hour`` creations in any hour and
    ``concurrent`` unfinished jobs. A 429 from the server still wins (the drain backs off)."""

    def __init__(self, per_hour: int = 20, concurrent: int = 5, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.per_hour = per_hour
        self.concurrent = concurrent
        self._clock = clock
        self._sleep = sleep
        self._created: deque[float] = deque()
        self.active = 0
        self._changed = asyncio.Event()

    def delay(self) -> float | None:
        """Seconds until a creation fits the hourly budget, 0 if now; None while all slots are busy."""
        if self.active >= self.concurrent:
            return None
        now = self._clock()
        while self._created and self._created[0] <= now - 3600:
            self._created.popleft()
        if len(self._created) < self.per_hour:
            return 0.0
        return self._created[0] + 3600 - now

    async def acquire(self) -> None:
        """Wait until a job may be created, then count it as created and active."""
        while (wait := self.delay()) != 0.0:
            if wait is None:
                self._changed.clear()
                await self._changed.wait()
            else:
                await self._sleep(wait)
        self._created.append(self._clock())
        self.active += 1

    def release(self) -> None:
        """A job reached a terminal state (or was never created)."""
        self.active = max(0, self.active - 1)
        self._changed.set()


@dataclass(frozen=True, slots=True)
class BulkResult:
    """One job's outcome. ``rows``/``payload_bytes`` are what it consumed from the iterator, in order:
    when ``exhausted`` is False the job hit the file limit and the rest needs another job."""

    job_id: str | None
    state: str
    rows: int
    payload_bytes: int
    files: int
    exhausted: bool


class BulkClient:
    """One method per bulk endpoint.

    Errors: 404 -> DataCloudError, 409 -> JobError, 429 -> ThrottledError, 5xx/transport/timeout ->
    RetryableError, 400 -> RejectedError; an answer that is not the documented JSON job object (a
    list, wrong types, a missing or malformed ``id`` or ``state``, HTML, a body over the read cap)
    -> DataCloudError naming it. No other exception leaves a method.
    """

    def __init__(self, tokens: TokenProvider, session: aiohttp.ClientSession, source_name: str,
                 object_endpoint: str) -> None:
        self._tokens = tokens
        self._session = session
        self.source_name = source_name
        # The job's "object" is the connector's object endpoint name, like the streaming URL.
        self.object_endpoint = object_endpoint

    async def create_job(self, operation: str = "upsert") -> dict[str, Any]:
        """The created job: a JSON object with a usable ``id`` and a known ``state``."""
        body = {"object": self.object_endpoint, "sourceName": self.source_name, "operation": operation}
        return _job("create job", await self._call("POST", "/api/v1/ingest/jobs", "create job", json_body=body))

    async def upload(self, job_id: str, data: bytes | BinaryIO) -> None:
        """Upload one CSV file: bytes, or a file read from its start in chunks (bounded memory)."""
        answer = await self._call("PUT", f"/api/v1/ingest/jobs/{_job_path(job_id)}/batches", "upload", data=data,
                                  content_type="text/csv")
        # 202 per [UJD], 201 in [BTW]. A 200 is no upload receipt (a captive portal's page): counting
        # it would close the job without this file, and its rows would be acked but never land.
        if answer.status not in (201, 202):
            raise DataCloudError(f"upload: HTTP {answer.status} answered {describe(answer)}, not 201/202",
                                 status=answer.status,
                                 hint="something other than Data Cloud answered (a proxy or captive portal?)")

    async def close(self, job_id: str) -> dict[str, Any]:
        return _job("close job", await self._call("PATCH", f"/api/v1/ingest/jobs/{_job_path(job_id)}",
                                                   "close job", json_body={"state": "UploadComplete"}))

    async def abort(self, job_id: str) -> dict[str, Any]:
        return _job("abort job", await self._call("PATCH", f"/api/v1/ingest/jobs/{_job_path(job_id)}",
                                                   "abort job", json_body={"state": "Aborted"}))

    async def get(self, job_id: str) -> dict[str, Any]:
        return _job("get job", await self._call("GET", f"/api/v1/ingest/jobs/{_job_path(job_id)}", "get job"))

    async def list(self, states: tuple[str, ...] = (), limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"limit": limit, "offset": offset}
        if states:
            query["states"] = ",".join(states)
        answer = await self._call("GET", f"/api/v1/ingest/jobs?{urlencode(query)}", "list jobs")
        data = json_object("list jobs", answer).get("data")
        if not isinstance(data, list):
            raise DataCloudError(f"list jobs: the answer's data is {type(data).__name__}, not a list",
                                 status=answer.status, hint="Data Cloud answers {\"data\": [jobs]} ([GAJ])")
        return [_job("list jobs", answer, item) for item in data]

    async def delete_job(self, job_id: str) -> None:
        answer = await self._call("DELETE", f"/api/v1/ingest/jobs/{_job_path(job_id)}", "delete job")
        if answer.status != 204:  # [DJ]: 204 No Content; a 200 page is not a deletion
            raise DataCloudError(f"delete job: HTTP {answer.status} answered {describe(answer)}, not 204",
                                 status=answer.status,
                                 hint="something other than Data Cloud answered (a proxy or captive portal?)")

    async def _call(self, method: str, path: str, what: str, *, json_body: Any = None,
                    data: bytes | BinaryIO | None = None, content_type: str | None = None) -> Answer:
        for attempt in (1, 2):
            token = await self._tokens.token()
            headers = dict(token.header)
            if content_type:
                headers["Content-Type"] = content_type
            body: bytes | AsyncIterator[bytes] | None
            if data is None or isinstance(data, bytes):
                body, size = data, None if data is None else len(data)
            else:
                # A file goes out in chunks with its length (no chunked encoding): a 16 MB file in
                # one bytes object, plus asyncio's copy of what the socket has not taken yet, was
                # most of a backfill's peak memory (bench/backfill.py).
                size = await asyncio.to_thread(_rewind, data)
                body = _chunks(data)
                headers["Content-Length"] = str(size)
            timeout, deadline = self._timeouts(size)
            answer = await fetch(self._session, method, token.instance_url + path, what=what, timeout=timeout,
                                 deadline_seconds=deadline, ssl=self._tokens.ssl_context, json=json_body,
                                 data=body, headers=headers)
            if answer.status == 401 and attempt == 1:
                self._tokens.invalidate(token)
                continue
            raise_for_status(what, answer)
            return answer
        raise JobError(f"{what}: unreachable")  # pragma: no cover

    def _timeouts(self, size: int | None) -> tuple[aiohttp.ClientTimeout, float | None]:
        """aiohttp's timeout and an overall deadline for one call.

        A 150 MB file over a slow uplink takes minutes, so an upload has no aiohttp total: the
        silence between reads is bounded, and the whole exchange gets a deadline long enough for
        the file at a crawl (_MIN_UPLOAD_BYTES_PER_SECOND), so a peer that trickles its answer
        cannot hold the upload forever either.
        """
        if size is None:
            return self._tokens.timeout, None
        t = self._tokens.timeout.total or 30.0
        return (aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
                t + size / _MIN_UPLOAD_BYTES_PER_SECOND)


# The slowest uplink an upload is given time for: a 150 MB file gets about 2.6 hours.
_MIN_UPLOAD_BYTES_PER_SECOND: Final = 16 * 1024
_UPLOAD_CHUNK_BYTES: Final = 256 * 1024


def _rewind(f: BinaryIO) -> int:
    """Seek to the start (a retry sends the file again); returns its size."""
    size = f.seek(0, 2)
    f.seek(0)
    return size


async def _chunks(f: BinaryIO) -> AsyncIterator[bytes]:
    # The reads run on a thread (the file is on the SD card); a read still running when the answer
    # came early ends before the file is closed (BufferedReader holds its lock through close).
    while chunk := await asyncio.to_thread(f.read, _UPLOAD_CHUNK_BYTES):
        yield chunk
# Job ids are UUIDs in Data Cloud examples, 18-character Salesforce ids in older ones ([CJ], [BTW]).
# The id goes into URL paths: anything else is refused rather than sent.
_JOB_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")
STATES: Final = frozenset({"Open", "UploadComplete", "InProgress", "JobComplete", "Failed", "Aborted"})


def poll_wait(age: float, first: float, cap: float) -> float:
    """Seconds until the next status poll of a job polled for ``age`` seconds so far.

    A quarter of its age, at least ``first``, at most ``cap``: the end of a job is seen within a
    quarter of its run, whatever its length. A doubling backoff with full jitter saw the 5 s landing
    of a 1M-row backfill anywhere up to 6 s late, a different lag every run (bench/backfill.py).
    """
    return min(cap, max(first, age / POLL_AGE_FRACTION))


def _job_path(job_id: str) -> str:
    if not _JOB_ID_RE.match(job_id):
        raise JobError(f"job id {job_id[:100]!r} is not a Data Cloud job id")
    return job_id


def _job(what: str, answer: Answer, item: Any = None) -> dict[str, Any]:
    """The job object of an answer (or ``item`` of a list), checked: a string ``id`` fit for a URL
    path and a documented ``state`` ([CJ], [GJI], [BI] state machine)."""
    doc = json_object(what, answer) if item is None else item
    if not isinstance(doc, dict):
        raise DataCloudError(f"{what}: a job in the answer is {type(doc).__name__}, not an object",
                             status=answer.status)
    job_id, state = doc.get("id"), doc.get("state")
    if not isinstance(job_id, str) or not _JOB_ID_RE.match(job_id):
        raise DataCloudError(f"{what}: the answer's job id is {_shown(job_id)}, not a job id string",
                             status=answer.status, hint="Data Cloud answers the job object ([CJ], [GJI])")
    if not isinstance(state, str) or state not in STATES:
        raise DataCloudError(f"{what}: job {job_id} has state {_shown(state)}, not one of {sorted(STATES)}",
                             status=answer.status, hint="Data Cloud answers the job object ([CJ], [GJI])")
    return doc


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class _CsvSpool:
    """CSV files of at most ``max_bytes`` each (header included) in a temp dir; blocking I/O in a thread."""

    def __init__(self, encoder: CsvEncoder, max_bytes: int, tmp_dir: Path | None) -> None:
        self._encoder = encoder
        self._header = encoder.header()
        if max_bytes <= len(self._header):
            raise ValueError("max_file_bytes must exceed the CSV header")
        self.max_bytes = max_bytes
        self._dir = tmp_dir
        self.file: BinaryIO | None = None
        self.size = 0
        self.rows_in_file = 0

    def add(self, payloads: list[bytes], start: int) -> tuple[int, int, bool]:
        """Write rows from ``payloads[start:]`` until the file is full.

        Returns (rows written, payload bytes of those rows, file full). Each row is encoded on its
        own so the file boundary falls exactly between rows.
        """
        if self.file is None:
            self.file = tempfile.TemporaryFile(dir=self._dir)  # noqa: SIM115 - closed by take()
            self.file.write(self._header)
            self.size, self.rows_in_file = len(self._header), 0
        written = nbytes = 0
        # Encode in slices (fast path), falling back to row by row near the size limit.
        i = start
        while i < len(payloads):
            room = self.max_bytes - self.size
            block = payloads[i:i + 256]
            csv = self._encoder.rows(block)
            if len(csv) > room:
                if len(block) == 1:
                    if self.rows_in_file == 0:  # a single row bigger than a file: send it anyway
                        self._write(csv, block)
                        return written + 1, nbytes + len(block[0]), True
                    return written, nbytes, True
                # Too big as a block: retry with the rows one at a time.
                for p in block:
                    row = self._encoder.rows([p])
                    if len(row) > self.max_bytes - self.size:
                        if self.rows_in_file == 0:
                            self._write(row, [p])
                            return written + 1, nbytes + len(p), True
                        return written, nbytes, True
                    self._write(row, [p])
                    written, nbytes, i = written + 1, nbytes + len(p), i + 1
                continue
            self._write(csv, block)
            written += len(block)
            nbytes += sum(len(p) for p in block)
            i += len(block)
        return written, nbytes, False

    def _write(self, csv: bytes, block: list[bytes]) -> None:
        assert self.file is not None
        self.file.write(csv)
        self.size += len(csv)
        self.rows_in_file += len(block)

    def take(self) -> BinaryIO | None:
        """The finished file, rewound (the caller closes it); None if no rows were written."""
        f, self.file = self.file, None
        if f is None:
            return None
        if self.rows_in_file == 0:
            f.close()
            return None
        f.flush()
        f.seek(0)
        return f

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class BulkUploader:
    """Runs bulk upsert jobs for one lease, journaling each step before doing it.

    Args:
        max_file_bytes: per CSV file including its header (Data Cloud: 150 MB).
        max_files: per job (Data Cloud: 100); a job stops consuming rows when full.
        poll_initial_seconds / poll_max_seconds: bounds of the wait between job status polls (a
            quarter of the job's age in between).
    """

    def __init__(self, client: BulkClient, encoder: CsvEncoder, journal: JobJournal, *,
                 budget: JobBudget | None = None, max_file_bytes: int = MAX_FILE_BYTES,
                 max_files: int = MAX_FILES_PER_JOB, tmp_dir: Path | None = None,
                 poll_initial_seconds: float = 0.5, poll_max_seconds: float = 30.0,
                 now_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        self._client = client
        self._encoder = encoder
        self._journal = journal
        self._budget = budget or JobBudget()
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self._tmp_dir = tmp_dir
        self._poll = (poll_initial_seconds, poll_max_seconds)
        self._now_ms = now_ms
        self._rng = random.Random()     # a little jitter keeps a fleet's polls from falling into step

    async def _save(self, rec: BulkJobRecord) -> BulkJobRecord:
        rec = replace(rec, updated_ms=self._now_ms())
        await self._journal.save(rec)
        return rec

    async def run(self, lease_id: int, chunks: AsyncIterator[list[bytes]]) -> BulkResult:
        """One job from ``chunks`` (stored JSON records, in lease order) to a terminal state.

        The job is created on the first row; an empty iterator creates nothing. On an error before
        UploadComplete the job is aborted (best effort) and the error propagates.
        """
        spool = _CsvSpool(self._encoder, self.max_file_bytes, self._tmp_dir)
        rec = BulkJobRecord(lease_id, None, "creating")
        rows = nbytes = files = 0
        exhausted = True
        upload: asyncio.Task[None] | None = None
        acquired = False

        async def ship() -> None:
            """Create the job with the first file, let the previous upload finish, journal, start this one."""
            nonlocal rec, acquired, upload, files
            if rec.job_id is None:
                rec = await self._create(rec)
                acquired = True
            if upload is not None:
                await upload
            files += 1
            rec = await self._save(replace(rec, state="uploading", files_uploaded=files))
            upload = self._start_upload(rec, spool.take(), files)

        try:
            async for chunk in chunks:
                start = 0
                while start < len(chunk):
                    n, b, full = await asyncio.to_thread(spool.add, chunk, start)
                    start, rows, nbytes = start + n, rows + n, nbytes + b
                    if not full:
                        continue
                    await ship()
                    if files >= self.max_files:
                        # Even if nothing is left, we cannot know without pulling another chunk;
                        # the caller leases again and finds nothing.
                        exhausted = False
                        break
                if files >= self.max_files:
                    break
            if spool.file is not None and spool.rows_in_file > 0:
                await ship()
            spool.discard()
            if upload is not None:
                await upload
                upload = None
            job_id = rec.job_id
            if job_id is None:
                return BulkResult(None, "Empty", 0, 0, 0, True)
            rec = await self._save(replace(rec, state="UploadComplete"))
            await self._client.close(job_id)
        except BaseException:
            if upload is not None and not upload.done():
                upload.cancel()
                with contextlib.suppress(BaseException):
                    await upload
            spool.discard()
            if rec.job_id is not None:
                await self._abort_quietly(rec)
            if acquired:
                self._budget.release()
            raise
        try:
            state = await self._poll_to_terminal(rec)
        finally:
            self._budget.release()
        log.info("bulk job finished job_id=%s state=%s rows=%d files=%d", rec.job_id, state, rows, files)
        return BulkResult(rec.job_id, state, rows, nbytes, files, exhausted)

    async def resume(self, job: BulkJobRecord) -> str:
        """Finish what a previous run left. Returns the terminal state; "Aborted" means re-upload the rows.

        creating / Open / uploading: the upload may be partial, so the job is aborted.
        UploadComplete / InProgress: the data is complete remotely; poll it to JobComplete or Failed.
        """
        if job.state in TERMINAL:
            return job.state
        if job.job_id is None:
            # The create call may or may not have reached the server; without an id we cannot find the
            # job again, and an orphan Open job is purged by Data Cloud after 7 days.
            log.warning("bulk job creation was interrupted; rows will be re-uploaded lease_id=%d", job.lease_id)
            await self._save(replace(job, state="Aborted"))
            return "Aborted"
        try:
            if job.state in ("Open", "uploading"):
                try:
                    await self._client.abort(job.job_id)
                    await self._save(replace(job, state="Aborted"))
                    return "Aborted"
                except JobError:
                    pass  # not Open any more (our close went through before the crash): look at it
            return await self._poll_to_terminal(job)
        except DataCloudError as exc:
            if exc.status == 404:
                log.warning("bulk job vanished remotely; rows will be re-uploaded job_id=%s", job.job_id)
                await self._save(replace(job, state="Aborted"))
                return "Aborted"
            raise

    async def _create(self, rec: BulkJobRecord) -> BulkJobRecord:
        await self._budget.acquire()
        try:
            rec = await self._save(rec)
            job = await self._client.create_job("upsert")
        except BaseException:
            self._budget.release()
            raise
        job_id = job.get("id")
        if not isinstance(job_id, str):
            self._budget.release()
            raise JobError("create job answer has no id")
        log.info("bulk job created job_id=%s lease_id=%d", job_id, rec.lease_id)
        return await self._save(replace(rec, job_id=job_id, state="Open"))

    def _start_upload(self, rec: BulkJobRecord, f: BinaryIO | None, n: int) -> asyncio.Task[None]:
        """Upload file ``n`` in the background while the next one is encoded (one at a time per job)."""
        assert rec.job_id is not None and f is not None
        task = asyncio.create_task(self._upload_file(rec.job_id, f), name=f"agent[bulk:{rec.job_id}].upload{n}")
        # Closed however the task ends, even if it is cancelled before it ever ran.
        task.add_done_callback(lambda _: f.close())
        return task

    async def _upload_file(self, job_id: str, f: BinaryIO) -> None:
        # Our own chunked reads (BulkClient.upload), not aiohttp's file payload: aiohttp reads a file
        # on a thread that can still run after the server answered, racing our close ("I/O
        # operation on closed file" in a never-retrieved future).
        try:
            await self._client.upload(job_id, f)
        finally:
            f.close()

    async def _abort_quietly(self, rec: BulkJobRecord) -> None:
        assert rec.job_id is not None
        try:
            await self._client.abort(rec.job_id)
        except DataCloudError as exc:
            # resume() tries again from the journal; the rows were never acked. Journaled as Open
            # whatever step failed (a close that never landed leaves the job Open remotely): resume
            # aborts an Open job and polls one that turns out closed, instead of polling an Open
            # job until Data Cloud purges it.
            log.warning("could not abort bulk job job_id=%s error=%s", rec.job_id, exc)
            with contextlib.suppress(Exception):
                await self._save(replace(rec, state="Open"))
            return
        with contextlib.suppress(Exception):
            await self._save(replace(rec, state="Aborted"))

    async def _poll_to_terminal(self, rec: BulkJobRecord) -> str:
        assert rec.job_id is not None
        first, cap = self._poll
        started = time.monotonic()
        while True:
            job = await self._client.get(rec.job_id)
            state = str(job.get("state", ""))
            if state in TERMINAL:
                await self._save(replace(rec, state=state))
                return state
            if state == "Open":
                # Journaled as closed, yet Open: our close never landed (an agent from before the
                # journal said Open on a failed close). It would stay Open until purged in 7 days,
                # holding the bulk lane: abort it, its rows are uploaded again.
                log.warning("bulk job is still Open although we closed it; aborting it, its rows will be "
                            "re-uploaded job_id=%s", rec.job_id)
                with contextlib.suppress(JobError):     # closed meanwhile: poll it
                    await self._client.abort(rec.job_id)
                    await self._save(replace(rec, state="Aborted"))
                    return "Aborted"
            if state != rec.state and state in ("UploadComplete", "InProgress"):
                rec = await self._save(replace(rec, state=state))
            await asyncio.sleep(poll_wait(time.monotonic() - started, first, cap) * self._rng.uniform(0.9, 1.0))
