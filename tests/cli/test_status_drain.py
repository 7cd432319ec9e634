"""`status` and `drain --now` against a real in-process Agent, the control routes on the real server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import MAX_COMMIT_INTERVAL_MS
from agent.metrics import AgentMetrics
from agent.records import EncodedRecord, Reading, RecordBuilder, load_schema
from agent.status import HealthReport, StatusServer, SupportsControl
from tests.cli.conftest import cli, running_agent, write_config
from tests.peers.emulator import make_keypair, running_emulator


def records(n: int, device: str = "inv-1") -> list[EncodedRecord]:
    builder = RecordBuilder(load_schema(), "cli-site", "001CLI0000000001", "test")
    t0 = int(time.time() * 1000) - n * 1000
    return [builder.encode(Reading(device, t0 + i * 1000, "sunspec-rtu", {"ac_power_w": 100.0 + i}))
            for i in range(n)]


async def test_status_of_a_running_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path)
    async with running_agent(site) as agent:
        assert agent.outbox is not None
        await agent.outbox.append(records(7))
        assert await cli("status", "--config", site.config) == 0
        out = capsys.readouterr().out
        assert await cli("status", "--config", site.config, "--json") == 0
        doc = json.loads(capsys.readouterr().out)
    first = out.splitlines()[0]
    assert first.startswith("health   ")
    assert "lanes" in out and "stream" in out and "bulk" in out
    assert "rows 7" in out and str(site.outbox) in out
    assert "clock    synchronised" in out
    assert doc["running"] is True and doc["outbox"]["rows"] == 7


async def test_status_when_the_agent_is_down_shows_the_backlog(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path)
    async with running_agent(site) as agent:
        assert agent.outbox is not None
        await agent.outbox.append(records(5))
    assert await cli("status", "--config", site.config) == 3
    out = capsys.readouterr().out
    assert "agent is NOT running" in out
    assert "Try: systemctl status solar-agent; journalctl -u solar-agent -n 50" in out
    assert "5 rows" in out and "read-only" in out
    # read-only: no -wal/-shm appeared next to the cleanly closed outbox
    leftovers = sorted(p.name for p in site.dir.iterdir() if p.name.startswith("outbox.db-"))
    assert leftovers == []


async def test_status_with_only_a_socket_and_no_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = await cli("status", "--config", tmp_path / "missing.toml", "--socket", tmp_path / "none.sock")
    assert code == 3
    assert "NOT running" in capsys.readouterr().out


async def test_status_with_a_bad_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("status", "--config", tmp_path / "missing.toml") == 2
    assert "Error:" in capsys.readouterr().err


async def test_drain_now_delivers_before_the_flush_interval(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=600.0)
        async with running_agent(site) as agent:
            assert agent.outbox is not None
            await agent.outbox.append(records(20))
            started = time.monotonic()
            assert await cli("drain", "--now", "--config", site.config) == 0
            took = time.monotonic() - started
            assert len(emu.store.keys()) == 20
            assert (await agent.outbox.stats()).rows == 0
    out = capsys.readouterr().out
    assert "outbox 20 -> 0 rows" in out and "streamed 20 rows" in out
    assert took < 15  # the flush interval is 600 s: only the operator's request can explain it


async def test_drain_now_commits_the_readings_waiting_for_their_group_commit(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Polled readings wait up to commit_interval_ms in memory; "now" must not leave them behind.
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key, flush_interval_seconds=600.0)
        linger = f"[outbox]\ncommit_interval_ms = {MAX_COMMIT_INTERVAL_MS}\n"
        site.config.write_text(site.config.read_text().replace("[outbox]\n", linger))
        async with running_agent(site) as agent:
            assert agent.outbox is not None
            committed = agent.outbox.enqueue(records(12))
            assert not committed.done()
            assert await cli("drain", "--now", "--config", site.config) == 0
            assert committed.done()
            assert len(emu.store.keys()) == 12
    assert "outbox 12 -> 0 rows" in capsys.readouterr().out


async def test_drain_now_reports_a_failed_attempt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path, login_url="http://127.0.0.1:9")   # nothing listens on port 9
    async with running_agent(site) as agent:
        assert agent.outbox is not None
        await agent.outbox.append(records(3))
        assert await cli("drain", "--now", "--config", site.config) == 1
    captured = capsys.readouterr()
    assert "Error: delivery failed" in captured.err and "Try:" in captured.err


async def test_drain_when_the_agent_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path)
    assert await cli("drain", "--now", "--config", site.config) == 3
    assert "NOT running" in capsys.readouterr().out
    assert await cli("drain", "--config", site.config) == 2
    assert "Try: solar-agent drain --now" in capsys.readouterr().err


class ControlProvider:
    """A provider with the control capability, counting what it was asked."""

    def __init__(self) -> None:
        self.flushes: list[bool] = []
        self.requeued: list[list[str] | None] = []

    async def status(self) -> dict[str, Any]:
        return {"running": True}

    def health(self) -> HealthReport:
        return HealthReport(True, [])

    def metrics_text(self) -> str:
        return AgentMetrics().render()

    async def flush_now(self, *, bulk: bool = False, wait_seconds: float = 10.0) -> dict[str, Any]:
        self.flushes.append(bulk)
        return {"rows_before": 0}

    async def requeue_dead_letters(self, event_ids: Any) -> int:
        self.requeued.append(None if event_ids is None else list(event_ids))
        return 2


async def test_control_routes_only_on_the_unix_socket(tmp_path: Path) -> None:
    provider = ControlProvider()
    assert isinstance(provider, SupportsControl)
    token = "tcp-token-0123456789abcdef"
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    sock = tmp_path / "s.sock"
    async with StatusServer(provider, socket_path=sock, listen="127.0.0.1:0", token_file=tmp_path / "token") as srv:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as tcp:
            base = f"http://127.0.0.1:{srv.tcp_port}"
            async with tcp.get(base + "/health", headers=headers) as r:
                assert r.status == 200          # the token works on TCP ...
            async with tcp.post(base + "/control/drain?bulk=1", headers=headers) as r:
                assert r.status == 404          # ... but the control routes do not exist there
            async with tcp.post(base + "/control/requeue", headers=headers, json={"all": True}) as r:
                assert r.status == 404
        assert provider.flushes == [] and provider.requeued == []
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as unix:
            async with unix.post("http://a/control/drain?bulk=1") as r:
                assert r.status == 200
            async with unix.post("http://a/control/requeue", json={"ids": ["x", "y"]}) as r:
                assert (await r.json()) == {"requeued": 2}
            async with unix.post("http://a/control/requeue", json={"ids": []}) as r:
                assert r.status == 400
            async with unix.post("http://a/control/drain?bulk=yes") as r:
                assert r.status == 400
    assert provider.flushes == [True] and provider.requeued == [["x", "y"]]
