"""The one way tests wait for a condition they cannot await: poll it with a deadline.

Prefer an event when the code under test offers one; use this across process or broker
boundaries (an outbox file, a subprocess, a broker's redelivery)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(cond: Callable[[], object], timeout: float = 10.0, what: str = "condition",
                   every: float = 0.02) -> None:
    """Poll ``cond`` (sync, or returning an awaitable) every ``every`` s; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {what}")
        await asyncio.sleep(every)  # polling a condition with a deadline
