"""The running agent talks to systemd: READY, STATUS, and WATCHDOG=1 fed from the drain loop.

The sources are real Modbus buses with a dead unit: a silent inverter must never starve the
watchdog (that would make systemd restart a healthy agent every minute)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.clock import ClockGuard
from agent.config import load_config
from agent.runtime import Agent
from tests.cli.conftest import write_config
from tests.peers.emulator import make_keypair


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "1000000")       # 1 s: the agent pings every 0.5 s
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        yield sock


async def _messages(sock: socket.socket, until: str, count: int, deadline_s: float) -> list[str]:
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    async with asyncio.timeout(deadline_s):
        while sum(m == until for m in seen) < count:
            data = await loop.sock_recv(sock, 4096)
            seen += data.decode().splitlines()
    return seen


async def test_ready_status_and_watchdog_with_a_dead_device(tmp_path: Path, notify_socket: socket.socket) -> None:
    make_keypair(tmp_path)
    # A TCP bus whose inverter never answers (nothing listens on the port).
    site = write_config(tmp_path, extra="""
[[modbus]]
name = "lan"
transport = "tcp"
host = "127.0.0.1"
tcp_port = 9
timeout_seconds = 0.2
poll_interval_seconds = 0.2
[[modbus.devices]]
unit_id = 1
""")
    agent = Agent(load_config(site.config), clock=ClockGuard(assume_synced=True))
    task = asyncio.create_task(agent.run())
    try:
        seen = await _messages(notify_socket, "WATCHDOG=1", 4, deadline_s=15)
    finally:
        agent.request_stop()
        assert await asyncio.wait_for(task, 15) == 0
    assert "READY=1" in seen
    assert seen.index("READY=1") < seen.index("WATCHDOG=1")
    assert any(m.startswith("STATUS=backlog=") for m in seen)
