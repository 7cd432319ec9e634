"""Hypothesis: any sequence of sync, unsync, reads, admits, releases and reboots never loses a reading
and never queues a time before the floor or outside [read time, admit time]."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import NOT_BEFORE_MS
from agent.config import OutboxConfig
from agent.holdback import DEFAULT_MAX_AGE_MS, HoldBack
from agent.outbox import Outbox
from agent.records import Reading, decode_json
from tests.clock.conftest import BUILDER, STALE_MS, Host, holdback

_ISO = "%Y-%m-%dT%H:%M:%S"

ops = st.one_of(
    st.tuples(st.just("read"), st.integers(1, 3)),
    st.tuples(st.just("admit"), st.just(0)),
    st.tuples(st.just("advance"), st.sampled_from([1, 250, 5_000, 90_000, DEFAULT_MAX_AGE_MS, 3_600_000])),
    st.tuples(st.just("sync"), st.just(0)),
    st.tuples(st.just("unsync"), st.just(0)),
    st.tuples(st.just("release"), st.just(0)),
    st.tuples(st.just("lease"), st.just(0)),
    st.tuples(st.just("reboot"), st.booleans()),   # True: the clock comes back at a stale saved time
)


@dataclass
class _Model:
    host: Host
    outbox: Outbox
    hb: HoldBack
    n: int = 0
    boots: int = 0
    pending: list[tuple[Reading, int]] = field(default_factory=list)   # (reading, true read time)
    read_at: dict[str, int] = field(default_factory=dict)              # admitted device -> true read time
    admitted_at: dict[str, int] = field(default_factory=dict)          # admitted device -> true admit time


def _parse_ms(date_time: str) -> int:
    import calendar
    import time

    secs = calendar.timegm(time.strptime(date_time[:19], _ISO))
    return secs * 1000 + int(date_time[20:23])


async def _check(m: _Model) -> None:
    queued = {}
    for row in await m.outbox.peek(10**6):
        rec = decode_json(row.payload)
        queued[str(rec["device_id"])] = _parse_ms(str(rec["date_time"]))
    dead = {str(decode_json(d.payload)["device_id"]) for d in await m.outbox.dead_letters(10**6)}
    held = await m.outbox.held_count()
    assert not queued.keys() & dead
    assert (queued.keys() | dead) <= m.read_at.keys()
    assert len(queued) + len(dead) + held == len(m.read_at), "a reading was lost or duplicated"
    for dev, t in queued.items():
        assert t >= NOT_BEFORE_MS, (dev, t)
        assert m.read_at[dev] <= t <= m.admitted_at[dev], (dev, t, m.read_at[dev], m.admitted_at[dev])


async def _scenario(path: Path, stale: bool, steps: list[tuple[str, object]]) -> None:
    cfg = OutboxConfig(path=path, synchronous="normal", min_free_bytes=0)
    host = Host(wall_at_boot=STALE_MS if stale else 0)
    outbox = Outbox(cfg, now_ms=host.wall)
    await outbox.open()
    m = _Model(host, outbox, holdback(outbox, host))
    try:
        for op, arg in steps:
            if op == "read":
                for _ in range(int(arg)):  # type: ignore[call-overload]
                    m.pending.append((host.read(f"d{m.n}", float(m.n)), host.true_ms))
                    m.n += 1
            elif op == "admit":
                batch, m.pending = m.pending, []
                ready, _held = await m.hb.admit([r for r, _ in batch])
                for r, t in batch:
                    m.read_at[r.device_id] = t
                    m.admitted_at[r.device_id] = host.true_ms
                if ready:
                    await outbox.append([BUILDER.encode(r) for r in ready])
            elif op == "advance":
                ms = int(arg)  # type: ignore[call-overload]
                if m.pending:   # the contract: a source hands a reading over within max_age_ms
                    ms = min(ms, DEFAULT_MAX_AGE_MS - (host.true_ms - min(t for _, t in m.pending)))
                host.advance(ms)
            elif op == "sync":
                host.sync()
            elif op == "unsync":
                host.unsync()
            elif op == "release":
                await m.hb.release()
            elif op == "lease":
                lease = await outbox.lease(10**6, 10**9)
                if lease is not None:
                    await outbox.nack(lease, 0)
            elif op == "reboot":
                m.pending.clear()      # readings still inside a source die with the process
                await outbox.close()
                m.boots += 1
                host.reboot(f"boot-{m.boots}", wall_at_boot=STALE_MS if arg else 0)
                outbox = m.outbox = Outbox(cfg, now_ms=host.wall)
                await outbox.open()
                m.hb = holdback(outbox, host)
            await _check(m)
        host.sync()
        await m.hb.release()
        await _check(m)
        # Once synced, only rows of earlier boots can remain anywhere but the queue... and none stay held.
        assert await outbox.held_count() == 0
    finally:
        await outbox.close()


@settings(max_examples=150, deadline=None)
@given(st.booleans(), st.lists(ops, max_size=25))
def test_no_reading_lost_and_no_wrong_time_queued(stale: bool, steps: list[tuple[str, object]]) -> None:
    """``stale``: the first boot's clock shows a saved time past the floor (fake-hwclock), not 1970."""
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(Path(tmp) / "outbox.db", stale, steps))
