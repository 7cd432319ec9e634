"""A tiny fleet run: 20 real gateways (own outbox, real Drain) against the emulator process, no loss."""

from __future__ import annotations

from dataclasses import replace

from agent.config import DrainConfig
from bench.fleet import FleetSpec, simulate


def test_twenty_gateways_drain_their_backlog_with_no_loss() -> None:
    # Short flush interval so the smoke run ends in seconds; the org limits are the real ones.
    spec = FleetSpec(20, outage_seconds=1200.0, drain=replace(DrainConfig(), flush_interval_seconds=2.0),
                     workers=1, deadline_seconds=60.0)
    result = simulate(spec)
    assert result["converged"], result
    assert result["backlog_rows"] == 20 * 120
    assert result["produced"] >= result["backlog_rows"]
    assert result["lost"] == 0, result
    assert result["left_in_outboxes"] == 0 and result["dead_letters"] == 0 and result["dropped"] == 0
    # Every backlog row went through the real drain (stream or bulk) and was counted by the emulator.
    assert result["sent_stream"] + result["sent_bulk"] == result["produced"]
    assert result["ingest_requests"] > 0 and result["peak_rps"] > 0


def test_a_tight_org_limit_shows_up_as_429s_and_still_loses_nothing() -> None:
    # 5 requests/s for 20 gateways that all flush at once: the limiter must refuse some, and the
    # drain's backoff must still deliver everything (the figure the fleet table is built on).
    spec = FleetSpec(20, outage_seconds=600.0, drain=replace(DrainConfig(), flush_interval_seconds=1.0,
                                                             retry_max_seconds=2.0),
                     workers=1, rate_limit_rps=5.0, deadline_seconds=60.0)
    result = simulate(spec)
    assert result["converged"], result
    assert result["requests_429"] > 0, result
    assert result["lost"] == 0, result

