"""Clock safety with injected clock sources: stamping, re-stamping, and never a 1970 'synced' time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.clock import (
    NOT_BEFORE_MS,
    ClockGuard,
    ClockSources,
    SyncState,
    adjtimex_synced,
    detect_sync,
    rtc_set_the_clock,
)

JAN_2026 = 1_767_225_600_000
BOOT = "b0000000-0000-4000-8000-000000000001"


@dataclass
class FakeClocks:
    wall: int = 5_000          # 1970: a Pi without RTC right after boot
    boot: int = 5_000
    state: SyncState = field(default_factory=lambda: SyncState(False, "adjtimex"))

    def sources(self) -> ClockSources:
        return ClockSources(wall_ms=lambda: self.wall, boot_ms=lambda: self.boot,
                            boot_id=lambda: BOOT, sync=lambda: self.state)

    def advance(self, ms: int) -> None:
        self.wall += ms
        self.boot += ms


def test_unsynced_readings_get_boot_time_and_are_restamped_after_sync() -> None:
    clocks = FakeClocks()
    guard = ClockGuard(clocks.sources(), recheck_ms=0)

    first = guard.stamp()
    assert (first.time_ms, first.quality, first.boot_id, first.boot_ms) == (5_000, "unsynced", BOOT, 5_000)
    assert guard.restamp(BOOT, first.boot_ms) is None  # not synced yet: try later

    clocks.advance(60_000)
    second = guard.stamp()
    assert second.quality == "unsynced" and second.boot_ms == 65_000

    # NTP steps the wall clock to 2026; the boot clock goes on untouched.
    clocks.wall = JAN_2026
    clocks.state = SyncState(True, "timesyncd")
    clocks.advance(1_000)
    assert guard.restamp(BOOT, first.boot_ms) == JAN_2026 + 1_000 - 61_000
    assert guard.restamp(BOOT, second.boot_ms) == JAN_2026 + 1_000 - 1_000
    now = guard.stamp()
    assert (now.time_ms, now.quality) == (JAN_2026 + 1_000, "synced")


@pytest.mark.parametrize(
    ("state", "wall", "expected"),
    [
        (SyncState(True, "timesyncd"), JAN_2026, "synced"),
        (SyncState(True, "adjtimex"), JAN_2026, "synced"),
        (SyncState(False, "adjtimex"), JAN_2026, "unsynced"),
        # The system claims sync but the wall clock is in 1970 or before the build: never trusted.
        (SyncState(True, "adjtimex"), 5_000, "unsynced"),
        (SyncState(True, "timesyncd"), NOT_BEFORE_MS - 1, "unsynced"),
        # No source can tell: the build-date floor decides.
        (SyncState(None, "unknown"), JAN_2026, "synced"),
        (SyncState(None, "unknown"), NOT_BEFORE_MS - 86_400_000, "unsynced"),
    ],
)
def test_stamp_quality_table(state: SyncState, wall: int, expected: str) -> None:
    clocks = FakeClocks(wall=wall, boot=1234, state=state)
    stamp = ClockGuard(clocks.sources()).stamp()
    assert stamp.quality == expected
    if expected == "unsynced":
        assert stamp.time_ms == 1234  # provisional boot time, never the untrusted wall clock
    else:
        assert stamp.time_ms == wall >= NOT_BEFORE_MS


@pytest.mark.parametrize(
    ("boot_id", "boot_ms", "expected"),
    [
        (BOOT, 10_000, JAN_2026 - 90_000),
        (BOOT, 100_000, JAN_2026),
        ("another-boot", 10_000, None),      # boot clock restarted: cannot be fixed, caller flags it
        (BOOT, 100_001, None),               # later than now in this boot: not ours
        (BOOT, 0, JAN_2026 - 100_000),
    ],
)
def test_restamp_table(boot_id: str, boot_ms: int, expected: int | None) -> None:
    clocks = FakeClocks(wall=JAN_2026, boot=100_000, state=SyncState(True, "timesyncd"))
    guard = ClockGuard(clocks.sources())
    assert guard.restamp(boot_id, boot_ms) == expected
    assert guard.can_restamp(boot_id) is (boot_id == BOOT)


def test_restamp_never_yields_a_time_before_the_floor() -> None:
    # Synced to a time so close to the floor that the reading would land before it: refuse.
    clocks = FakeClocks(wall=NOT_BEFORE_MS + 1_000, boot=10_000_000, state=SyncState(True, "adjtimex"))
    guard = ClockGuard(clocks.sources())
    assert guard.restamp(BOOT, 0) is None


def test_verdict_is_cached_for_recheck_ms() -> None:
    clocks = FakeClocks(wall=JAN_2026, boot=0, state=SyncState(False, "adjtimex"))
    guard = ClockGuard(clocks.sources(), recheck_ms=1_000)
    assert not guard.synced()
    clocks.state = SyncState(True, "adjtimex")
    clocks.advance(999)
    assert not guard.synced()
    clocks.advance(1)
    assert guard.synced()
    assert guard.describe()["source"] == "adjtimex"


def test_assume_synced_still_honours_the_floor() -> None:
    clocks = FakeClocks(wall=JAN_2026, boot=7, state=SyncState(False, "adjtimex"))
    assert ClockGuard(clocks.sources(), assume_synced=True).stamp().quality == "synced"
    clocks.wall = 5_000
    assert ClockGuard(clocks.sources(), assume_synced=True).stamp().quality == "unsynced"


def test_detect_sync_order(tmp_path: Path) -> None:
    flag = tmp_path / "timesync" / "synchronized"      # no timesyncd: its runtime directory is absent
    assert detect_sync(flag, adjtimex=lambda: None) == SyncState(None, "unknown")
    assert detect_sync(flag, adjtimex=lambda: False) == SyncState(False, "adjtimex")
    flag.parent.mkdir()
    flag.touch()
    assert detect_sync(flag, adjtimex=lambda: False) == SyncState(True, "timesyncd")


def test_timesyncd_not_synced_yet_means_a_stale_clock_without_an_rtc(tmp_path: Path) -> None:
    # A Raspberry Pi after a power cut, under the shipped unit: timesyncd runs (its RuntimeDirectory
    # exists, Debian 12's systemd-timesyncd 252) and set the clock to the time it saved before the cut,
    # past the floor; the flag comes with its first sync; adjtimex is denied (ProtectClock=yes).
    flag = tmp_path / "timesync" / "synchronized"
    flag.parent.mkdir()
    assert detect_sync(flag, adjtimex=lambda: None, rtc_set=lambda: False) == SyncState(False, "timesyncd")
    stale = FakeClocks(wall=JAN_2026, boot=7, state=detect_sync(flag, adjtimex=lambda: None, rtc_set=lambda: False))
    assert ClockGuard(stale.sources()).stamp().quality == "unsynced"
    # An industrial box whose battery-backed RTC set the clock at boot: trusted (past the floor).
    assert detect_sync(flag, adjtimex=lambda: None, rtc_set=lambda: True) == SyncState(None, "unknown")
    flag.touch()
    assert detect_sync(flag, adjtimex=lambda: None, rtc_set=lambda: False) == SyncState(True, "timesyncd")


def test_rtc_set_the_clock_reads_hctosys(tmp_path: Path) -> None:
    assert rtc_set_the_clock(tmp_path / "absent") is False
    (tmp_path / "rtc0").mkdir()
    (tmp_path / "rtc0" / "hctosys").write_text("0\n")
    (tmp_path / "rtc1").mkdir()                          # no hctosys file (a driver without it)
    assert rtc_set_the_clock(tmp_path) is False
    (tmp_path / "rtc0" / "hctosys").write_text("1\n")
    assert rtc_set_the_clock(tmp_path) is True


def test_real_sources_answer_something() -> None:
    # The real adjtimex call works read-only here (or is denied); either way no exception.
    assert adjtimex_synced() in (True, False, None)
    stamp = ClockGuard().stamp()
    assert stamp.quality in ("synced", "unsynced")
    assert len(ClockGuard().boot_id) == 36
