"""The one place where aiohttp's exceptions and HTTP answers become ours.

Every Data Cloud call goes through :func:`fetch`: transport failures and timeouts become
``RetryableError`` (:func:`translate`), the answer is read up to a cap (a hostile or broken peer
can never make us hold an unbounded body), and :func:`raise_for_status` maps answers that are not
2xx. Whatever a peer sends (HTML, truncated or huge JSON, wrong JSON types, absurd headers), the
clients see one of our ``DataCloudError``s with a reason, never a KeyError/TypeError/ValueError.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from agent.errors import AuthError, DataCloudError, JobError, RejectedError, RetryableError, ThrottledError

# Never echo more of a server body into an exception or a log line than this.
_BODY_EXCERPT: Final = 300
# The most of an answer we read. Documented answers are small JSON objects; the largest is a 400
# with a validationReport that echoes the records of one streaming body (under 200 KB, so well
# under 1 MiB even escaped). Anything longer is cut and treated as unreadable.
MAX_ANSWER_BYTES: Final = 1 << 20
_CHUNK: Final = 1 << 16
# Retry-After is honoured within [1 s, 1 h]. Data Cloud documents 429 + back-off but not the
# header (datacloud-api.md §9); RFC 9110 §10.2.3 allows delta-seconds or an HTTP-date. The floor
# keeps a "0" or a date in the past from turning into a hot retry loop; the ceiling is the
# longest wait a documented limit can impose (20 bulk jobs per rolling hour), so a value of 10^12
# or a date years ahead cannot park the agent. Outside the grammar (negative, text): ignored, and
# the caller's own exponential backoff applies.
MIN_RETRY_AFTER_SECONDS: Final = 1.0
MAX_RETRY_AFTER_SECONDS: Final = 3600.0
_DELTA_SECONDS_RE: Final = re.compile(r"^[0-9]+(?:\.[0-9]+)?$")
_SSL_OBJECT_RE: Final = re.compile(r"\s*ssl:<[^>]*object at 0x[0-9a-f]+>")


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, read up to a cap. ``truncated``: the peer sent more than the cap."""

    status: int
    content_type: str
    body: bytes
    truncated: bool
    retry_after: str | None

    def json(self) -> Any:
        """The decoded body, or None when it is not (complete) JSON."""
        return None if self.truncated else parse_json(self.body)


@contextmanager
def translate(what: str) -> Iterator[None]:
    """Turn transport failures inside the block into ``RetryableError`` (a timeout is transient too)."""
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as exc:
        # aiohttp's own text shows "ssl:<ssl.SSLContext object at 0x...>": say what failed instead.
        raise RetryableError(
            f"{what}: the TLS certificate of {exc.host}:{exc.port} is not trusted ({exc.certificate_error})",
            hint="a private PKI, a TLS-inspecting proxy or the emulator: set datacloud.ca_file to the PEM of the "
                 "CA that signed it (verification is never turned off)") from exc
    except aiohttp.ClientConnectorError as exc:
        raise RetryableError(f"{what}: cannot connect to {exc.host}:{exc.port} ({exc.os_error})",
                             hint="check the network path to Data Cloud (DNS, firewall, proxy); the agent retries "
                                  "with backoff") from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        # ClientResponseError comes from a malformed answer (aiohttp quotes the bad bytes: keep a
        # short excerpt); we never call raise_for_status().
        text = _SSL_OBJECT_RE.sub("", str(exc))
        text = text if len(text) <= _BODY_EXCERPT else text[:_BODY_EXCERPT] + "..."
        raise RetryableError(f"{what}: {type(exc).__name__}: {text}".rstrip(": "),
                             hint="check the network path to Data Cloud; the agent retries with backoff") from exc


