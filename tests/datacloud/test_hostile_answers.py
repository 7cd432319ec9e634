"""Hostile Data Cloud answers, over real HTTP from the emulator (``Faults.answers``): every call of
every client turns each odd answer into one of our ``DataCloudError``s with a reason, or (when the
answer still proves acceptance) into success. Never a raw KeyError/TypeError/ValueError, never a hang.

What the documents promise, which the clients check: token answers are JSON objects with
``access_token``/``instance_url`` ([GS], datacloud-api.md §1); streaming insert and delete answer
202 ``{"accepted": true}`` ([INS], [DEL]); a refusal comes in the JSON error envelope ([VAL], §5); a
bulk job answer is the job object with ``id`` and ``state`` ([CJ], [GJI]); an upload answers 202
([UJD]) or 201 ([BTW]).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.datacloud import BulkClient, StreamingClient, TokenProvider
from agent.datacloud._http import MAX_RETRY_AFTER_SECONDS, MIN_RETRY_AFTER_SECONDS
from agent.emulator import Emulator, EmulatorSettings, Faults
from agent.emulator.settings import ANSWERS_AFTER, ANSWERS_BEFORE
from agent.errors import AuthError, DataCloudError, RejectedError, RetryableError, ThrottledError
from tests.datacloud.conftest import make_config, make_rows

HEADER = b"event_id,date_time,site_id\n"


class Target:
    """The clients against one emulator, and one call per endpoint."""

    def __init__(self, emu: Emulator, key: Path, session: aiohttp.ClientSession, timeout: float) -> None:
        self.emu, self.key, self.session, self.timeout = emu, key, session, timeout
        self.tokens = self.fresh_tokens()
        self.streaming = StreamingClient(self.tokens, session, "solar_agent", "solar_panel_event")
        self.bulk = BulkClient(self.tokens, session, "solar_agent", "solar_panel_event")
        self.job_id = ""

    def fresh_tokens(self) -> TokenProvider:
        return TokenProvider(make_config(self.emu.url, self.key, timeout_seconds=self.timeout), self.session)

    async def prepare(self) -> None:
        """A token and an Open job, fetched while the emulator still answers normally."""
        await self.tokens.token()
        self.job_id = str((await self.bulk.create_job())["id"])

    def call(self, endpoint: str) -> Callable[[], Awaitable[Any]]:
        rows = make_rows(3)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "oauth_token": lambda: self.fresh_tokens().token(),
            "a360_token": lambda: self.fresh_tokens().token(),
            "stream_insert": lambda: self.streaming.send([p for _, p in rows]),
            "stream_test": lambda: self.streaming.validate([p for _, p in rows]),
            "stream_delete": lambda: self.streaming.delete([k for k, _ in rows]),
            "job_create": lambda: self.bulk.create_job(),
            "job_list": lambda: self.bulk.list(),
            "job_get": lambda: self.bulk.get(self.job_id),
            "job_patch": lambda: self.bulk.close(self.job_id),
            "job_upload": lambda: self.bulk.upload(self.job_id, HEADER + b"a,2024-05-01T00:00:00Z,s\n"),
            "job_delete": lambda: self.bulk.delete_job(self.job_id),
        }
        return calls[endpoint]


@pytest.fixture
async def target(key_files: tuple[Path, bytes], session: aiohttp.ClientSession) -> AsyncIterator[Target]:
    # Jobs: the test creates one per case, plus what odd create answers leave behind.
    settings = EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1], max_concurrent_jobs=1000,
                                max_jobs_per_hour=1000)
    async with Emulator(settings) as emu:
        t = Target(emu, key_files[0], session, timeout=1.0)
        await t.prepare()
        yield t


# Answers that still prove acceptance: the request took effect and the answer's status says so.
# Streaming insert/delete answer 202 (a 202 counts unless its body says "accepted": false or
# something else than true), upload 202, /actions/test any 2xx with a JSON or empty body, job delete 204.
_STILL_FINE = {
    ("stream_insert", k) for k in ("truncated", "huge", "list", "nulls", "missing")
} | {
    ("stream_delete", k) for k in ("truncated", "huge", "list", "nulls", "missing")
} | {
    ("stream_test", k) for k in ("list", "nulls", "missing", "wrong_types", "empty")
} | {
    ("job_upload", k) for k in ANSWERS_AFTER
} | {
    # A 204 has no body to break, except "huge", which the emulator can only send with a 200.
    ("job_delete", k) for k in ANSWERS_AFTER - {"huge"}
}
# Answers that are still wrong after everything, with the error they must give.
_ERRORS: dict[str, type[DataCloudError]] = {"hang": RetryableError, "throttle": ThrottledError}


ENDPOINTS = ["oauth_token", "a360_token", "stream_insert", "stream_test", "stream_delete", "job_create",
             "job_list", "job_get", "job_patch", "job_upload", "job_delete"]
KINDS = sorted((ANSWERS_BEFORE | ANSWERS_AFTER) - {"hang"})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_every_odd_answer_is_one_of_our_errors(target: Target, endpoint: str, kind: str) -> None:
    if endpoint == "job_delete" and kind in ANSWERS_AFTER:
        # This one takes effect before the answer breaks: the job must be in a state that allows it.
        await target.bulk.abort(target.job_id)
    target.emu.set_faults(Faults(answers={endpoint: kind}, huge_answer_bytes=8 << 20))
    started = time.monotonic()
    try:
        async with asyncio.timeout(20):
            result = await target.call(endpoint)()
    except DataCloudError as exc:
        assert (endpoint, kind) not in _STILL_FINE, f"{endpoint}/{kind} refused an answer that proves acceptance"
        assert exc.message, "an error without a reason"
        assert not isinstance(exc, RejectedError), f"{endpoint}/{kind}: rows would be dead-lettered for a " \
                                                   f"broken answer: {exc}"
        if kind in _ERRORS:
            assert isinstance(exc, _ERRORS[kind]), exc
        if endpoint in ("oauth_token", "a360_token") and kind not in _ERRORS:
            assert isinstance(exc, AuthError), exc
    else:
        assert (endpoint, kind) in _STILL_FINE, f"{endpoint}/{kind} was taken as success: {result!r}"
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("endpoint", ["oauth_token", "stream_insert", "job_create", "job_upload"])
async def test_a_hung_answer_times_out(target: Target, endpoint: str) -> None:
    target.emu.set_faults(Faults(answers={endpoint: "hang"}))
    started = time.monotonic()
    with pytest.raises(RetryableError) as info:
        await target.call(endpoint)()
    assert "Timeout" in info.value.message
    assert time.monotonic() - started < 5  # timeout_seconds = 1


async def test_a_huge_answer_is_never_read_whole(target: Target) -> None:
    """64 MiB of JSON answered to a job creation: the client stops at its cap and says so."""
    target.emu.set_faults(Faults(answers={"job_create": "huge"}))
    with pytest.raises(DataCloudError, match="longer than 1_048_576 bytes"):
        await target.bulk.create_job()


async def test_a_proxy_400_never_dead_letters_rows(target: Target) -> None:
    target.emu.set_faults(Faults(answers={"stream_insert": "html_400"}))
    with pytest.raises(DataCloudError) as info:
        await target.streaming.deliver(make_rows(4))
    assert not isinstance(info.value, RejectedError)
    assert "text/html" in info.value.message and "proxy" in (info.value.hint or "")


async def test_a_captive_portal_200_is_not_delivery(target: Target) -> None:
    target.emu.set_faults(Faults(answers={"stream_insert": "html"}))
    with pytest.raises(DataCloudError, match="not 202 Accepted"):
        await target.streaming.deliver(make_rows(2))
    target.emu.set_faults(Faults(answers={"job_upload": "empty"}))
    with pytest.raises(DataCloudError, match="not 201/202"):
        await target.bulk.upload(target.job_id, HEADER)
    assert target.emu.store.count() == 0


@pytest.mark.parametrize(("header", "expected"), [
    ("-5", None), ("abc", None), ("1e999", None), ("NaN", None), ("", None),
    ("7", 7.0), ("0", MIN_RETRY_AFTER_SECONDS), ("2.5", 2.5),
    ("1000000000000", MAX_RETRY_AFTER_SECONDS), ("9" * 5000, MAX_RETRY_AFTER_SECONDS),
    ("Wed, 21 Oct 2015 07:28:00 GMT", MIN_RETRY_AFTER_SECONDS),   # in the past
    ("Fri, 01 Jan 9999 00:00:00 GMT", MAX_RETRY_AFTER_SECONDS),   # far ahead
])
@pytest.mark.parametrize("endpoint", ["oauth_token", "stream_insert", "job_create"])
async def test_absurd_retry_after_is_clamped_or_ignored(target: Target, endpoint: str, header: str,
                                                        expected: float | None) -> None:
    target.emu.set_faults(Faults(answers={endpoint: "throttle"}, retry_after_header=header))
    with pytest.raises(ThrottledError) as info:
        await target.call(endpoint)()
    assert info.value.retry_after == expected


async def test_injected_429_with_a_raw_retry_after(target: Target) -> None:
    target.emu.set_faults(Faults(status_rates={429: 1.0}, retry_after_header="99999999"))
    with pytest.raises(ThrottledError) as info:
        await target.streaming.send([make_rows(1)[0][1]])
    assert info.value.retry_after == MAX_RETRY_AFTER_SECONDS


async def test_a_sane_answer_after_the_storm(target: Target) -> None:
    """The clients keep no state from odd answers: the next normal answer works."""
    for kind in KINDS:
        target.emu.set_faults(Faults(answers={"stream_insert": kind}, huge_answer_bytes=1 << 20))
        with contextlib.suppress(DataCloudError):
            await target.streaming.send([make_rows(1)[0][1]])
    target.emu.set_faults(Faults())
    rows = make_rows(3)
    await target.streaming.send([p for _, p in rows])
    await target.emu.wait_landed(1, timeout=5)
    assert {k for k, _ in rows} <= target.emu.store.keys()
