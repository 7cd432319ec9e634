"""Fixtures for the clock-safety suite: a fake host clock (nothing touches the real one), real outbox files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.clock import ClockGuard, ClockSources, SyncState
from agent.config import OutboxConfig
from agent.holdback import HoldBack
from agent.outbox import Outbox
from agent.records import Reading, RecordBuilder, load_schema

BUILDER = RecordBuilder(load_schema(), site_id="site-1", customer_id="cust-1", agent_version="test")
TRUE_START_MS = 1_748_736_000_000          # 2025-06-01T00:00:00Z: what the time really is at the first boot
STALE_MS = 1_740_000_000_000               # 2025-02-19: a fake-hwclock saved time, past the floor but wrong


class Host:
    """A gateway's clocks as the test drives them.

    ``true_ms`` is the real time; the wall clock shows ``true_ms + error`` (0 once synchronised);
    the boot clock counts from the boot. ``advance`` moves real time; nothing here sets the OS clock.
    """

    def __init__(self, boot_id: str = "boot-a", *, wall_at_boot: int = 0, boot_ms: int = 4_000) -> None:
        self.true_ms = TRUE_START_MS
        self.boot_id = boot_id
        self.boot = boot_ms
        self.error = wall_at_boot - self.true_ms
        self.synced = False

    def wall(self) -> int:
        return self.true_ms + self.error

    def advance(self, ms: int) -> None:
        self.true_ms += ms
        self.boot += ms

    def sync(self) -> None:
        """NTP steps the wall clock to the true time and the system reports it synchronised."""
        self.error = 0
        self.synced = True

    def unsync(self) -> None:
        self.synced = False

    def reboot(self, boot_id: str, *, wall_at_boot: int = 0, down_ms: int = 60_000) -> None:
        self.true_ms += down_ms
        self.boot_id = boot_id
        self.boot = 3_000
        self.error = wall_at_boot - self.true_ms
        self.synced = False

    def sources(self) -> ClockSources:
        return ClockSources(
            wall_ms=self.wall, boot_ms=lambda: self.boot, boot_id=lambda: self.boot_id,
            sync=lambda: SyncState(self.synced, "test"),
        )

    def guard(self) -> ClockGuard:
        return ClockGuard(self.sources(), recheck_ms=0)

    def read(self, device: str, power: float = 1000.0) -> Reading:
        """A reading stamped as a source stamps it: with the host wall clock, right or wrong."""
        return Reading(device, self.wall(), "test", {"ac_power_w": power})


@pytest.fixture
def host() -> Host:
    return Host()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def open_outbox(db_path: Path, host: Host) -> Callable[..., Outbox]:
    def factory(**overrides: Any) -> Outbox:
        overrides.setdefault("min_free_bytes", 0)
        return Outbox(OutboxConfig(path=db_path, **overrides), now_ms=host.wall)
    return factory


@pytest.fixture
async def outbox(open_outbox: Callable[..., Outbox]) -> AsyncIterator[Outbox]:
    async with open_outbox() as ob:
        yield ob


def holdback(outbox: Outbox, host: Host, **kw: Any) -> HoldBack:
    return HoldBack(outbox, host.guard(), BUILDER, wall_ms=host.wall, **kw)
