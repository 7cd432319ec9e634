"""The one place where aiohttp's exceptions and HTTP answers become ours.

Every Data Cloud call goes through :func:`translate` (transport errors) and :func:`raise_for_status`
(answers that are not 2xx), so the clients never catch aiohttp exceptions themselves.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiohttp

from agent.errors import AuthError, DataCloudError, JobError, RejectedError, RetryableError, ThrottledError

# Never echo more of a server body into an exception or a log line than this.
_BODY_EXCERPT = 300


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn transport failures inside the block into ``RetryableError`` (a timeout is transient too)."""
    try:
        yield
    except (TimeoutError, aiohttp.ClientError) as exc:
        # ClientResponseError would only come from raise_for_status(), which we never call.
        raise RetryableError(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "),
                             hint="check the network path to Data Cloud; the agent retries with backoff") from exc


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_json(body: bytes) -> Any:
    """Decoded JSON or None when the body is not JSON (a proxy page, an empty answer)."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None


def excerpt(body: bytes) -> str:
    return body[:_BODY_EXCERPT].decode("utf-8", "replace")


def error_message(body: bytes) -> str:
    """The ``message`` of the Spring-style error envelope, or an excerpt of the body."""
    doc = parse_json(body)
    if isinstance(doc, dict):
        for key in ("message", "error_description", "error"):
            if isinstance(doc.get(key), str) and doc[key]:
                return str(doc[key])
    return excerpt(body) or "(empty body)"


def validation_report(body: bytes) -> list[dict[str, Any]]:
    """``details.validationReport`` of a 400 answer, normalised to a list of dicts."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        return []
    details = doc.get("details")
    report = details.get("validationReport") if isinstance(details, dict) else None
    if report is None:
        report = doc.get("validationReport")
    if isinstance(report, dict):
        return [report]
    if isinstance(report, list):
        return [r if isinstance(r, dict) else {"message": str(r)} for r in report]
    return []


def raise_for_status(what: str, status: int, headers: Any, body: bytes) -> None:
    """Map a non-2xx Ingestion API answer to the error tree (401 is left to the caller's re-auth)."""
    if 200 <= status < 300:
        return
    msg = f"{what}: HTTP {status}: {error_message(body)}"
    if status == 429:
        raise ThrottledError(msg, retry_after=parse_retry_after(headers.get("Retry-After")))
    if status >= 500 or status == 408:
        raise RetryableError(msg, status=status)
    if status in (400, 413):
        raise RejectedError(msg, status=status, report=validation_report(body))
    if status == 401:
        raise AuthError(msg, status=status, error_description=error_message(body),
                        hint="a fresh Data Cloud token was refused too: check the user's Data Cloud "
                             "permission set and the connected app's cdp_ingest_api scope")
    if status == 403:
        raise AuthError(msg, status=status, error_description=error_message(body),
                        hint="the user lacks Ingestion API access: assign the Data Cloud permission set "
                             "and add the cdp_ingest_api scope to the connected app")
    if status == 404:
        raise DataCloudError(msg, status=status,
                             hint="check datacloud.source_name (the Ingestion API connector) and object_name "
                                  "(a deployed data stream), or the job id")
    if status == 409:
        raise JobError(msg, status=status)
    raise DataCloudError(msg, status=status)
