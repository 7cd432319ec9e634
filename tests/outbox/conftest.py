"""Fixtures for the outbox suite: a real SQLite file in tmp_path, an injectable clock, real records."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema

_BUILDER = RecordBuilder(load_schema(), site_id="site-1", customer_id="cust-1", agent_version="test")


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, ms: int = 1_700_000_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def make_records(n: int, *, start: int = 0, device: str = "inv1") -> list[EncodedRecord]:
    """``n`` realistic records (~600-800 bytes of JSON) with distinct reading times."""
    out = []
    for i in range(start, start + n):
        metrics = {
            "ac_power_w": 1000.5 + i, "ac_energy_wh": 1.5e7 + i, "ac_voltage_v": 230.1, "ac_current_a": 4.35,
            "ac_frequency_hz": 50.01, "dc_power_w": 1100.0, "dc_voltage_v": 380.2, "temperature_c": 41.5,
            "operating_state": "MPPT",
        }
        out.append(_BUILDER.encode(Reading(device, 1_700_000_000_000 + i * 1000, "sunspec-rtu", metrics)))
    return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def open_outbox(db_path: Path, clock: Clock) -> Callable[..., Any]:
    """Factory: ``async with open_outbox(max_bytes=...) as ob``, same file each time."""

    def factory(**overrides: Any) -> Outbox:
        return Outbox(OutboxConfig(path=db_path, **overrides), now_ms=clock)

    return factory


@pytest.fixture
async def outbox(open_outbox: Callable[..., Outbox]) -> AsyncIterator[Outbox]:
    async with open_outbox() as ob:
        yield ob
