"""Clock safety: know when the wall clock is not synchronised, and re-stamp readings once it is.

A gateway without an RTC boots at 1970 or at a stale saved time. A reading stamped with that
time would be upserted under a wrong key forever, so while the clock is unsynchronised
:meth:`ClockGuard.stamp` gives a *provisional* time: milliseconds since boot (``CLOCK_BOOTTIME``,
which keeps counting through a suspend, unlike ``CLOCK_MONOTONIC``), tagged ``unsynced`` together
with the boot id. Once the clock syncs, :meth:`ClockGuard.restamp` turns (boot id, boot ms) into
the true wall time, ``now_wall - (now_boot - boot_ms)``, quality ``restamped``. Readings from an
earlier boot cannot be re-stamped (the boot clock restarted), and the caller flags them.

How "synchronised" is decided, first answer wins:
1. ``/run/systemd/timesync/synchronized`` exists (systemd-timesyncd touched it after a sync);
2. its directory exists but the flag does not: timesyncd runs (the directory is its
   ``RuntimeDirectory=``, Debian 12's systemd-timesyncd 252 unit) and has not synchronised in this
   boot. Without a hardware clock that set the time at boot (``/sys/class/rtc/rtc*/hctosys``),
   the clock is what timesyncd saved before the last shutdown or power cut: hours or days behind,
   yet past the floor below. Unsynced. (With an RTC that set it, go on: the RTC is trusted.)
3. ``adjtimex()`` read-only: ``TIME_ERROR`` or the ``STA_UNSYNC`` status bit means unsynced
   (chrony and ntpd keep this up to date). Under the shipped unit ``ProtectClock=`` forbids the
   call, so it fails with EPERM and we fall through;
4. the wall clock is not before :data:`NOT_BEFORE_MS`.
Whatever the source says, a wall time before :data:`NOT_BEFORE_MS` is never treated as synced.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

__all__ = [
    "NOT_BEFORE_MS",
    "ClockGuard",
    "ClockSources",
    "Stamp",
    "SyncState",
    "adjtimex_synced",
    "detect_sync",
    "rtc_set_the_clock",
]

log = logging.getLogger(__name__)

# 2025-01-01T00:00:00Z. This build cannot have been made earlier, so a clock showing an earlier
# time is surely wrong. Move it forward with releases.
NOT_BEFORE_MS = 1_735_689_600_000

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
RTC_CLASS = Path("/sys/class/rtc")
BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")

_TIME_ERROR = 5          # adjtimex() return value: clock not synchronised
_STA_UNSYNC = 0x0040     # timex.status bit: clock not synchronised

Quality = Literal["synced", "restamped", "unsynced"]


class _Timex(ctypes.Structure):
    # The leading fields of struct timex (<sys/timex.h>); ctypes applies the platform's alignment.
    # The padding covers the rest of the struct, which the kernel writes into.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


def adjtimex_synced() -> bool | None:
    """Ask the kernel whether its clock is synchronised; None when the call is unavailable or denied."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.adjtimex
    except (OSError, AttributeError):
        return None
    tx = _Timex()  # modes = 0: read only, changes nothing
    state = func(ctypes.byref(tx))
    if state < 0:
        return None  # EPERM under a seccomp filter (ProtectClock=yes), ENOSYS elsewhere
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC


@dataclass(frozen=True, slots=True)
class SyncState:
    synced: bool | None       # None: no source could tell
    source: str               # timesyncd | adjtimex | unknown


def rtc_set_the_clock(rtc_class: Path = RTC_CLASS) -> bool:
    """Whether a hardware clock set the system time at boot: an RTC's ``hctosys`` is 1 "if the RTC
    provided the system time at boot" (Linux Documentation/ABI/testing/sysfs-class-rtc)."""
    try:
        devices = list(rtc_class.iterdir())
    except OSError:
        return False
    for d in devices:
        try:
            if (d / "hctosys").read_text().strip() == "1":
                return True
        except OSError:
            continue
    return False


def detect_sync(
    flag: Path = TIMESYNC_FLAG, adjtimex: Callable[[], bool | None] = adjtimex_synced,
    rtc_set: Callable[[], bool] = rtc_set_the_clock,
) -> SyncState:
    """What the system says about clock synchronisation (the floor check is the guard's job)."""
    if flag.exists():
        return SyncState(True, "timesyncd")
    if flag.parent.is_dir() and not rtc_set():
        return SyncState(False, "timesyncd")
    answer = adjtimex()
    if answer is not None:
        return SyncState(answer, "adjtimex")
    return SyncState(None, "unknown")


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _boot_ms() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1_000_000


