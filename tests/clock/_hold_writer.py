"""Crash-test child: admits unsynchronised readings for ever, printing each device id once ``admit`` returned.

Run as ``python -m tests.clock._hold_writer <db path>``; prints ``ready`` after ``open``. Reading ``inv<i>``
is taken at true time ``TRUE_START_MS + (i + 1) * 1000`` on boot ``boot-a`` (see ``Host``).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox
from tests.clock.conftest import Host, holdback


async def _main(path: Path) -> None:
    host = Host()
    async with Outbox(OutboxConfig(path=path, min_free_bytes=0), now_ms=host.wall) as ob:
        hb = holdback(ob, host)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        i = 0
        while True:
            host.advance(1000)
            await hb.admit([host.read(f"inv{i}")])
            sys.stdout.write(f"inv{i}\n")
            sys.stdout.flush()
            i += 1


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