async def fetch(session: aiohttp.ClientSession, method: str, url: str, *, what: str,
                timeout: aiohttp.ClientTimeout, deadline_seconds: float | None = None,
                max_bytes: int = MAX_ANSWER_BYTES, **kwargs: Any) -> Answer:
    """One request; the answer's body is read up to ``max_bytes``.

    ``timeout`` is aiohttp's (per request or per socket read); ``deadline_seconds`` bounds the
    whole exchange on top of it, for uploads whose ``timeout`` cannot have a total.
    """
    bound = asyncio.timeout(deadline_seconds) if deadline_seconds else nullcontext()
    with translate(what):
        async with bound, session.request(method, url, timeout=timeout, allow_redirects=False, **kwargs) as resp:
            body, truncated = await _read_capped(resp, max_bytes)
            return Answer(resp.status, resp.content_type, body, truncated, resp.headers.get("Retry-After"))


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(_CHUNK):
        room = limit - len(buf)
        if len(chunk) > room:
            buf += chunk[:room]
            # The rest is never read: closing drops the connection instead of pooling it half-read.
            resp.close()
            return bytes(buf), True
        buf += chunk
    return bytes(buf), False


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header, clamped to [1 s, 1 h]; None when absent or not in the grammar."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS_RE.match(value):
        # Long digit strings are simply "very long": never int() them (CPython refuses > 4300 digits).
        seconds = float(value) if len(value) <= 15 else math.inf
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:
                return None
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, OverflowError, IndexError):
            return None
    return min(MAX_RETRY_AFTER_SECONDS, max(MIN_RETRY_AFTER_SECONDS, seconds))


def parse_json(body: bytes) -> Any:
    """Decoded JSON or None when the body is not JSON (a proxy page, an empty answer)."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def excerpt(body: bytes) -> str:
    return body[:_BODY_EXCERPT].decode("utf-8", "replace")


def describe(answer: Answer) -> str:
    """What an answer that is not the expected JSON object was, for an error message."""
    if answer.truncated:
        return f"an answer longer than {MAX_ANSWER_BYTES:_} bytes"
    if not answer.body:
        return "an empty body"
    doc = parse_json(answer.body)
    if doc is None:
        return f"{answer.content_type or 'no content type'} that is not JSON: {excerpt(answer.body)!r}"
    return f"JSON {type(doc).__name__} instead of an object: {excerpt(answer.body)!r}"


def error_message(body: bytes) -> str:
    """The ``message`` of the Spring-style error envelope, or an excerpt of the body."""
    doc = parse_json(body)
    if isinstance(doc, dict):
        for key in ("message", "error_description", "error"):
            value = doc.get(key)
            if isinstance(value, str) and value:
                return value[:_BODY_EXCERPT]
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
        return [r if isinstance(r, dict) else {"message": str(r)[:_BODY_EXCERPT]} for r in report]
    return []


def _is_envelope(answer: Answer) -> bool:
    """Data Cloud answers every refusal with its JSON error envelope (datacloud-api.md §5)."""
    doc = answer.json()
    return isinstance(doc, dict) and any(isinstance(doc.get(k), str) for k in ("error", "message"))


def raise_for_status(what: str, answer: Answer) -> None:
    """Map a non-2xx Ingestion API answer to the error tree (401 is left to the caller's re-auth)."""
    status, body = answer.status, answer.body
    if 200 <= status < 300:
        return
    msg = f"{what}: HTTP {status}: {error_message(body)}"
    if status == 429:
        raise ThrottledError(msg, retry_after=parse_retry_after(answer.retry_after))
    if status >= 500 or status == 408:
        raise RetryableError(msg, status=status)
    if status == 413:
        raise RejectedError(msg, status=status, report=validation_report(body))
    if status == 400:
        if not _is_envelope(answer):
            # A refusal of the records always comes in Data Cloud's JSON envelope. Anything else is
            # something in between (a proxy, a captive portal): not a reason to dead-letter rows.
            raise DataCloudError(f"{what}: HTTP 400 with {describe(answer)}", status=status,
                                 hint="something between the gateway and Data Cloud answered (a proxy or "
                                      "captive portal?); the rows stay queued")
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
                             hint="check datacloud.source_name (the Ingestion API connector) and "
                                  "object_endpoint/object_name (a deployed data stream), or the job id")
    if status == 409:
        raise JobError(msg, status=status)
    if 300 <= status < 400:
        raise DataCloudError(msg, status=status,
                             hint="Data Cloud never redirects: a proxy or captive portal is in the way")
    raise DataCloudError(msg, status=status)


def json_object(what: str, answer: Answer) -> dict[str, Any]:
    """The answer's JSON object, or a ``DataCloudError`` naming what came instead."""
    doc = answer.json()
    if not isinstance(doc, dict):
        raise DataCloudError(f"{what}: HTTP {answer.status} answered {describe(answer)}", status=answer.status,
                             hint="Data Cloud answers JSON objects: a proxy in the way, or a changed API")
    return doc
