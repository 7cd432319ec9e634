"""Token provider against small ad-hoc servers: shapes the emulator does not produce, and the
claims of the assertion as a server sees them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.datacloud import TokenProvider
from agent.datacloud.auth import CDP_GRANT, JWT_GRANT
from agent.errors import AuthError, RetryableError, ThrottledError
from tests.datacloud.conftest import make_config

Handler = Callable[[web.Request], Any]


class FakeOrg:
    """Login + exchange endpoints whose answers a test scripts; records what it received."""

    def __init__(self, public_pem: bytes) -> None:
        self.public_pem = public_pem
        self.logins: list[dict[str, Any]] = []
        self.exchanges: list[dict[str, str]] = []
        self.login_answer: Callable[[], web.Response] | None = None
        self.exchange_answers: list[web.Response] = []
        self.expires_in = 7191
        self.url = ""
        self.audience = "https://login.salesforce.com"
        self.gate: asyncio.Event | None = None

    async def login(self, request: web.Request) -> web.StreamResponse:
        form = dict(await request.post())
        # The org stands for a My Domain: the request comes here, the audience is a login server.
        claims = jwt.decode(str(form["assertion"]), self.public_pem, algorithms=["RS256"], audience=self.audience,
                            options={"verify_exp": False, "verify_iat": False})  # tests inject clocks
        self.logins.append({"form": form, "claims": claims})
        if self.gate is not None:
            await self.gate.wait()
        if self.login_answer is not None:
            return self.login_answer()
        return web.json_response({"access_token": "core-token", "instance_url": self.url, "token_type": "Bearer"})

    async def exchange(self, request: web.Request) -> web.StreamResponse:
        self.exchanges.append({k: str(v) for k, v in (await request.post()).items()})
        if self.exchange_answers:
            return self.exchange_answers.pop(0)
        return web.json_response({"access_token": f"dc-{len(self.exchanges)}", "instance_url": "tenant.example.com",
                                  "expires_in": self.expires_in})


@pytest.fixture
async def org(key_files: tuple[Path, bytes]) -> AsyncIterator[FakeOrg]:
    fake = FakeOrg(key_files[1])
    app = web.Application()
    app.router.add_post("/services/oauth2/token", fake.login)
    app.router.add_post("/services/a360/token", fake.exchange)
    async with TestServer(app, host="127.0.0.1") as server:
        fake.url = str(server.make_url("")).rstrip("/")
        yield fake


def provider(org: FakeOrg, key_files: tuple[Path, bytes], session: Any, **kw: Any) -> TokenProvider:
    now = kw.pop("now", time.time)
    return TokenProvider(make_config(org.url, key_files[0], **kw), session, now=now)


async def test_assertion_claims_and_exchange_form(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    tokens = provider(org, key_files, session, dataspace="solar")
    before = time.time()
    tok = await tokens.token()
    claims = org.logins[0]["claims"]
    assert org.logins[0]["form"]["grant_type"] == JWT_GRANT
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("solar-agent", "agent@solar.example",
                                                             "https://login.salesforce.com")
    assert int(before) <= claims["iat"] <= time.time()
    assert 0 < claims["exp"] - claims["iat"] <= 170
    assert org.exchanges == [{"grant_type": CDP_GRANT, "subject_token": "core-token",
                              "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                              "dataspace": "solar"}]
    assert tok.instance_url == "https://tenant.example.com"  # bare host from the exchange gets a scheme
    assert "dc-1" not in repr(tok) and tok.header == {"Authorization": "Bearer dc-1"}


async def test_audience_is_its_own_setting(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    org.audience = "https://test.salesforce.com"
    await provider(org, key_files, session, audience="https://test.salesforce.com/").token()
    assert org.logins[0]["claims"]["aud"] == "https://test.salesforce.com"  # sent without the trailing slash


async def test_single_flight(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    tokens = provider(org, key_files, session)
    org.gate = asyncio.Event()
    waiters = [asyncio.create_task(tokens.token()) for _ in range(20)]
    while not org.logins:
        await asyncio.sleep(0)  # yield until the first fetch reached the server
    org.gate.set()
    got = await asyncio.gather(*waiters)
    assert len(org.logins) == 1 and len({t.access_token for t in got}) == 1


async def test_cached_until_margin_then_refreshed(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    clock = [1_000_000.0]
    org.expires_in = 1000  # margin = min(300, 500) = 300 -> refresh after 700 s
    tokens = provider(org, key_files, session, now=lambda: clock[0])
    first = await tokens.token()
    clock[0] += 699
    assert (await tokens.token()) is first
    clock[0] += 2
    second = await tokens.token()
    assert second.access_token != first.access_token and len(org.exchanges) == 2
    tokens.invalidate(first)  # stale: someone already replaced it
    assert (await tokens.token()) is second
    tokens.invalidate(second)
    assert (await tokens.token()).access_token == "dc-3"


async def test_login_answers_html(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    org.login_answer = lambda: web.Response(text="<html>Login</html>", content_type="text/html")
    with pytest.raises(AuthError) as info:
        await provider(org, key_files, session).token()
    assert "text/html" in info.value.message and "login_url" in (info.value.hint or "")


async def test_exchange_html_reruns_login_once(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    org.exchange_answers = [web.Response(text="<html>redirect</html>", content_type="text/html")]
    tok = await provider(org, key_files, session).token()
    assert tok.access_token == "dc-2" and len(org.logins) == 2
    org.exchange_answers = [web.Response(text="<html/>", content_type="text/html") for _ in range(2)]
    with pytest.raises(AuthError, match="text/html that is not JSON"):
        await provider(org, key_files, session).token()


@pytest.mark.parametrize(("status", "headers", "error"), [
    (503, {}, RetryableError), (500, {}, RetryableError), (429, {"Retry-After": "12"}, ThrottledError),
])
async def test_login_transient(org: FakeOrg, key_files: tuple[Path, bytes], session: Any,
                               status: int, headers: dict[str, str], error: type[Exception]) -> None:
    org.login_answer = lambda: web.Response(status=status, text="busy", headers=headers)
    with pytest.raises(error) as info:
        await provider(org, key_files, session).token()
    if isinstance(info.value, ThrottledError):
        assert info.value.retry_after == 12.0


async def test_exchange_refused_with_description(org: FakeOrg, key_files: tuple[Path, bytes], session: Any) -> None:
    org.exchange_answers = [web.json_response({"error": "invalid_grant", "error_description": "user hasn't approved "
                                               "this consumer"}, status=400)]
    with pytest.raises(AuthError) as info:
        await provider(org, key_files, session).token()
    assert info.value.error_description == "user hasn't approved this consumer"
    assert "permission set" in (info.value.hint or "")


async def test_connection_refused_is_retryable(key_files: tuple[Path, bytes], session: Any,
                                               unused_tcp_port: int) -> None:
    cfg = make_config(f"http://127.0.0.1:{unused_tcp_port}", key_files[0])
    with pytest.raises(RetryableError):
        await TokenProvider(cfg, session).token()


def test_plain_http_login_refused_for_remote_hosts(key_files: tuple[Path, bytes]) -> None:
    with pytest.raises(AuthError) as info:
        TokenProvider(make_config("http://login.salesforce.com", key_files[0]), None)  # type: ignore[arg-type]
    assert "https" in (info.value.hint or "")
