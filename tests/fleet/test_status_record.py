"""The gateway status record (agent/fleet.py): its key, its fields, and when the reporter writes one.

The record is built from the same documents `solar-agent status` and `/health` show, so the inputs
here have the shape ``Agent.status()`` returns; tests/e2e/test_fleet.py checks them on a live agent.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml

from agent.clock import NOT_BEFORE_MS
from agent.fleet import (
    MAX_CATCH_UP,
    STATUS_FIELDS,
    STATUS_OBJECT,
    ReportState,
    StatusBuilder,
    StatusReporter,
    Tallies,
    interval_start,
    status_event_id,
)
from agent.records import EncodedRecord, default_schema_path, encode_json, load_schema

SCHEMA = load_schema(None, STATUS_OBJECT, STATUS_FIELDS)
BUILDER = StatusBuilder(SCHEMA, "site-7", "001CUST", "1.2.3")
T0 = 1_767_225_600_000        # 2026-01-01T00:00:00Z, a multiple of every interval used here


def status_doc(**over: Any) -> dict[str, Any]:
    """What Agent.status() returns, trimmed to what the record reads."""
    doc: dict[str, Any] = {
        "running": True, "version": "1.2.3", "site": "site-7", "uptime_s": 1234.5, "lane": "retrying",
        "devices": [{"device": "a", "state": "ok"}, {"device": "b", "state": "down"}, {"device": "c", "state": "ok"}],
        "lanes": {"stream": {"last_success_ms": T0 - 61_000}, "bulk": {"last_success_ms": None}},
        "components": {"drain.stream": {"restarts": 2}, "status": {"restarts": 1}},
        "clock": {"synced": True},
        "outbox": {"rows": 420, "bytes": 300_000, "oldest_age_s": 95.5, "held": 3, "dead_letters": 7},
        "totals": {"readings": 1000, "dead_lettered": 7, "rejected_inputs": 2, "dropped": 0},
    }
    doc.update(over)
    return doc


HEALTH = {"ok": False, "level": "degraded", "reasons": ["device_unreachable: device=b", "delivery_lagging: x"]}


def test_the_schema_file_holds_both_objects_and_the_status_object_has_every_field() -> None:
    doc = yaml.safe_load(default_schema_path().read_text(encoding="utf-8"))
    assert list(doc["components"]["schemas"]) == ["solar_panel_event", STATUS_OBJECT]
    assert SCHEMA.names == STATUS_FIELDS           # the file's order is the CSV column order
    assert SCHEMA.by_name["date_time"].format == "date-time"
    assert SCHEMA.by_name["stream_last_success"].format == "date-time"


def test_event_id_is_deterministic_per_site_and_interval() -> None:
    a = status_event_id("site-7", T0)
    assert a == status_event_id("site-7", T0)
    assert a != status_event_id("site-7", T0 + 300_000)
    assert a != status_event_id("site-8", T0)
    assert uuid.UUID(a).version == 5
    # Never the key of a reading of the same site and time: another namespace.
    from agent.records import event_id
    assert a != event_id("site-7", "site-7", T0)


def test_interval_start_is_aligned_to_the_wall_clock() -> None:
    assert interval_start(T0 + 299_999, 300_000) == T0
    assert interval_start(T0 + 300_000, 300_000) == T0 + 300_000


def test_record_fields_come_from_status_and_health() -> None:
    rec = BUILDER.build(status_doc(), HEALTH, start_ms=T0, interval_seconds=300.0,
                        new=Tallies(readings=50, dead_lettered=1, rejected_inputs=2, dropped=3))
    assert list(rec) == list(STATUS_FIELDS)
    assert rec == {
        "event_id": status_event_id("site-7", T0), "customer_id": "001CUST",
        "date_time": "2026-01-01T00:00:00.000Z", "site_id": "site-7", "agent_version": "1.2.3",
        "interval_seconds": 300.0, "uptime_seconds": 1234.5, "health_level": "degraded",
        "health_reasons": "device_unreachable: device=b | delivery_lagging: x",
        "backlog_rows": 420, "backlog_bytes": 300_000, "oldest_backlog_age_seconds": 95.5, "held_readings": 3,
        "dead_letters": 7, "dead_letters_new": 1, "rejected_inputs_new": 2, "dropped_new": 3, "readings_new": 50,
        "delivery_lane": "retrying", "stream_last_success": "2025-12-31T23:58:59.000Z", "bulk_last_success": None,
        "devices_ok": 2, "devices_total": 3, "clock_state": "synced", "component_restarts": 3,
    }


def test_encoded_record_is_compact_json_of_the_status_object_keyed_by_its_id() -> None:
    enc = BUILDER.encode(status_doc(), HEALTH, start_ms=T0, interval_seconds=300.0, new=Tallies())
    assert (enc.object, enc.event_id, enc.time_ms) == (STATUS_OBJECT, status_event_id("site-7", T0), T0)
    built = BUILDER.build(status_doc(), HEALTH, start_ms=T0, interval_seconds=300.0, new=Tallies())
    assert enc.payload == encode_json(built)      # the readings' encoding: the CSV fast path applies


def test_an_empty_agent_still_gives_a_valid_record() -> None:
    rec = BUILDER.build({"clock": {"synced": False}}, {"level": "ok", "reasons": []}, start_ms=T0,
                        interval_seconds=60.0, new=Tallies())
    assert rec["clock_state"] == "unsynced"
    assert rec["devices_total"] == 0 and rec["backlog_rows"] is None and rec["health_reasons"] == ""


def test_long_reasons_are_cut_to_keep_the_record_small() -> None:
    health = {"level": "degraded", "reasons": [f"device_silent: device=inv{i:04d} last_reading=never"
                                               for i in range(200)]}
    rec = BUILDER.build(status_doc(), health, start_ms=T0, interval_seconds=300.0, new=Tallies())
    assert len(str(rec["health_reasons"])) == 1000
    assert str(rec["health_reasons"]).startswith("device_silent: device=inv0000")


def test_the_sample_fills_every_field() -> None:
    rec = json.loads(BUILDER.sample(T0 + 1234).payload)
    assert [k for k, v in rec.items() if v is None] == []


def test_tallies_are_differences_never_negative() -> None:
    now = Tallies(100, 5, 2, 1)
    assert now.since(None) == Tallies()
    assert now.since(Tallies(90, 5, 0, 4)) == Tallies(10, 0, 2, 0)


# -- the reporter ---------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self, ms: int) -> None:
        self.ms = ms
        self.slept: list[float] = []

    def now(self) -> int:
        return self.ms

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.ms += round(seconds * 1000)


def make_reporter(t: FakeTime, interval: float = 60.0, state: ReportState | None = None,
                  totals: dict[str, int] | None = None) -> tuple[StatusReporter, list[EncodedRecord]]:
    committed: list[EncodedRecord] = []
    doc = status_doc(totals=totals or {"readings": 0})

    async def snapshot() -> tuple[dict[str, Any], dict[str, Any]]:
        return doc, {"level": "ok", "reasons": []}

    async def commit(rec: EncodedRecord) -> None:
        committed.append(rec)

    return StatusReporter(BUILDER, interval, snapshot, commit, state or ReportState(), now_ms=t.now,
                          sleep=t.sleep), committed


async def test_one_record_per_interval_for_the_interval_that_ended() -> None:
    t = FakeTime(T0 + 60_000)                     # the first boundary after the start
    rep, committed = make_reporter(t)
    [first] = await rep.report_due()
    assert first.time_ms == T0 and first.event_id == status_event_id("site-7", T0)
    assert await rep.report_due() == []           # the same boundary again: nothing new
    t.ms = T0 + 120_500
    [second] = await rep.report_due()
    assert second.time_ms == T0 + 60_000
    assert [r.time_ms for r in committed] == [T0, T0 + 60_000]


async def test_a_late_wake_catches_up_a_few_intervals_and_no_more() -> None:
    t = FakeTime(T0)
    rep, committed = make_reporter(t, totals={"readings": 10})
    rep.state.last_start_ms = T0 - 60_000
    rep.state.baseline = Tallies(readings=4)
    t.ms = T0 + 10 * 60_000 + 5                   # ten intervals later (a suspended machine)
    await rep.report_due()
    assert [r.time_ms for r in committed] == [T0 + (9 - i) * 60_000 for i in reversed(range(MAX_CATCH_UP))]
    news = [json.loads(r.payload)["readings_new"] for r in committed]
    assert news == [6, 0, 0]                      # the difference is counted once


async def test_a_clock_going_back_writes_nothing_twice() -> None:
    t = FakeTime(T0 + 60_000)
    rep, committed = make_reporter(t)
    rep.state.last_start_ms = T0
    t.ms = T0 + 30_000                            # NTP stepped the clock back
    assert await rep.report_due() == []
    assert committed == []


async def test_a_clock_before_the_build_date_writes_no_record() -> None:
    t = FakeTime(60_000)                          # 1970: no RTC, no NTP yet
    rep, committed = make_reporter(t)
    assert await rep.report_due() == []
    assert committed == [] and rep.state.skipped_unsynced == 1
    assert t.ms < NOT_BEFORE_MS


async def test_run_sleeps_to_each_boundary_and_state_survives_a_new_reporter() -> None:
    t = FakeTime(T0 + 45_000)
    state = ReportState()
    rep, committed = make_reporter(t, state=state)

    async def stop_after_two(seconds: float) -> None:
        await FakeTime.sleep(t, seconds)
        if len(committed) >= 2:
            raise StopReporting

    rep._sleep = stop_after_two
    with pytest.raises(StopReporting):
        await rep.run()
    assert t.slept[0] == 15.0                     # to the first boundary, not a whole interval
    assert [r.time_ms for r in committed] == [T0, T0 + 60_000]
    # A reload builds a new reporter with the agent's state: it goes on, it does not repeat.
    rep2, _ = make_reporter(t, state=state)
    t.ms = T0 + 180_000
    [rec] = await rep2.report_due()
    assert rec.time_ms == T0 + 120_000 and state.reports == 3


class StopReporting(Exception):
    """Ends the reporter's loop in the test (the agent cancels it)."""
