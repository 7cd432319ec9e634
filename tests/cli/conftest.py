"""Helpers for the CLI tests: a site config written as TOML in tmp_path, an in-process agent, and
``cli(...)``, which runs ``agent.cli.main`` in a worker thread (the commands call ``asyncio.run``,
which cannot nest inside the test's own event loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.cli import main
from agent.clock import ClockGuard
from agent.config import load_config
from agent.runtime import Agent


@dataclass(frozen=True, slots=True)
class Site:
    dir: Path
    config: Path
    outbox: Path
    socket: Path
    key: Path


def write_config(tmp_path: Path, *, login_url: str = "http://127.0.0.1:9", key: Path | None = None,
                 client_id: str = "solar-agent", username: str = "agent@solar.example",
                 flush_interval_seconds: float = 30.0, extra: str = "", fleet_interval_seconds: float = 0) -> Site:
    """A valid site.toml in ``tmp_path``; ``extra`` appends [[modbus]] / [[mqtt]] sections.

    Gateway status records are off unless asked for (``fleet_interval_seconds``): one written at a
    5-minute boundary must not show up in a test that counts rows.
    """
    key = key or tmp_path / "jwt.key"
    site = Site(tmp_path, tmp_path / "site.toml", tmp_path / "outbox.db", tmp_path / "status.sock", key)
    site.config.write_text(f"""
[site]
id = "cli-site"
customer_id = "001CLI0000000001"

[outbox]
path = "{site.outbox}"

[datacloud]
login_url = "{login_url}"
client_id = "{client_id}"
username = "{username}"
private_key_path = "{key}"
source_name = "solar_agent"
timeout_seconds = 5.0

[drain]
flush_interval_seconds = {flush_interval_seconds}
max_requests_per_second = 50.0
retry_max_seconds = 2.0

[status]
socket_path = "{site.socket}"

[fleet]
interval_seconds = {fleet_interval_seconds}
{extra}
""", encoding="utf-8")
    return site


async def cli(*args: str | Path) -> int:
    """``solar-agent ARGS...`` in-process (in a thread); output goes to capsys."""
    return await asyncio.to_thread(main, [str(a) for a in args])


@contextlib.asynccontextmanager
async def running_agent(site: Site) -> AsyncIterator[Agent]:
    """The real Agent on the site config, without sources, until the block ends."""
    agent = Agent(load_config(site.config), source_factory=lambda cfg: [], clock=ClockGuard(assume_synced=True))
    task = asyncio.create_task(agent.run(), name="test[agent]")
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        yield agent
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 15) == 0


def help_of(args: Sequence[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*args, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out
