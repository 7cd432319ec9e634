"""Byte cap and free-space floor under both policies: never a silent loss."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.errors import OutboxFullError
from agent.outbox import Outbox
from tests.outbox.conftest import Clock, make_records

SIZE = len(make_records(1)[0].payload)   # every test record has the same size


async def test_drop_oldest_at_byte_cap(open_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture) -> None:
    recs = make_records(15)
    async with open_outbox(max_bytes=SIZE * 10, when_full="drop_oldest") as ob:
        with caplog.at_level(logging.WARNING, logger="agent.outbox.store"):
            for rec in recs:
                await ob.append([rec])
        st = await ob.stats()
        assert (st.rows, st.bytes, st.dropped_total) == (10, SIZE * 10, 5)
        assert [r.event_id for r in await ob.peek(100)] == [r.event_id for r in recs[5:]]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and "dropped=1" in warning[0] and "hint=" in warning[0]


async def test_drop_oldest_spares_leased_rows(open_outbox: Callable[..., Outbox]) -> None:
    recs = make_records(6)
    async with open_outbox(max_bytes=SIZE * 4) as ob:
        await ob.append(recs[:4])
        lease = await ob.lease(2, 10**9)
        assert lease is not None
        result = await ob.append(recs[4:6])
        assert (result.appended, result.dropped) == (2, 2)
        assert [r.event_id for r in await ob.peek()] == [recs[0].event_id, recs[1].event_id,
                                                         recs[4].event_id, recs[5].event_id]
        # Now everything droppable is gone but the leased pair: the next append cannot fit.
        lease2 = await ob.lease(2, 10**9)
        assert lease2 is not None
        with pytest.raises(OutboxFullError):
            await ob.append(make_records(1, start=6))
        assert (await ob.stats()).rows == 4
        assert await ob.ack(lease) == 2         # delivery frees room again
        assert (await ob.append(make_records(1, start=6))).appended == 1


async def test_reject_new_at_byte_cap(open_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture) -> None:
    async with open_outbox(max_bytes=SIZE * 3, when_full="reject_new") as ob:
        await ob.append(make_records(2))
        with caplog.at_level(logging.WARNING, logger="agent.outbox.store"), pytest.raises(OutboxFullError) as info:
            await ob.append(make_records(2, start=2))
        assert info.value.hint
        st = await ob.stats()
        assert (st.rows, st.dropped_total) == (2, 0)      # nothing of the refused append stored
        assert (await ob.append(make_records(1, start=2))).appended == 1
    assert any("rejecting" in r.getMessage() for r in caplog.records)


async def test_free_space_floor_drop_oldest(open_outbox: Callable[..., Outbox]) -> None:
    async with open_outbox() as ob:
        await ob.append(make_records(5))
    # A floor no disk can satisfy: every append must make room for itself inside the file.
    async with open_outbox(min_free_bytes=10**18) as ob:
        result = await ob.append(make_records(2, start=5))
        assert (result.appended, result.dropped) == (2, 2)
        st = await ob.stats()
        assert (st.rows, st.dropped_total) == (5, 2)
        lease = await ob.lease(100, 10**9)
        assert lease is not None
        with pytest.raises(OutboxFullError, match="min_free_bytes"):
            await ob.append(make_records(1, start=7))


async def test_free_space_floor_reject_new(open_outbox: Callable[..., Outbox]) -> None:
    async with open_outbox(min_free_bytes=10**18, when_full="reject_new") as ob:
        with pytest.raises(OutboxFullError, match="min_free_bytes"):
            await ob.append(make_records(1))
        assert (await ob.stats()).rows == 0


async def test_one_refused_append_does_not_fail_its_group(open_outbox: Callable[..., Outbox]) -> None:
    import asyncio

    async with open_outbox(max_bytes=SIZE * 3, when_full="reject_new") as ob:
        small, big = ob.append(make_records(1)), ob.append(make_records(5, start=1))
        results = await asyncio.gather(small, big, return_exceptions=True)
        assert results[0].appended == 1  # type: ignore[union-attr]
        assert isinstance(results[1], OutboxFullError)
        assert (await ob.stats()).rows == 1


class SmallDisk:
    """A file system of ``capacity`` bytes that holds only the outbox's files (the database and its WAL)."""

    def __init__(self, db: Path, capacity: int) -> None:
        self.db = db
        self.capacity = capacity

    def used(self) -> int:
        return sum(p.stat().st_size for p in (self.db, Path(f"{self.db}-wal"), Path(f"{self.db}-shm")) if p.exists())

    def __call__(self, _dir: Path) -> int:
        return self.capacity - self.used()


async def test_the_free_space_floor_counts_what_the_wal_will_take(db_path: Path, clock: Clock) -> None:
    # 3 MB disk, 1 MB floor: the outbox's files may never grow past 2 MB, WAL included. Judging by the
    # payload alone let the WAL (every written page, and again the main file at the checkpoint)
    # eat the floor.
    disk = SmallDisk(db_path, 3_000_000)
    floor = 1_000_000
    async with Outbox(OutboxConfig(path=db_path, min_free_bytes=floor, max_bytes=10**12), now_ms=clock,
                      disk_free=disk) as ob:
        for i in range(150):
            await ob.append(make_records(20, start=i * 20))
            assert disk.used() <= disk.capacity - floor, f"append {i}: {disk.used()} bytes on a 2 MB budget"
        stats = await ob.stats()
        assert stats.dropped_total > 0 and stats.rows > 0   # it kept filling by dropping the oldest


async def test_full_hints_say_what_helps(open_outbox: Callable[..., Outbox]) -> None:
    async with open_outbox(min_free_bytes=10**18, when_full="reject_new") as ob:
        with pytest.raises(OutboxFullError) as floor:
            await ob.append(make_records(1))
    text = str(floor.value)
    assert "lowering it keeps more readings" in text and "raise outbox.min_free_bytes" not in text
    async with open_outbox(max_bytes=1000, when_full="reject_new") as ob:
        with pytest.raises(OutboxFullError) as cap:
            await ob.append(make_records(5))
    assert "raise outbox.max_bytes" in str(cap.value)
