"""The streaming client against the emulator over real HTTP: classification, re-auth, bisection."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from agent.datacloud import StreamingClient
from agent.emulator import Emulator, EmulatorSettings, Faults
from agent.errors import AuthError, DataCloudError, RejectedError, RetryableError, ThrottledError
from tests.datacloud.conftest import Clients, make_rows


async def test_send_202_lands(emu: Emulator, clients: Clients) -> None:
    rows = make_rows(20)
    await clients.streaming.send([p for _, p in rows])
    await emu.wait_landed(20, timeout=5)
    assert emu.store.keys() == {k for k, _ in rows}
    landed = emu.store.get(rows[3][0])
    assert landed == json.loads(rows[3][1])  # the JSON body round-trips field for field


async def test_bisection_isolates_two_bad_records(emu: Emulator, clients: Clients) -> None:
    rows = make_rows(500, bad=frozenset({17, 333}))
    result = await clients.streaming.deliver(rows)
    assert set(result.rejected) == {rows[17][0], rows[333][0]}
    assert all("ac_power_w" in reason or "Number" in reason or "number" in reason
               for reason in result.rejected.values()), result.rejected
    assert len(result.accepted_ids) == 498 and len(set(result.accepted_ids)) == 498
    await emu.wait_landed(498, timeout=5)
    assert emu.store.keys() == set(result.accepted_ids)
    assert result.requests < 60  # bisection, not one request per record


async def test_a_429_midway_through_a_bisection_keeps_what_was_settled(emu: Emulator, clients: Clients) -> None:
    # 8 rows, the first bad: [0-7] 400, [0-3] 400, [0-1] 400, [0] 400 (rejected), [1] 202, [2-3] 202,
    # then [4-7] is throttled. The settled part is returned with the error, for the drain to ack and
    # dead-letter; only rows 4-7 go back. Every request after the first waits for the caller's pace.
    rows = make_rows(8, bad=frozenset({0}))
    paced = 0

    async def pace() -> None:
        nonlocal paced
        paced += 1
        if paced == 6:
            emu.set_faults(Faults(status_rates={429: 1.0}, retry_after_seconds=2.0))
    result = await clients.streaming.deliver(rows, pace=pace)
    assert isinstance(result.error, ThrottledError) and result.error.retry_after == 2.0
    assert set(result.rejected) == {rows[0][0]}
    assert sorted(result.accepted_ids) == sorted(k for k, _ in rows[1:4])
    assert result.requests == 7 and paced == 6
    await emu.wait_landed(3, timeout=5)
    assert emu.store.keys() == set(result.accepted_ids)


async def test_413_is_split_not_lost(emu: Emulator, key_files: tuple[Path, bytes],
                                     session: aiohttp.ClientSession) -> None:
    c = Clients(emu, key_files[0], session)
    greedy = StreamingClient(c.tokens, session, "solar_agent", "solar_panel_event", max_body_bytes=1_000_000)
    rows = make_rows(1500)  # ~ 0.6 MB in one body: the emulator answers 413
    result = await greedy.deliver(rows)
    assert not result.rejected and len(result.accepted_ids) == 1500
    await emu.wait_landed(1500, timeout=5)


async def test_single_record_413_is_rejected_with_reason(emu: Emulator, clients: Clients) -> None:
    huge = json.loads(make_rows(1)[0][1])
    huge["operating_state"] = "x" * 250_000
    eid = huge["event_id"]
    result = await clients.streaming.deliver([(eid, json.dumps(huge).encode())])
    assert list(result.rejected) == [eid] and "body limit" in result.rejected[eid]


async def test_401_reauthenticates_once(emu: Emulator, clients: Clients) -> None:
    await clients.streaming.send([make_rows(1)[0][1]])
    assert clients.tokens.fetches == 1
    emu.set_faults(Faults(expire_tokens=True))
    await clients.streaming.send([make_rows(1)[0][1]])
    assert clients.tokens.fetches == 2
    await emu.wait_landed(2, timeout=5)


async def test_persistent_401_raises_auth_error(emu: Emulator, clients: Clients) -> None:
    emu.set_faults(Faults(status_rates={401: 1.0}))
    with pytest.raises(AuthError) as info:
        await clients.streaming.send([make_rows(1)[0][1]])
    assert info.value.status == 401 and info.value.hint
    assert clients.tokens.fetches == 2  # one re-auth, not a loop


@pytest.mark.parametrize("retry_after", [3.0, None])
async def test_429_throttled(emu: Emulator, clients: Clients, retry_after: float | None) -> None:
    emu.set_faults(Faults(status_rates={429: 1.0}, retry_after_seconds=retry_after))
    with pytest.raises(ThrottledError) as info:
        await clients.streaming.deliver(make_rows(3))
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize("status", [500, 503])
async def test_5xx_retryable(emu: Emulator, clients: Clients, status: int) -> None:
    emu.set_faults(Faults(status_rates={status: 1.0}))
    with pytest.raises(RetryableError) as info:
        await clients.streaming.deliver(make_rows(3))
    assert info.value.status == status


async def test_connection_reset_retryable(emu: Emulator, clients: Clients) -> None:
    await clients.tokens.token()
    emu.set_faults(Faults(reset_rate=1.0))
    with pytest.raises(RetryableError):
        await clients.streaming.send([make_rows(1)[0][1]])
    assert emu.store.count() == 0


async def test_outage_during_login_is_retryable(emu: Emulator, clients: Clients) -> None:
    emu.set_faults(Faults(outage=True))
    with pytest.raises(RetryableError):
        await clients.tokens.token()


async def test_lost_response_then_resend_upserts(emu: Emulator, clients: Clients) -> None:
    rows = make_rows(10)
    await clients.tokens.token()
    emu.set_faults(Faults(lose_response_rate=1.0))
    with pytest.raises(RetryableError):
        await clients.streaming.deliver(rows)
    emu.set_faults(Faults())
    result = await clients.streaming.deliver(rows)
    assert len(result.accepted_ids) == 10
    await emu.wait_landed(10, timeout=5)
    counts = emu.store.write_counts()
    assert emu.store.count() == 10 and all(counts[k] == 2 for k, _ in rows)


async def test_validate_and_delete(emu: Emulator, clients: Clients) -> None:
    rows = make_rows(250, bad=frozenset({5}))
    report = await clients.streaming.validate([p for _, p in rows[:10]])
    assert len(report) == 1 and rows[5][0] in json.dumps(report)
    assert await clients.streaming.validate([p for _, p in rows[6:10]]) == []
    assert emu.store.count() == 0  # the dry run stores nothing
    good = rows[:5] + rows[6:]
    await clients.streaming.deliver(good)
    await emu.wait_landed(249, timeout=5)
    before = emu.stats.count("stream_delete")
    await clients.streaming.delete([k for k, _ in good[:240]])
    assert emu.stats.count("stream_delete") - before == 2  # 200 + 40
    assert emu.store.keys() == {k for k, _ in good[240:]}


async def test_unknown_object_is_config_error_not_rejection(emu: Emulator, clients: Clients,
                                                             session: aiohttp.ClientSession) -> None:
    wrong = StreamingClient(clients.tokens, session, "no_such_source", "solar_panel_event")
    with pytest.raises(DataCloudError) as info:
        await wrong.deliver(make_rows(2))
    assert info.value.status == 404 and not isinstance(info.value, RejectedError)
    assert "source_name" in (info.value.hint or "")


async def test_rate_limit_of_the_emulator_is_a_throttle(key_files: tuple[Path, bytes],
                                                        session: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorSettings(host="127.0.0.1", public_key_pem=key_files[1], rate_limit_rps=2)) as e:
        c = Clients(e, key_files[0], session)
        with pytest.raises(ThrottledError) as info:
            for _ in range(20):
                await c.streaming.send([make_rows(1)[0][1]])
        assert info.value.retry_after is not None and info.value.retry_after >= 1