def _read_boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text().strip()
    except OSError:
        # Not Linux or /proc hidden: one id per process is the safe side (no cross-run restamp).
        return f"process-{time.time_ns()}"


@dataclass(frozen=True, slots=True)
class ClockSources:
    """Where the guard reads time from; tests inject their own, nothing ever sets the clock."""

    wall_ms: Callable[[], int] = _wall_ms
    boot_ms: Callable[[], int] = _boot_ms
    boot_id: Callable[[], str] = _read_boot_id
    sync: Callable[[], SyncState] = detect_sync


@dataclass(frozen=True, slots=True)
class Stamp:
    """The time to put on a reading. While unsynced, ``time_ms`` is ms since boot, not a wall time."""

    time_ms: int
    quality: Quality
    boot_id: str
    boot_ms: int


@dataclass(slots=True)
class _Cached:
    at_boot_ms: int = -(10**12)
    synced: bool = False
    source: str = "unknown"


class ClockGuard:
    """Stamps readings safely and re-stamps the provisional ones once the clock is synchronised.

    Args:
        sources: clock and sync sources (real ones by default).
        recheck_ms: how long a sync verdict is reused; a stat and a syscall are cheap, but a
            poll loop stamping many devices per second need not repeat them.
        not_before_ms: the floor below which the wall clock is never trusted.
        assume_synced: trust the wall clock whenever it is past the floor, ignoring what the
            system reports. For the demo and for hosts whose kernel never clears STA_UNSYNC
            (some containers and VMs); never the production default.
    """

    def __init__(
        self,
        sources: ClockSources | None = None,
        *,
        recheck_ms: int = 1000,
        not_before_ms: int = NOT_BEFORE_MS,
        assume_synced: bool = False,
    ) -> None:
        self._src = sources or ClockSources()
        if assume_synced:
            self._src = replace(self._src, sync=lambda: SyncState(None, "assumed"))
        self._recheck_ms = recheck_ms
        self._floor = not_before_ms
        self.boot_id = self._src.boot_id()
        self._cache = _Cached()
        self._last_reported: bool | None = None

    def synced(self) -> bool:
        """Whether the wall clock can be trusted right now."""
        now_boot = self._src.boot_ms()
        if now_boot - self._cache.at_boot_ms >= self._recheck_ms:
            state = self._src.sync()
            wall_ok = self._src.wall_ms() >= self._floor
            synced = wall_ok if state.synced is None else (state.synced and wall_ok)
            source = state.source if state.synced is not None else f"{state.source}+not_before"
            if state.synced and not wall_ok:
                source = f"{state.source}+not_before"
            self._cache = _Cached(now_boot, synced, source)
            self._report(synced, source)
        return self._cache.synced

    def _report(self, synced: bool, source: str) -> None:
        if synced == self._last_reported:
            return
        if synced:
            log.info("clock synchronised source=%s", source)
        else:
            log.warning(
                "clock not synchronised source=%s hint=%s", source,
                "readings are held with a provisional time until NTP syncs; check "
                "`timedatectl timesync-status` and that UDP 123 is reachable",
            )
        self._last_reported = synced

    def stamp(self) -> Stamp:
        """The time for a reading taken now."""
        boot_ms = self._src.boot_ms()
        if self.synced():
            wall = self._src.wall_ms()
            if wall >= self._floor:  # re-read: the clock may have stepped since the check
                return Stamp(wall, "synced", self.boot_id, boot_ms)
        return Stamp(boot_ms, "unsynced", self.boot_id, boot_ms)

    def can_restamp(self, boot_id: str) -> bool:
        """A provisional stamp can be fixed only within the boot it was taken in."""
        return boot_id == self.boot_id

    def restamp(self, boot_id: str, boot_ms: int) -> int | None:
        """The true wall time of a provisional stamp, or None when it cannot be computed.

        None means: another boot (never fixable; the caller flags the reading, see
        :meth:`can_restamp`), or the clock is still unsynchronised (try again later).
        """
        if not self.can_restamp(boot_id) or not self.synced():
            return None
        now_boot = self._src.boot_ms()
        if boot_ms > now_boot:
            return None  # from the future of this boot: not a stamp we made
        wall = self._src.wall_ms() - (now_boot - boot_ms)
        return wall if wall >= self._floor else None

    def describe(self) -> dict[str, object]:
        """The clock part of ``solar-agent status``."""
        synced = self.synced()
        return {
            "synced": synced,
            "source": self._cache.source,
            "boot_id": self.boot_id,
            "wall_ms": self._src.wall_ms(),
            "boot_ms": self._src.boot_ms(),
        }
