"""A damaged outbox file is moved aside, a fresh one is created, readable rows are salvaged."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.outbox import Outbox
from tests.outbox.conftest import make_records

_TABLE_LEAF = 0x0D


def _corrupt_one_leaf_page(path: Path) -> int:
    """Overwrite a table-leaf page in the middle of the file with garbage; returns its number."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    pages = len(data) // page_size
    leaves = [n for n in range(2, pages) if data[n * page_size] == _TABLE_LEAF]
    victim = leaves[len(leaves) // 2]
    data[victim * page_size:(victim + 1) * page_size] = os.urandom(page_size)
    path.write_bytes(bytes(data))
    return victim


def _aside(db_path: Path) -> list[Path]:
    return sorted(p for p in db_path.parent.iterdir() if ".corrupt-" in p.name)


async def test_garbage_file_is_moved_aside_and_a_fresh_outbox_works(
    db_path: Path, open_outbox: Callable[..., Outbox], caplog: pytest.LogCaptureFixture
) -> None:
    db_path.parent.mkdir(parents=True)
    garbage, wal = os.urandom(64 * 1024), os.urandom(1000)
    db_path.write_bytes(garbage)
    Path(f"{db_path}-wal").write_bytes(wal)
    with caplog.at_level(logging.ERROR, logger="agent.outbox.store"):
        async with open_outbox() as ob:
            assert ob.corrupt_moved_to is not None
            assert re.fullmatch(r"outbox\.db\.corrupt-\d{8}T\d{6}Z", ob.corrupt_moved_to.name)
            assert (await ob.stats()).rows == 0
            await ob.append(make_records(3))
            assert (await ob.stats()).rows == 3
    moved = _aside(db_path)[0]
    assert moved.read_bytes() == garbage                       # the evidence is kept as it was
    assert Path(f"{moved}-wal").read_bytes() == wal
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "moved_to=" in errors[0] and "hint=" in errors[0]


async def test_partial_damage_salvages_the_readable_rows(db_path: Path, open_outbox: Callable[..., Outbox]) -> None:
    recs = make_records(2000)
    async with open_outbox() as ob:
        await ob.append(recs)
        lease = await ob.lease(10, 10**9)
        assert lease is not None
        await ob.reject(lease, {recs[0].event_id: "bad"})
    assert not Path(f"{db_path}-wal").exists()       # close checkpointed: the damage hits the real file
    _corrupt_one_leaf_page(db_path)
    async with open_outbox() as ob:
        assert ob.corrupt_moved_to is not None
        st = await ob.stats()
        rows = await ob.peek(10_000)
        original = {r.event_id: r.payload for r in recs}
        assert all(original[r.event_id] == r.payload for r in rows)      # nothing invented
        assert 2000 - 1 - 20 <= len(rows) < 2000 - 1                     # one page worth lost, no more
        assert st.rows == len(rows) == ob.salvaged_rows
        assert st.bytes == sum(len(r.payload) for r in rows)
        assert st.leased == 0
        assert [d.event_id for d in await ob.dead_letters()] == [recs[0].event_id]
        lease = await ob.lease(5000, 10**9)                              # and the queue works
        assert lease is not None and await ob.ack(lease) == len(rows)


async def test_a_healthy_file_is_left_alone(db_path: Path, open_outbox: Callable[..., Outbox]) -> None:
    async with open_outbox() as ob:
        await ob.append(make_records(3))
    async with open_outbox() as ob:
        assert ob.corrupt_moved_to is None
        assert (await ob.stats()).rows == 3
    assert _aside(db_path) == []
