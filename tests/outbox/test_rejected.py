"""rejected_inputs: durable, one row per distinct input, redeliveries not double-counted, capped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.outbox import Outbox, read_stats
from agent.outbox.store import REJECTED_INPUTS_CAP
from agent.records import RejectedInput


def _item(n: int = 0, *, topic: str = "gen/dev1/tele", redelivered: bool = False, ms: int = 1_000) -> RejectedInput:
    payload = b'{"ENERGY":{"Power":' + b"9" * 5000 + b"}}" if n == 0 else f"garbage {n}".encode()
    return RejectedInput("mqtt:gen", topic, "malformed", f"not a finite number ({n})", payload[:256],
                         len(payload), ms + n, redelivered=redelivered)


async def test_recorded_durably_and_visible_after_a_reopen(open_outbox: Callable[..., Outbox], db_path: Path) -> None:
    async with open_outbox() as ob:
        await ob.record_rejected(_item())
        assert (await ob.stats()).rejected_inputs == 1
    async with open_outbox() as ob:
        (row,) = await ob.rejected_inputs()
        assert (row.source, row.topic, row.reason, row.count) == ("mqtt:gen", "gen/dev1/tele", "malformed", 1)
        assert row.payload_bytes == 5021 and len(row.payload_head) == 256
        assert row.payload_head.startswith(b'{"ENERGY"')
    assert read_stats(db_path).rejected_inputs == 1      # the technician's read-only path sees it too


async def test_same_input_counts_up_but_a_redelivered_copy_does_not(outbox: Outbox) -> None:
    await outbox.record_rejected(_item())
    await outbox.record_rejected(_item(redelivered=True))     # the broker's copy after a crash before the ack
    await outbox.record_rejected(_item(ms=5_000))             # the device sent the same garbage again
    (row,) = await outbox.rejected_inputs()
    assert row.count == 2 and row.last_ms == 5_000 and row.first_ms == 1_000
    await outbox.record_rejected(_item(topic="gen/dev2/tele"))
    assert (await outbox.stats()).rejected_inputs == 2


async def test_capped_keeping_the_most_recent(outbox: Outbox) -> None:
    for n in range(1, REJECTED_INPUTS_CAP + 51):
        await outbox.record_rejected(_item(n))
    rows = await outbox.rejected_inputs(limit=REJECTED_INPUTS_CAP + 100)
    assert len(rows) == REJECTED_INPUTS_CAP == (await outbox.stats()).rejected_inputs
    assert rows[0].detail.endswith(f"({REJECTED_INPUTS_CAP + 50})")          # newest first
    assert rows[-1].detail.endswith("(51)")                                  # the oldest 50 went
