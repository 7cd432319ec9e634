"""Fuzz: arbitrary answers (status, headers, body) from a tiny aiohttp peer, for every client call.

Whatever comes back, a call either succeeds with what it promises or raises a ``DataCloudError``:
never a KeyError/TypeError/ValueError/RecursionError, never a hang. The peer answers the token
endpoints normally except when they are the target, so every ingest call is reached.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.datacloud import BulkClient, StreamingClient, Token, TokenProvider
from agent.errors import DataCloudError
from tests.datacloud.conftest import make_config
from tests.fuzz import examples

pytestmark = pytest.mark.fuzz


@dataclass
class Odd:
    status: int
    headers: dict[str, str]
    body: bytes


class Peer:
    """Token endpoints that work, and one target path that answers whatever ``odd`` says."""

    def __init__(self) -> None:
        self.url = ""
        self.target = ""
        self.odd = Odd(200, {}, b"")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.route.name or ""
        await request.read()
        if name == self.target:
            o = self.odd
            body = b"" if o.status in (204, 304) else o.body
            return web.Response(status=o.status, reason="Odd", headers=o.headers, body=body)
        if name == "oauth_token":
            return web.json_response({"access_token": "core", "instance_url": self.url})
        if name == "a360_token":
            return web.json_response({"access_token": "dc-token", "instance_url": self.url, "expires_in": 7200})
        return web.json_response({"error": "not the target"}, status=418)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    app = web.Application()
    routes = [("POST", "/services/oauth2/token", "oauth_token"), ("POST", "/services/a360/token", "a360_token"),
              ("POST", "/api/v1/ingest/sources/s/o", "stream_insert"),
              ("POST", "/api/v1/ingest/sources/s/o/actions/test", "stream_test"),
              ("DELETE", "/api/v1/ingest/sources/s/o", "stream_delete"),
              ("POST", "/api/v1/ingest/jobs", "job_create"), ("GET", "/api/v1/ingest/jobs", "job_list"),
              ("GET", "/api/v1/ingest/jobs/{id}", "job_get"), ("PATCH", "/api/v1/ingest/jobs/{id}", "job_patch"),
              ("PUT", "/api/v1/ingest/jobs/{id}/batches", "job_upload"),
              ("DELETE", "/api/v1/ingest/jobs/{id}", "job_delete")]
    for method, path, name in routes:
        app.router.add_route(method, path, p.handle, name=name)
    async with TestServer(app, host="127.0.0.1") as server:
        p.url = str(server.make_url("")).rstrip("/")
        yield p


def _json_values() -> st.SearchStrategy[Any]:
    scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False)
               | st.text(max_size=30))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


# Bodies shaped like the documented answers, with every field possibly wrong, missing or extra.
_KEYS = ["id", "state", "accepted", "access_token", "instance_url", "expires_in", "data", "error",
         "error_description", "message", "details"]
shaped = st.dictionaries(st.sampled_from(_KEYS), _json_values(), max_size=6).map(
    lambda d: json.dumps(d).encode())
bodies = st.one_of(
    shaped,
    _json_values().map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=400),
    st.sampled_from([b"", b"<html><body>portal</body></html>", b"{", b"[" * 5000 + b"]" * 5000,
                     b'{"id": "' + b"a" * 2_000_000 + b'"}', b"\xff\xfe", b'{"state": "JobComplete", "id": 5}',
                     b'{"id": "../../x", "state": "Open"}', b'{"data": {}}', b'{"data": [1, 2]}',
                     b'{"access_token": "a b\\r\\nX-Evil: 1", "instance_url": "x"}',
                     b'{"access_token": "t", "instance_url": "https://[::1"}',
                     b'{"access_token": "t", "instance_url": "http://evil.example"}',
                     b'{"accepted": false}', b'{"accepted": "true"}']),
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
headers = st.fixed_dictionaries({}, optional={
    "Retry-After": st.one_of(header_text, st.sampled_from(["-1", "0", "1e999", "NaN", "9" * 500,
                                                           "Fri, 01 Jan 9999 00:00:00 GMT", "Thu, 01 Jan 1970"])),
    "Content-Type": st.sampled_from(["application/json", "text/html", "text/plain", "application/json; charset=x",
                                     "", "multipart/form-data; boundary=x"]),
    "Location": st.just("http://captive.example/"),
})
statuses = st.one_of(st.sampled_from([200, 201, 202, 204, 301, 302, 400, 401, 403, 404, 408, 409, 413, 429, 500, 503]),
                     st.integers(200, 599))
odd_answers = st.builds(Odd, statuses, headers, bodies)
TARGETS = ["oauth_token", "a360_token", "stream_insert", "stream_test", "stream_delete", "job_create", "job_list",
           "job_get", "job_patch", "job_upload", "job_delete"]


class Calls:
    """One session and one token provider for every example (an SSL context costs tens of ms)."""

    def __init__(self, peer: Peer, key: Path, session: aiohttp.ClientSession) -> None:
        self.tokens = TokenProvider(make_config(peer.url, key, timeout_seconds=2.0), session)
        self.login = TokenProvider(make_config(peer.url, key, timeout_seconds=2.0), session)
        streaming = StreamingClient(self.tokens, session, "s", "o")
        bulk = BulkClient(self.tokens, session, "s", "o")
        self.by_target: dict[str, Callable[[], Awaitable[Any]]] = {
            "oauth_token": self.fresh_token,
            "a360_token": self.fresh_token,
            "stream_insert": lambda: streaming.send([b'{"event_id":"a"}']),
            "stream_test": lambda: streaming.validate([b'{"event_id":"a"}']),
            "stream_delete": lambda: streaming.delete(["a"]),
            "job_create": lambda: bulk.create_job(),
            "job_list": lambda: bulk.list(),
            "job_get": lambda: bulk.get("job-1"),
            "job_patch": lambda: bulk.close("job-1"),
            "job_upload": lambda: bulk.upload("job-1", b"event_id\na\n"),
            "job_delete": lambda: bulk.delete_job("job-1"),
        }

    async def fresh_token(self) -> Token:
        self.login.invalidate()
        return await self.login.token()


@pytest.fixture
async def calls(peer: Peer, key_files: tuple[Path, bytes]) -> AsyncIterator[Calls]:
    async with aiohttp.ClientSession() as session:
        yield Calls(peer, key_files[0], session)


def _check_result(target: str, result: Any) -> None:
    """What a successful call promises its caller."""
    if target in ("oauth_token", "a360_token"):
        assert isinstance(result, Token) and result.instance_url.startswith("http")
    elif target in ("job_create", "job_get", "job_patch"):
        assert isinstance(result, dict) and isinstance(result["id"], str) and isinstance(result["state"], str)
    elif target == "job_list":
        assert isinstance(result, list) and all(isinstance(j["id"], str) for j in result)
    elif target == "stream_test":
        assert isinstance(result, list) and all(isinstance(r, dict) for r in result)
    else:
        assert result is None


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(TARGETS), odd=odd_answers)
async def test_any_answer_is_success_or_our_error(peer: Peer, calls: Calls, target: str, odd: Odd) -> None:
    peer.target, peer.odd = target, odd
    try:
        async with asyncio.timeout(15):
            result = await calls.by_target[target]()
    except DataCloudError as exc:
        assert exc.message and len(exc.message) < 2000, exc.message
        return
    _check_result(target, result)
