"""A connector whose schema is not ours: delivery stops, no row is lost or dead-lettered, in both of
the emulator's modes (synchronous 400 with a report, and fire-and-forget 202 with records dropped at
processing), and delivery resumes by itself once the connector's schema matches.

The connector's schema is the shipped one without ``power_factor_pct`` (an older file uploaded by a
technician): Data Cloud refuses the extra field ("extraneous key ... is not permitted").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml

from agent.bulk_lane import BulkLane
from agent.config import DataCloudConfig, OutboxConfig
from agent.datacloud import BulkClient, Pacer, StreamingClient, TokenProvider
from agent.drain import Drain
from agent.emulator import Emulator, EmulatorSettings
from agent.outbox import Outbox
from agent.records import EncodedRecord, default_schema_path
from agent.runtime import full_record_of
from agent.schema_guard import SchemaGuard
from tests.drain.test_drain import BUILDER, SCHEMA, drain_config, records
from tests.peers.emulator import CLIENT_ID, USERNAME, make_keypair
from tests.waiting import wait_for


def full_record() -> EncodedRecord:
    return full_record_of(BUILDER, 1_780_000_000_000)


def _older_schema(tmp_path: Path) -> Path:
    doc = yaml.safe_load(default_schema_path().read_text())
    del doc["components"]["schemas"]["solar_panel_event"]["properties"]["power_factor_pct"]
    path = tmp_path / "older.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@contextlib.asynccontextmanager
async def _emulator(tmp_path: Path, public: bytes, port: int = 0, **kw: object) -> AsyncIterator[Emulator]:
    settings = EmulatorSettings(public_key_pem=public, client_id=CLIENT_ID, username=USERNAME, port=port,
                                db_path=tmp_path / f"landed-{port}.sqlite", **kw)  # type: ignore[arg-type]
    async with Emulator(settings) as emu:
        yield emu


@contextlib.asynccontextmanager
async def _drain(tmp_path: Path, url: str, outbox: Outbox) -> AsyncIterator[Drain]:
    cfg = drain_config(flush_interval_seconds=0.2, batch_max_bytes=8_000)
    async with aiohttp.ClientSession() as session:
        dc = DataCloudConfig(login_url=url, client_id=CLIENT_ID, username=USERNAME,
                             private_key_path=tmp_path / "jwt.key", source_name="solar_agent", timeout_seconds=5.0)
        tokens = TokenProvider(dc, session)
        stream = StreamingClient(tokens, session, "solar_agent", "solar_panel_event",
                                 max_body_bytes=cfg.batch_max_bytes)
        bulk = BulkLane(BulkClient(tokens, session, "solar_agent", "solar_panel_event"), outbox, SCHEMA,
                        max_file_bytes=cfg.bulk_file_max_bytes, tmp_dir=tmp_path, poll_initial_seconds=0.05)

        async def samples() -> list[bytes]:
            rows = await outbox.peek(1)
            return [r.payload for r in rows] + [full_record().payload]

        drain = Drain(outbox, stream, bulk, cfg, pacer=Pacer(cfg.max_requests_per_second), samples=samples)
        task = asyncio.create_task(drain.run())
        try:
            yield drain
        finally:
            drain.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("fire_and_forget", [False, True])
async def test_a_mismatched_connector_stops_delivery_and_keeps_every_row(tmp_path: Path, fire_and_forget: bool) -> None:
    _, public = make_keypair(tmp_path)
    recs = records(120)
    async with Outbox(OutboxConfig(path=tmp_path / "outbox.db")) as outbox:
        await outbox.append(recs)
        async with _emulator(tmp_path, public, schema_path=_older_schema(tmp_path),
                             fire_and_forget=fire_and_forget) as bad:
            port = int(bad.url.rsplit(":", 1)[1])
            async with _drain(tmp_path, bad.url, outbox) as drain:
                await wait_for(lambda: bool(drain.guard.mismatch), 15, "the mismatch found")
                assert "power_factor_pct" in drain.guard.mismatch
                assert drain.lane == "stopped"
                stats = await outbox.stats()
                assert (stats.rows, stats.dead_letters) == (120, 0), stats
                assert bad.store.count() == 0
                # Fire-and-forget would have dropped them at processing: the dry run stopped us first.
                assert bad.dropped.total == 0
                assert drain.guard.detected_by == "validation"
        # The technician uploads the right schema (same org, same address); an operator's
        # `drain --now` checks again at once, and everything is delivered.
        async with _emulator(tmp_path, public, port=port, fire_and_forget=fire_and_forget) as good:
            async with _drain(tmp_path, good.url, outbox) as drain:
                drain.flush_now()
                await good.wait_landed(120, timeout=20)
                await wait_for(lambda: _empty(outbox), 15, "every row acked")
                assert not drain.guard.mismatch
            assert good.store.keys() == {r.event_id for r in recs}
        stats = await outbox.stats()
        assert (stats.rows, stats.dead_letters) == (0, 0)


def _date_schema(tmp_path: Path) -> Path:
    """date_time uploaded as a date: every record is refused with its own value in the reason
    (everit's format message, ``#/date_time: [<value>] is not a valid date``)."""
    doc = yaml.safe_load(default_schema_path().read_text())
    doc["components"]["schemas"]["solar_panel_event"]["properties"]["date_time"]["format"] = "date"
    path = tmp_path / "date.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("connector", [_older_schema, _date_schema])
async def test_without_the_dry_run_two_refused_batches_stop_delivery(
        tmp_path: Path, connector: Callable[[Path], Path]) -> None:
    """Where /actions/test is not offered, the refusals themselves tell a schema from bad records."""
    _, public = make_keypair(tmp_path)
    async with Outbox(OutboxConfig(path=tmp_path / "outbox.db")) as outbox:
        await outbox.append(records(120))
        async with _emulator(tmp_path, public, schema_path=connector(tmp_path)) as bad, \
                _drain(tmp_path, bad.url, outbox) as drain:
            drain._validate_at = float("inf")           # as if the org answered 404 to the dry run
            await wait_for(lambda: bool(drain.guard.mismatch), 15, "the mismatch found by refusals")
            assert drain.guard.detected_by == "refusals"
            stats = await outbox.stats()
            assert (stats.rows, stats.dead_letters) == (120, 0), stats


async def test_bad_records_among_good_ones_are_still_dead_lettered(tmp_path: Path) -> None:
    """Readings the connector refuses on their own merit must not look like a schema mismatch."""
    _, public = make_keypair(tmp_path)
    async with Outbox(OutboxConfig(path=tmp_path / "outbox.db")) as outbox:
        good = records(40)
        # A record with a field the connector does not know: built by hand, as a buggy profile would.
        bad = [r.__class__(r.event_id.replace("-", "f", 1), r.payload.replace(b'"site_id"', b'"bogus":1,"site_id"'),
                           r.time_ms) for r in records(1, device="odd")]
        await outbox.append(bad + good)
        async with _emulator(tmp_path, public) as emu, _drain(tmp_path, emu.url, outbox) as drain:
            await emu.wait_landed(40, timeout=20)
            await wait_for(lambda: _dead(outbox), 15, "the bad record dead-lettered")
            assert not drain.guard.mismatch


async def _empty(outbox: Outbox) -> bool:
    return (await outbox.stats()).rows == 0


async def _dead(outbox: Outbox) -> bool:
    return (await outbox.stats()).dead_letters == 1


@pytest.mark.parametrize(("batches", "verdicts", "mismatch"), [
    # Two batches, other rows, one reason: the schema.
    ([{"a": "x", "b": "x"}, {"c": "x"}], ["defer", "mismatch"], True),
    # Reasons differ: the records, not the schema.
    ([{"a": "x", "b": "y"}], ["dead_letter"], False),
    # One record refused twice, alone: a bad record.
    ([{"a": "x"}, {"a": "x"}], ["defer", "dead_letter"], False),
    # Another reason the second time: start counting again.
    ([{"a": "x"}, {"b": "y"}, {"c": "y"}], ["defer", "defer", "mismatch"], True),
])
def test_guard_verdicts(batches: list[dict[str, str]], verdicts: list[str], mismatch: bool) -> None:
    guard = SchemaGuard()
    assert [guard.on_refused(b) for b in batches] == verdicts
    assert bool(guard.mismatch) is mismatch


def test_deferred_rows_refused_again_after_others_passed_are_dead_letters() -> None:
    guard = SchemaGuard()
    assert guard.on_refused({"a": "x", "b": "x"}) == "defer"
    guard.on_accepted()                               # the next batch went through
    assert guard.on_refused({"a": "x", "b": "x"}) == "dead_letter"
    assert not guard.mismatch
    assert BUILDER is not None
