"""The Data Cloud error envelope (datacloud-api.md §5), used for every 4xx/5xx answer."""

from __future__ import annotations

import datetime as dt
import math
from http import HTTPStatus
from typing import Any

from aiohttp import web


class ApiError(Exception):
    """An error answer of an ingest endpoint."""

    def __init__(
        self, status: int, message: str, *, details: dict[str, Any] | None = None,
        retry_after: float | None = None, code: str = "COMMON_ERROR_GENERIC",
        retry_after_header: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.retry_after = retry_after
        self.retry_after_header = retry_after_header  # sent verbatim (fault injection), wins over retry_after
        self.code = code


def now_iso() -> str:
    """UTC now with microseconds, as in the documented Data Cloud examples."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def error_response(err: ApiError, path: str, tenant_id: str) -> web.Response:
    reason = HTTPStatus(err.status).phrase
    body: dict[str, Any] = {
        "timestamp": now_iso(),
        "error": reason,
        "message": err.message if err.message.startswith(reason) else f"{reason}: {err.message}",
        "path": f"uri={path}",
        "tenantId": tenant_id,
        "internalErrorCode": err.code,
    }
    if err.details is not None:
        body["details"] = err.details
    headers = {}
    if err.retry_after_header is not None:
        headers["Retry-After"] = err.retry_after_header
    elif err.retry_after is not None:
        # Integer seconds, at least 1: HTTP allows only delta-seconds, and 0 invites a hot loop.
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    return web.json_response(body, status=err.status, headers=headers)
