"""Appends that wait ``commit_interval_ms`` to share one commit (the SD-card wear fix, issue #14).

The contract: ``enqueue`` settles its future at a commit made at most ``commit_interval_ms`` later
(sooner on ``commit_soon``, an ``append``, ``flush`` or close), and that commit holds every record
queued meanwhile; ``append`` still commits at once; other operations never wait for a lingering
group. A linger of a minute makes "committed later" visible without any timing assumption.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema

LONG_MS = 60_000          # no group commits on its own while a test runs


def _records(n: int, start: int = 0) -> list[EncodedRecord]:
    builder = RecordBuilder(load_schema(), "site-linger", "001LINGER", "0.1.0")
    return [builder.encode(Reading(f"inv{i % 3}", 1_700_000_000_000 + (start + i) * 1000, "test",
                                   {"ac_power_w": float(i)})) for i in range(n)]


def _box(tmp_path: Path, ms: int = LONG_MS) -> Outbox:
    return Outbox(OutboxConfig(path=tmp_path / "o.db", commit_interval_ms=ms))


async def test_enqueued_records_share_one_commit_when_asked(tmp_path: Path) -> None:
    async with _box(tmp_path) as box:
        futs = [box.enqueue(_records(5, start=10 * k)) for k in range(8)]
        # Reads run while the group lingers (a minute): they see nothing of it yet.
        stats = await asyncio.wait_for(box.stats(), 10)
        assert stats.rows == 0 and not any(f.done() for f in futs)
        assert box.append_commits == 0
        box.commit_soon()
        results = await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert [r.appended for r in results] == [5] * 8
        assert box.append_commits == 1
        assert (await box.stats()).rows == 40


async def test_append_commits_at_once_and_takes_the_waiting_group(tmp_path: Path) -> None:
    async with _box(tmp_path) as box:
        waiting = box.enqueue(_records(3))
        result = await asyncio.wait_for(box.append(_records(2, start=100)), 10)
        assert result.appended == 2
        assert waiting.done() and waiting.result().appended == 3
        assert box.append_commits == 1 and (await box.stats()).rows == 5


async def test_flush_and_close_commit_what_is_queued(tmp_path: Path) -> None:
    box = _box(tmp_path)
    await box.open()
    first = box.enqueue(_records(4))
    await asyncio.wait_for(box.flush(), 10)
    assert first.done() and (await box.stats()).rows == 4
    second = box.enqueue(_records(6, start=50))
    await asyncio.wait_for(box.close(), 10)          # a stop never strands queued readings
    assert second.done() and second.result().appended == 6
    async with _box(tmp_path) as again:
        assert (await again.stats()).rows == 10


async def test_the_group_commits_on_its_own_within_the_interval(tmp_path: Path) -> None:
    async with _box(tmp_path, ms=200) as box:
        futs = [box.enqueue(_records(2, start=10 * k)) for k in range(5)]
        # Nobody asks for the commit: the linger itself ends (generous deadline for a busy machine).
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert box.append_commits == 1 and (await box.stats()).rows == 10


async def test_without_a_linger_operations_keep_submission_order(tmp_path: Path) -> None:
    async with _box(tmp_path, ms=0) as box:
        fut = box.enqueue(_records(3))
        lease = await box.lease(100, 10**9)      # queued after the append: it sees the append
        assert lease is not None and lease.count == 3
        assert (await asyncio.wait_for(fut, 10)).appended == 3


async def test_errors_reach_the_enqueued_future(tmp_path: Path) -> None:
    from agent.errors import OutboxFullError

    cfg = OutboxConfig(path=tmp_path / "o.db", commit_interval_ms=LONG_MS, max_bytes=1000,
                       when_full="reject_new")
    async with Outbox(cfg) as box:
        fut = box.enqueue(_records(5))               # ~600 B each: over the cap
        box.commit_soon()
        with pytest.raises(OutboxFullError):
            await asyncio.wait_for(fut, 10)
        assert (await box.stats()).rows == 0


async def test_duplicates_in_one_group_count_like_separate_appends(tmp_path: Path) -> None:
    recs = _records(6)
    async with _box(tmp_path) as box:
        await box.append(recs[:2])                       # already queued: 0 and 1
        first = box.enqueue([recs[1], recs[2], recs[3]])  # 1 is a duplicate
        second = box.enqueue([recs[3], recs[4], recs[4], recs[5]])  # 3 came first in the group; 4 twice
        box.commit_soon()
        a, b = await asyncio.wait_for(asyncio.gather(first, second), 10)
        assert (a.appended, a.duplicates) == (2, 1)
        assert (b.appended, b.duplicates) == (2, 2)
        stats = await box.stats()
        assert stats.rows == 6 and stats.bytes == sum(len(r.payload) for r in recs)


async def test_a_failed_wal_sync_is_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from agent.errors import OutboxFatalError

    async with _box(tmp_path, ms=0) as box:
        await box.append(_records(1))
        real_fsync = os.fsync

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        # The syncer thread's fsync of the WAL (synchronous=full) is what an append waits for.
        monkeypatch.setattr("agent.outbox.store.os.fsync", failing)
        with pytest.raises(OutboxFatalError, match="cannot sync the WAL"):
            await asyncio.wait_for(box.append(_records(1, start=10)), 10)
        monkeypatch.setattr("agent.outbox.store.os.fsync", real_fsync)
        with pytest.raises(OutboxFatalError):
            await box.stats()                         # never guess past a fatal error


async def test_a_heavy_group_commits_without_waiting_out_the_interval(tmp_path: Path) -> None:
    from agent.outbox.store import GROUP_COMMIT_BYTES

    recs = _records(400)
    size = len(recs[0].payload)
    per_call = 10
    calls = -(-GROUP_COMMIT_BYTES // (size * per_call))      # just enough to pass the threshold
    async with _box(tmp_path) as box:                          # a minute of linger
        futs = [box.enqueue(recs[i * per_call:(i + 1) * per_call]) for i in range(calls)]
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert box.append_commits == 1 and (await box.stats()).rows == calls * per_call
        light = box.enqueue(recs[calls * per_call:calls * per_call + 1])   # a light one lingers again
        stats = await box.stats()
        assert not light.done() and stats.rows == calls * per_call
        await box.flush()
        assert light.done()
