"""The drain against a real outbox file and the emulator over real HTTP: lanes, flush rules, faults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from agent.bulk_lane import BulkLane
from agent.config import DataCloudConfig, DrainConfig, OutboxConfig
from agent.datacloud import BulkClient, Pacer, StreamingClient, TokenProvider
from agent.drain import Drain
from agent.emulator import Emulator, Faults
from agent.outbox import Outbox
from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema
from tests.peers.emulator import CLIENT_ID, USERNAME, running_emulator
from tests.waiting import wait_for as until

SCHEMA = load_schema()
BUILDER = RecordBuilder(SCHEMA, "site-d", "001DRAIN")


def records(n: int, device: str = "inv-1", start_ms: int = 1_750_000_000_000) -> list[EncodedRecord]:
    return [BUILDER.encode(Reading(device, start_ms + i * 1000, "sunspec-tcp", {"ac_power_w": float(i)}))
            for i in range(n)]


async def _empty(outbox: Outbox) -> bool:
    stats = await outbox.stats()
    return stats.rows == 0 and stats.leased == 0


async def _no_jobs(outbox: Outbox) -> bool:
    return await outbox.jobs() == []


SEED_429 = 3   # a sequence of 429s that lands one midway through the bisection


@dataclass
class Rig:
    emu: Emulator
    outbox: Outbox
    drain: Drain
    task: asyncio.Task[None]

    async def append(self, recs: list[EncodedRecord]) -> None:
        res = await self.outbox.append(recs)
        self.drain.notify_appended(res.appended, sum(len(r.payload) for r in recs))


def drain_config(**kw: float) -> DrainConfig:
    base = dict(flush_interval_seconds=0.3, bulk_after_seconds=3600.0, bulk_min_rows=1_000_000,
                reconnect_jitter_seconds=0.5,
                max_requests_per_second=50.0, retry_max_seconds=0.5)
    base.update(kw)
    return DrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def make_rig(tmp_path: Path) -> Callable[..., object]:
    @__import__("contextlib").asynccontextmanager
    async def make(cfg: DrainConfig, **emu_overrides: object) -> AsyncIterator[Rig]:
        async with running_emulator(tmp_path, **emu_overrides) as emu, \
                Outbox(OutboxConfig(path=tmp_path / "outbox.db")) as outbox, \
                aiohttp.ClientSession() as session:
            dc = DataCloudConfig(login_url=emu.url, client_id=CLIENT_ID, username=USERNAME,
                                 private_key_path=tmp_path / "jwt.key", source_name="solar_agent",
                                 timeout_seconds=5.0)
            tokens = TokenProvider(dc, session)
            stream = StreamingClient(tokens, session, "solar_agent", "solar_panel_event",
                                     max_body_bytes=cfg.batch_max_bytes)
            bulk = BulkLane(BulkClient(tokens, session, "solar_agent", "solar_panel_event"), outbox, SCHEMA,
                            max_file_bytes=cfg.bulk_file_max_bytes, tmp_dir=tmp_path, poll_initial_seconds=0.05)
            drain = Drain(outbox, stream, bulk, cfg, pacer=Pacer(cfg.max_requests_per_second))
            task = asyncio.create_task(drain.run())
            try:
                yield Rig(emu, outbox, drain, task)
            finally:
                drain.stop()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return make


async def test_full_batch_flushes_before_the_interval(make_rig) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(drain_config(flush_interval_seconds=600, batch_max_bytes=20_000)) as rig:
        recs = records(60)  # ~45 KB: more than two full batches
        await rig.append(recs)
        await rig.emu.wait_landed(60, timeout=10)
        assert rig.emu.store.keys() == {r.event_id for r in recs}
        await until(lambda: _empty(rig.outbox))


async def test_a_partial_batch_waits_for_the_interval(make_rig) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(drain_config(flush_interval_seconds=0.5)) as rig:
        await rig.append(records(3))  # the first flush comes at a random phase of the first interval
        await rig.emu.wait_landed(3, timeout=10)
        t0 = time.monotonic()
        await rig.append(records(3, start_ms=1_760_000_000_000))
        await rig.emu.wait_landed(6, timeout=10)
        assert time.monotonic() - t0 >= 0.45  # not sent at once: a partial batch waits for the interval
        assert rig.drain.stream_state.requests_total == 2


def bad_records(n: int) -> list[EncodedRecord]:
    """Records the connector refuses on their own merit (a string power, an unknown key)."""
    return [EncodedRecord(r.event_id, r.payload.replace(b'"ac_power_w":', b'"ac_power_w":"x","ignored":', 1),
                          r.time_ms) for r in records(n, device="inv-bad")]


async def _good_and_bad_delivered(rig: Rig, n_good: int, n_bad: int, *, at: int,
                                  timeout: float = 10) -> tuple[list[EncodedRecord], list[EncodedRecord]]:
    """Append good records with bad ones at ``at``; wait until the good landed and the outbox is empty
    with the bad ones dead-lettered."""
    good, bad = records(n_good), bad_records(n_bad)
    await rig.append(good[:at] + bad + good[at:])
    await rig.emu.wait_landed(n_good, timeout=timeout)
    await until(lambda: _empty(rig.outbox))
    assert (await rig.outbox.stats()).dead_letters == n_bad
    return good, bad


async def test_rejected_records_go_to_dead_letters_and_the_rest_lands(make_rig) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(drain_config()) as rig:
        good, bad = await _good_and_bad_delivered(rig, 40, 2, at=20)
        letters = await rig.outbox.dead_letters()
        assert {d.event_id for d in letters} == {b.event_id for b in bad}
        assert all(d.reason for d in letters)
        assert rig.emu.store.keys() == {r.event_id for r in good}


async def test_a_throttled_bisection_sends_no_accepted_record_twice(make_rig) -> None:  # type: ignore[no-untyped-def]
    """A bad record among good ones while the org throttles: whatever a bisection settled before a
    429 stays settled (acked, or dead-lettered), so no accepted record is sent again and the bad one
    is not bisected out again from the start (amplified requests at the org's limit)."""
    async with make_rig(drain_config(flush_interval_seconds=0.2)) as rig:
        rig.emu.set_faults(Faults(status_rates={429: 0.15}, seed=SEED_429))
        good, _ = await _good_and_bad_delivered(rig, 64, 1, at=10, timeout=20)
        writes = rig.emu.store.write_counts()
        assert [writes[r.event_id] for r in good] == [1] * 64
        assert rig.emu.stats.injected > 0


async def test_bulk_waits_for_a_backlog_worth_it(make_rig) -> None:  # type: ignore[no-untyped-def]
    """An old but small backlog streams: bulk jobs are an org-wide budget (20 per hour)."""
    cfg = drain_config(flush_interval_seconds=0.2, bulk_after_seconds=0.0)
    async with make_rig(cfg) as rig:
        rig.drain.now_ms = lambda: time.time_ns() // 1_000_000 + 10_000
        await rig.append(records(30))
        await rig.emu.wait_landed(30, timeout=10)
        await until(lambda: rig.drain.stream_state.sent_total == 30)
        assert rig.drain.bulk_state.jobs_total == 0


async def test_a_due_backfill_of_fresh_rows_waits_for_them_to_age(make_rig) -> None:  # type: ignore[no-untyped-def]
    """More fresh rows than bulk_min_rows (held readings released, dead letters requeued): a backfill is
    due but nothing is older than the fresh window. The bulk lane waits; it used to lease again at once,
    about a hundred outbox queries a second for minutes (a core of a Pi)."""
    async with make_rig(drain_config(flush_interval_seconds=600, bulk_min_rows=50)) as rig:
        calls = 0
        first, more = asyncio.Event(), asyncio.Event()
        lease_bulk = rig.outbox.lease_bulk

        async def counting(*args: object, **kw: object) -> object:
            nonlocal calls
            calls += 1
            if calls in (1, 4):
                (first if calls == 1 else more).set()
            return await lease_bulk(*args, **kw)  # type: ignore[arg-type]
        rig.outbox.lease_bulk = counting  # type: ignore[method-assign]
        await rig.append(records(100))
        rig.drain._bulk_kick.set()        # the lane's periodic check, now rather than in 30 s
        await asyncio.wait_for(first.wait(), 10)
        with pytest.raises(TimeoutError):
            # A spinning lane leases again within milliseconds; a waiting one not before its next check.
            await asyncio.wait_for(more.wait(), 1.0)
        assert rig.drain.bulk_state.jobs_total == 0


async def test_throttling_slows_down_and_loses_nothing(make_rig) -> None:  # type: ignore[no-untyped-def]
    async with make_rig(drain_config(batch_max_bytes=20_000)) as rig:
        rig.emu.set_faults(Faults(status_rates={429: 1.0}, retry_after_seconds=1))
        recs = records(50)
        await rig.append(recs)
        await until(lambda: rig.drain.stream_state.failures_total >= 1)
        rate_before = rig.drain.pacer.rate  # type: ignore[union-attr]
        assert rate_before < 50.0  # AIMD: the 429 halved the pace
        rig.emu.set_faults(Faults())
        await rig.emu.wait_landed(50, timeout=10)
        assert max(rig.emu.store.write_counts().values()) == 1


@pytest.mark.parametrize("slow_stats", [False, True])
async def test_long_outage_backfills_the_old_part_in_a_bulk_job(make_rig, slow_stats: bool) -> None:  # type: ignore[no-untyped-def]
    # Small batches: the age trigger wants a backlog worth 20 streaming requests.
    cfg = drain_config(flush_interval_seconds=0.2, bulk_after_seconds=1.0, batch_max_bytes=10_000)
    async with make_rig(cfg) as rig:
        if slow_stats:
            # A slow disk (a loaded machine): the bulk loop is often in the middle of a pass when the
            # stream lane asks it to take the old rows. It used to answer from the state it read
            # before the question, and the stream lane sent a batch of the backlog first.
            stats = rig.outbox.stats

            async def slow() -> object:
                await asyncio.sleep(0.15)     # injected latency, not a wait
                return await stats()
            rig.outbox.stats = slow
        rig.emu.set_faults(Faults(outage=True))
        old = records(500, start_ms=1_750_000_000_000)
        await rig.append(old)

        # The backlog ages past bulk_after_seconds (1 s, which is also the fresh window) during the
        # outage, on the one clock the outbox and the drain share.
        async def aged() -> bool:
            return rig.drain.bulk_due(await rig.outbox.stats())
        await until(aged, 10, "the backlog old enough for a bulk job")
        # A retry leased before that is a full batch of young rows; had the link come back while it
        # was on its way, it would have landed (rightly). Let two more attempts fail: the one in
        # flight is over, and every later attempt is a one-row probe of the aged backlog.
        failed = rig.drain.stream_state.failures_total
        await until(lambda: rig.drain.stream_state.failures_total >= failed + 2, 10, "two more failed attempts")
        rig.emu.set_faults(Faults())
        await rig.emu.wait_landed(500, timeout=20)
        await until(lambda: _empty(rig.outbox))
        # The stream lane probed the link with a row or two; the rest went through the bulk job.
        assert rig.drain.bulk_state.sent_total >= 490
        assert rig.drain.stream_state.sent_total + rig.drain.bulk_state.sent_total == 500
        assert max(rig.emu.store.write_counts().values()) == 1
        await until(lambda: _no_jobs(rig.outbox))  # the journal entry is gone once the rows were acked


async def test_failed_bulk_job_returns_its_rows(make_rig) -> None:  # type: ignore[no-untyped-def]
    cfg = drain_config(flush_interval_seconds=1.0, bulk_after_seconds=0.0, batch_max_bytes=3_000)
    async with make_rig(cfg) as rig:
        rig.emu.set_faults(Faults(fail_next_jobs=1))
        rig.drain.now_ms = lambda: time.time_ns() // 1_000_000 + 10_000  # rows look 10 s old to the drain
        recs = records(100)
        await rig.outbox.append(recs)
        await until(lambda: rig.drain.bulk_state.failures_total >= 1)
        # The failed job's rows went back to the queue and are delivered by the next attempt.
        await rig.emu.wait_landed(100, timeout=20)
        assert rig.emu.store.keys() == {r.event_id for r in recs}
        assert max(rig.emu.store.write_counts().values()) == 1
        await until(lambda: _empty(rig.outbox))
