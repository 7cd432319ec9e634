"""HoldBack + outbox on real SQLite files, driven by a fake host clock (the OS clock is never touched)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.clock import NOT_BEFORE_MS
from agent.errors import OutboxFullError
from agent.holdback import DEFAULT_MAX_AGE_MS
from agent.outbox import HeldReading, Outbox
from agent.records import Reading, decode_json, event_id, format_time
from tests.clock.conftest import STALE_MS, TRUE_START_MS, Host, holdback

LOST_REASON = "clock never synchronised during boot boot-a; reading time unknown"


async def _leased(outbox: Outbox) -> dict[str, dict[str, object]]:
    lease = await outbox.lease(10_000, 10**9)
    if lease is None:
        return {}
    out = {}
    for row in lease.rows:
        rec = decode_json(row.payload)
        assert rec["event_id"] == row.event_id
        out[str(rec["device_id"])] = rec
    return out


async def test_unsynced_readings_are_held_and_never_leased(outbox: Outbox, host: Host) -> None:
    hb = holdback(outbox, host)
    ready, held = await hb.admit([host.read(f"inv{i}") for i in range(3)])
    assert (ready, held) == ([], 3)
    assert await outbox.lease(100, 10**9) is None
    stats = await outbox.stats()
    assert (stats.rows, stats.held, stats.dead_letters) == (0, 3, 0)
    result = await hb.release()          # still unsynced: only settles earlier boots (none)
    assert result is not None and (result.restamped, result.lost, result.waiting) == (0, 0, 3)
    assert await hb.release() is None    # ... and only once
    assert await outbox.lease(100, 10**9) is None
    assert await outbox.held_count() == 3


@pytest.mark.parametrize(
    ("delay_ms", "sync_after_ms"),
    [
        (0, 0),                              # admitted at once, synced at once
        (250, 1_000),                        # a Modbus poll's worth of delay
        (30_000, 3_600_000),                 # an MQTT cycle, an hour without NTP
        (DEFAULT_MAX_AGE_MS, 86_400_000),    # the longest trusted age, a day without NTP
    ],
)
async def test_sync_restamps_held_readings_with_their_true_time(
    outbox: Outbox, host: Host, delay_ms: int, sync_after_ms: int
) -> None:
    hb = holdback(outbox, host)
    expected: dict[str, int] = {}
    for i in range(4):
        host.advance(1_000 * i + 17)
        reading = host.read(f"inv{i}")
        assert reading.time_ms < NOT_BEFORE_MS            # the host thinks it is 1970
        expected[f"inv{i}"] = host.true_ms
        host.advance(delay_ms)
        assert await hb.admit([reading]) == ([], 1)
    host.advance(sync_after_ms)
    host.sync()
    result = await hb.release()
    assert result is not None and (result.restamped, result.lost, result.waiting) == (4, 0, 0)
    records = await _leased(outbox)
    assert set(records) == set(expected)
    for dev, true_ms in expected.items():
        rec = records[dev]
        assert rec["date_time"] == format_time(true_ms)
        assert rec["clock_quality"] == "restamped"
        assert rec["event_id"] == event_id("site-1", dev, true_ms)
    assert (await outbox.stats()).held == 0


async def test_a_time_from_another_clock_is_placed_at_admit(outbox: Outbox, host: Host) -> None:
    """A device with its own clock: its time says nothing about our boot clock, so admit time is used."""
    hb = holdback(outbox, host)
    device_stamped = Reading("dtu1", host.true_ms - 5_000, "test", {"ac_power_w": 1.0})
    host.advance(2_000)
    admitted_at = host.true_ms
    assert await hb.admit([device_stamped]) == ([], 1)
    host.advance(60_000)
    host.sync()
    await hb.release()
    assert (await _leased(outbox))["dtu1"]["date_time"] == format_time(admitted_at)


async def test_release_waits_while_the_clock_is_unsynced(outbox: Outbox, host: Host) -> None:
    hb = holdback(outbox, host)
    await hb.admit([host.read("inv1")])
    host.advance(10_000)
    # The system says synchronised, but the wall clock still shows 1970: never trusted.
    host.synced = True
    assert (await hb.release()).waiting == 1  # type: ignore[union-attr]
    assert await outbox.lease(10, 10**9) is None
    host.sync()
    assert (await hb.release()).restamped == 1  # type: ignore[union-attr]


async def test_held_rows_of_an_earlier_boot_become_dead_letters(
    open_outbox: Callable[..., Outbox], host: Host
) -> None:
    async with open_outbox() as ob:
        assert (await holdback(ob, host).admit([host.read("inv1"), host.read("inv2")]))[1] == 2
        original = {"inv1": host.wall(), "inv2": host.wall()}
    host.reboot("boot-b")
    async with open_outbox() as ob:
        hb = holdback(ob, host)
        await hb.admit([host.read("inv3")])            # this boot's: held, will be re-stamped
        result = await hb.release()                    # unsynced: earlier boots settled at once
        assert result is not None
        assert (result.lost, result.lost_boots, result.waiting) == (2, ("boot-a",), 1)
        stats = await ob.stats()
        assert (stats.rows, stats.held, stats.dead_letters) == (0, 1, 2)
        letters = {str(decode_json(d.payload)["device_id"]): d for d in await ob.dead_letters()}
        assert set(letters) == {"inv1", "inv2"}
        for dev, letter in letters.items():
            rec = decode_json(letter.payload)
            assert letter.reason == LOST_REASON
            # Kept as read: original time, flagged; never presented as a good time.
            assert (rec["clock_quality"], rec["date_time"]) == ("unsynced", format_time(original[dev]))
        assert await ob.lease(10, 10**9) is None
        host.advance(5_000)
        host.sync()
        result = await hb.release()
        assert result is not None and (result.restamped, result.lost) == (1, 0)
        assert set(await _leased(ob)) == {"inv3"}


async def test_a_technician_can_requeue_lost_readings_flagged_unsynced(
    open_outbox: Callable[..., Outbox], host: Host
) -> None:
    async with open_outbox() as ob:
        await holdback(ob, host).admit([host.read("inv1")])
    host.reboot("boot-b")
    host.sync()
    async with open_outbox() as ob:
        assert (await holdback(ob, host).release()).lost == 1  # type: ignore[union-attr]
        assert await ob.requeue_dead_letters() == 1
        rec = (await _leased(ob))["inv1"]
        assert rec["clock_quality"] == "unsynced"


async def test_held_rows_survive_a_reopen(open_outbox: Callable[..., Outbox], host: Host) -> None:
    async with open_outbox() as ob:
        await holdback(ob, host).admit([host.read("inv1")])
        read_at = host.true_ms
    host.advance(30_000)                               # the agent restarts, same boot
    async with open_outbox() as ob:
        assert (await ob.stats()).held == 1
        host.sync()
        assert (await holdback(ob, host).release()).restamped == 1  # type: ignore[union-attr]
        assert (await _leased(ob))["inv1"]["date_time"] == format_time(read_at)


async def test_stale_clock_reading_admitted_just_after_sync_is_restamped(outbox: Outbox) -> None:
    """fake-hwclock: the boot time is past the floor but wrong. A reading stamped by it must not slip through."""
    host = Host(wall_at_boot=STALE_MS)
    hb = holdback(outbox, host)
    assert (await hb.admit([host.read("early")]))[1] == 1       # seen unsynchronised
    host.advance(2_000)
    stale = host.read("inv1")
    assert stale.time_ms >= NOT_BEFORE_MS
    host.advance(500)
    host.sync()
    fresh = host.read("inv2")
    ready, held = await hb.admit([stale, fresh])
    assert held == 0
    by_dev = {r.device_id: r for r in ready}
    assert by_dev["inv2"] == fresh                               # stamped by the synced clock: kept
    assert by_dev["inv1"].clock_quality == "restamped"
    assert by_dev["inv1"].time_ms == host.true_ms                # placed at admit: 500 ms late, not months


async def test_long_after_sync_old_device_times_are_trusted(outbox: Outbox, host: Host) -> None:
    hb = holdback(outbox, host)
    await hb.admit([host.read("early")])
    host.sync()
    await hb.release()  # run() looks every few seconds: the sync is seen soon after it happens
    host.advance(DEFAULT_MAX_AGE_MS + 1)
    replayed = Reading("dtu1", host.true_ms - 3 * 86_400_000, "test", {"ac_power_w": 1.0})
    ancient = Reading("inv1", 1_000, "test", {"ac_power_w": 1.0})
    ready, held = await hb.admit([replayed, ancient])
    assert held == 0
    assert ready[0] == replayed                                   # a broker replay with device time
    assert (ready[1].time_ms, ready[1].clock_quality) == (host.true_ms, "restamped")   # 1970: never


async def test_bad_readings_are_returned_not_held(outbox: Outbox, host: Host) -> None:
    hb = holdback(outbox, host)
    bad = Reading("inv1", host.wall(), "test", {"no_such_field": 1.0})
    ready, held = await hb.admit([bad, host.read("inv2")])
    assert (ready, held) == ([bad], 1)


async def test_hold_respects_the_byte_cap(open_outbox: Callable[..., Outbox], host: Host) -> None:
    one = len(b'{"device_id":"inv0","source":"test","time_ms":4000,"clock_quality":"unsynced",'
              b'"metrics":{"ac_power_w":1000.0}}')
    items = [HeldReading(host.read(f"inv{i}"), "boot-a", 4_000) for i in range(5)]
    async with open_outbox(max_bytes=one * 3, when_full="reject_new") as ob:
        await ob.hold(items[:3])
        with pytest.raises(OutboxFullError):
            await ob.hold(items[3:4])
        assert (await ob.stats()).held == 3
    async with open_outbox(max_bytes=one * 3, when_full="drop_oldest") as ob:
        await ob.hold(items[3:5])
        stats = await ob.stats()
        assert (stats.held, stats.dropped_total) == (3, 2)


async def test_run_releases_when_the_clock_syncs(outbox: Outbox, host: Host) -> None:
    import asyncio

    released = asyncio.Event()
    hb = holdback(outbox, host, on_released=lambda r: released.set())
    await hb.admit([host.read("inv1")])
    task = asyncio.create_task(hb.run(interval_seconds=0.02), name="test[holdback]")
    try:
        host.sync()
        await asyncio.wait_for(released.wait(), 10)
        assert set(await _leased(outbox)) == {"inv1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_fixture_clock_starts_in_1970_and_true_time_is_2025() -> None:
    host = Host()
    assert host.wall() < NOT_BEFORE_MS <= TRUE_START_MS == host.true_ms
    assert not host.guard().synced()


async def test_a_sync_before_the_first_admit_is_still_caught(outbox: Outbox) -> None:
    host = Host(wall_at_boot=STALE_MS)
    hb = holdback(outbox, host)          # created at start, while unsynchronised
    stale = host.read("inv1")
    host.advance(300)
    host.sync()
    ready, _ = await hb.admit([stale])
    assert (ready[0].time_ms, ready[0].clock_quality) == (host.true_ms, "restamped")
