"""Odd answers on demand (``Faults.answers``): what a broken path to Data Cloud can send back.

The clients must turn each of these into one of their own errors with a reason. "Before" kinds
stand for something in between (a proxy, a captive portal, a dead peer) that answers in Data
Cloud's place, so the request never takes effect; "after" kinds break a real answer on its way
back, so the request did take effect (a resend must be harmless). See ``settings.ANSWERS_*``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

from aiohttp import web

from agent.emulator.settings import Faults

CAPTIVE_PORTAL_PAGE: Final = (
    "<!DOCTYPE html><html><head><title>Sign in to the network</title></head>"
    "<body><form action=\"/login\"><input name=\"user\"></form></body></html>\n"
)
_PAD_CHUNK: Final = b"x" * (1 << 16)


async def before(kind: str, request: web.Request, faults: Faults, release: asyncio.Event) -> web.StreamResponse:
    """The answer of something in Data Cloud's place; ``hang`` waits for ``release`` (emulator exit)."""
    if kind == "html":
        return web.Response(text=CAPTIVE_PORTAL_PAGE, content_type="text/html")
    if kind == "html_400":
        return web.Response(text="<html><body><h1>400 Bad Request</h1>nginx</body></html>\n",
                            status=400, content_type="text/html")
    if kind == "empty":
        return web.Response(status=200)
    if kind == "redirect":
        return web.Response(status=302, headers={"Location": "http://captive.example/login"})
    if kind == "throttle":
        headers = {} if faults.retry_after_header is None else {"Retry-After": faults.retry_after_header}
        return web.json_response({"error": "Too Many Requests"}, status=429, headers=headers)
    if kind == "hang":
        await release.wait()
        raise ConnectionAbortedError("hung request released at emulator exit")
    raise ValueError(f"not a 'before' answer kind: {kind}")


async def after(kind: str, response: web.StreamResponse, request: web.Request,
                faults: Faults) -> web.StreamResponse:
    """``response`` (already handled) broken in the way ``kind`` says."""
    body = response.body if isinstance(response, web.Response) else None
    raw = bytes(body) if isinstance(body, bytes | bytearray) else b"{}"
    status = response.status
    if kind == "truncated":
        return web.Response(body=raw[: max(1, len(raw) // 2)], status=status, content_type="application/json")
    if kind == "huge":
        # 204 and 304 cannot carry a body in HTTP; a huge body is shown with a 200 then.
        return await _huge(request, 200 if status in (204, 304) else status, faults.huge_answer_bytes)
    try:
        doc: Any = json.loads(raw) if raw else {}
    except ValueError:
        doc = {}
    if kind == "list":
        return web.json_response([doc], status=status)
    if kind == "missing":
        return web.json_response({}, status=status)
    fields = doc if isinstance(doc, dict) else {}
    if kind == "nulls":
        return web.json_response(dict.fromkeys(fields), status=status)
    if kind == "wrong_types":
        return web.json_response({k: _wrong(v) for k, v in fields.items()}, status=status)
    raise ValueError(f"not an 'after' answer kind: {kind}")


def _wrong(value: Any) -> Any:
    """A value of another JSON type: ids become numbers, numbers text, and so on."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, str):
        return 5
    if isinstance(value, int | float):
        return "five"
    if isinstance(value, list | dict):
        return True
    return []


async def _huge(request: web.Request, status: int, size: int) -> web.StreamResponse:
    """A well-formed start of a JSON object that goes on for ``size`` bytes, streamed (never in memory)."""
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"pad": "')
    sent = 0
    try:
        while sent < size:
            chunk = _PAD_CHUNK[: size - sent]
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write(b'"}')
        await resp.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # the client stopped reading (as it should): nothing more to send
    return resp
