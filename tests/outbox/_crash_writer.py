"""Crash-test writer: appends records for ever and prints each event id once ``append`` returned.

Run as ``python -m tests.outbox._crash_writer <db path> <seed>``; the parent SIGKILLs it at a random
moment. It also leases and nacks rows so that a kill can land in the middle of those too. Prints
``ready`` after ``open``.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import EncodedRecord


async def _appender(ob: Outbox, rng: random.Random, tag: str) -> None:
    n = 0
    while True:
        batch = []
        for _ in range(rng.randint(1, 20)):
            batch.append(EncodedRecord(f"{tag}-{n}", b'{"event_id":"%s","v":%d}' % (tag.encode(), n), n))
            n += 1
        if rng.random() < 0.1 and n > 30:
            batch.append(EncodedRecord(f"{tag}-{n - 25}", b"{}", 0))      # a redelivered duplicate
        await ob.append(batch)
        sys.stdout.write("".join(f"{r.event_id}\n" for r in batch))
        sys.stdout.flush()


async def _leaser(ob: Outbox, rng: random.Random) -> None:
    while True:
        lease = await ob.lease(rng.randint(1, 50), 10**9)
        if lease is None:
            await asyncio.sleep(0.001)
            continue
        if rng.random() < 0.5:
            await ob.nack(lease, 0)
        # else: keep it leased until the kill; reopen must release it


async def main(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with Outbox(OutboxConfig(path=path)) as ob:
        print("ready", flush=True)
        async with asyncio.TaskGroup() as tg:
            for i in range(4):
                tg.create_task(_appender(ob, random.Random(rng.random()), f"s{seed}t{i}"), name=f"appender{i}")
            tg.create_task(_leaser(ob, random.Random(rng.random())), name="leaser")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
