"""Bulk ingestion jobs: the state machine and limits of datacloud-api.md §3.

```
 POST -> Open --PATCH UploadComplete--> UploadComplete -> InProgress -> JobComplete | Failed
          └--PATCH Aborted--> Aborted
 DELETE allowed in UploadComplete, JobComplete, Aborted, Failed (204); Open/InProgress -> 409
```
Pure bookkeeping; the server does the I/O (file staging, processing timer).
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from agent.emulator._http import ApiError, now_iso

STATES: Final = ("Open", "UploadComplete", "InProgress", "JobComplete", "Failed", "Aborted")
ACTIVE: Final = frozenset({"Open", "UploadComplete", "InProgress"})
DELETABLE: Final = frozenset({"UploadComplete", "JobComplete", "Aborted", "Failed"})
ORDER_KEYS: Final = ("systemModstamp", "createdDate", "id", "state", "object")
CREATED_BY: Final = "005XX0000001SvQYAU"
HOUR: Final = 3600.0
_SEQ = itertools.count()


@dataclass
class Job:
    id: str
    object: str
    source_name: str
    operation: str
    created: str
    modstamp: str
    state: str = "Open"
    files: int = 0
    rows: int = 0
    closed_at: float = 0.0
    processing_ms: int = 0
    seq: int = field(default_factory=lambda: next(_SEQ))

    def to_json(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "id": self.id,
            "operation": self.operation,
            "sourceName": self.source_name,
            "createdById": CREATED_BY,
            "createdDate": self.created,
            "systemModstamp": self.modstamp,
            "state": self.state,
            "contentType": "CSV",
            "apiVersion": "v1",
            "contentUrl": f"/api/v1/ingest/jobs/{self.id}/batches",
            "retries": 0,
            "totalProcessingTime": self.processing_ms,
        }

    def set_state(self, state: str) -> None:
        self.state = state
        self.modstamp = now_iso()


@dataclass
class JobBook:
    """All jobs, with the concurrency (5 active) and creation-rate (20/h) limits."""

    max_concurrent: int
    max_per_hour: int
    max_files: int
    jobs: dict[str, Job] = field(default_factory=dict)
    _created: deque[float] = field(default_factory=deque)

    def create(self, body: Any, objects: set[str], source_name: str) -> Job:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        obj, src, op = body.get("object"), body.get("sourceName"), body.get("operation")
        if not isinstance(obj, str) or not isinstance(src, str) or not isinstance(op, str):
            raise ApiError(400, "object, sourceName and operation are required strings")
        if op not in ("upsert", "delete"):
            raise ApiError(400, f"operation {op!r} is not supported; use upsert or delete")
        if src != source_name or obj not in objects:
            raise ApiError(404, f"no ingestion object {src}/{obj}", code="NOT_FOUND")
        now = time.monotonic()
        while self._created and self._created[0] <= now - HOUR:
            self._created.popleft()
        if len(self._created) >= self.max_per_hour:
            raise ApiError(429, f"more than {self.max_per_hour} jobs created in the last hour",
                           retry_after=self._created[0] + HOUR - now, code="LIMIT_EXCEEDED")
        active = sum(1 for j in self.jobs.values() if j.state in ACTIVE)
        if active >= self.max_concurrent:
            raise ApiError(429, f"{active} jobs are open or in progress; at most {self.max_concurrent}",
                           retry_after=1.0, code="LIMIT_EXCEEDED")
        self._created.append(now)
        stamp = now_iso()
        job = Job(str(uuid.uuid4()), obj, src, op, stamp, stamp)
        self.jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"job {job_id} not found", code="NOT_FOUND")
        return job

    def check_upload(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state != "Open":
            raise ApiError(409, f"unable to upload data to job {job_id} in state {job.state}")
        if job.files >= self.max_files:
            raise ApiError(400, f"a job takes at most {self.max_files} files", code="LIMIT_EXCEEDED")
        return job

    def patch(self, job_id: str, body: Any) -> Job:
        job = self.get(job_id)
        target = body.get("state") if isinstance(body, dict) else None
        if target not in ("UploadComplete", "Aborted"):
            raise ApiError(400, f"state {target!r} is not valid; use UploadComplete or Aborted")
        if job.state != "Open":
            raise ApiError(409, f"unable to update the job state given its status {job.state}")
        job.set_state(target)
        job.closed_at = time.monotonic()
        return job

    def delete(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state not in DELETABLE:
            raise ApiError(409, f"a job in state {job.state} can't be deleted"
                           + ("; abort it first" if job.state == "Open" else ""))
        del self.jobs[job_id]
        return job

    def list(self, query: dict[str, str]) -> list[Job]:
        try:
            limit = int(query.get("limit", "20"))
            offset = int(query.get("offset", "0"))
        except ValueError:
            raise ApiError(400, "limit and offset must be integers") from None
        if not 1 <= limit <= 100 or offset < 0:
            raise ApiError(400, "limit must be 1..100 and offset >= 0")
        order = query.get("orderBy", query.get("orderby", "systemModstamp"))
        if order not in ORDER_KEYS:
            raise ApiError(400, f"orderBy {order!r} is not one of {list(ORDER_KEYS)}")
        states_raw = query.get("states", query.get("state", ""))
        states = {s.strip() for s in states_raw.split(",") if s.strip()}
        bad = states - set(STATES)
        if bad:
            raise ApiError(400, f"unknown states {sorted(bad)}")
        jobs = [j for j in self.jobs.values() if not states or j.state in states]
        attr = {"systemModstamp": "modstamp", "createdDate": "created", "id": "id",
                "state": "state", "object": "object"}[order]
        jobs.sort(key=lambda j: (getattr(j, attr), j.seq))
        return jobs[offset: offset + limit]
