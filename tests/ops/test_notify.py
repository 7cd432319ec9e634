"""sd_notify datagrams, read from a socket the test owns, and the loop-fed watchdog."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.notify import Notifier, Watchdog, watchdog_interval


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    yield str(path), sock
    sock.close()


def _recv(sock: socket.socket) -> str:
    # Local datagrams are queued by the time sendto() returns, so a non-blocking read is exact.
    return sock.recv(4096).decode()


def _nothing_pending(sock: socket.socket) -> bool:
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


def test_messages(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready(status="started")
    assert _recv(sock) == "READY=1\nSTATUS=started"
    n.status("backlog 12 rows\nsecond line")
    assert _recv(sock) == "STATUS=backlog 12 rows second line"
    n.watchdog()
    assert _recv(sock) == "WATCHDOG=1"
    n.stopping()
    assert _recv(sock) == "STOPPING=1"
    assert _nothing_pending(sock)
    n.close()


def test_abstract_socket_name() -> None:
    name = f"solar-agent-test-{os.getpid()}-{id(object())}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        n = Notifier(f"@{name}")
        assert n.ready()
        sock.settimeout(5)
        assert sock.recv(100) == b"READY=1"
        n.close()
    finally:
        sock.close()


def test_no_socket_is_a_no_op(tmp_path: Path) -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready() and not n.watchdog() and not n.status("x") and not n.stopping()
    # A socket that vanished is not an error either.
    with Notifier(str(tmp_path / "absent.sock")) as gone:
        assert gone.watchdog() is False


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 10, None),
        ({"WATCHDOG_USEC": "60000000"}, 10, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "10"}, 10, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "11"}, 10, None),
        ({"WATCHDOG_USEC": "0"}, 10, None),
        ({"WATCHDOG_USEC": "junk"}, 10, None),
        ({"WATCHDOG_USEC": "1500000"}, 10, 1.5),
    ],
)
def test_watchdog_interval(env: dict[str, str], pid: int, expected: float | None) -> None:
    assert watchdog_interval(env, pid=pid) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_pings_only_when_every_loop_beat(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    clock = FakeClock()
    with Notifier(address) as notifier:
        _watchdog_table(notifier, sock, clock)


def _watchdog_table(notifier: Notifier, sock: socket.socket, clock: FakeClock) -> None:
    dog = Watchdog(notifier, clock=clock)
    dog.register("drain", 30)
    dog.register("modbus:bus0", 20)

    assert dog.check() and _recv(sock) == "WATCHDOG=1"  # freshly registered loops are within grace

    clock.now += 25
    dog.beat("drain")
    assert dog.stale() == ["modbus:bus0"]
    assert not dog.check()
    assert _nothing_pending(sock)

    dog.beat("modbus:bus0")
    assert dog.check() and _recv(sock) == "WATCHDOG=1"

    clock.now += 31
    dog.beat("modbus:bus0")
    assert dog.stale() == ["drain"] and not dog.check() and _nothing_pending(sock)

    dog.unregister("drain")
    assert dog.check() and _recv(sock) == "WATCHDOG=1"

    with pytest.raises(KeyError):
        dog.beat("typo")
    with pytest.raises(ValueError):
        dog.register("x", 0)


def test_default_period() -> None:
    clock = FakeClock()
    dog = Watchdog(Notifier(None), default_period_seconds=50, clock=clock)
    dog.register("mqtt:dtu")
    clock.now += 50
    assert dog.stale() == []
    clock.now += 0.1
    assert dog.stale() == ["mqtt:dtu"]


async def test_watchdog_run_sends_from_a_task(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    notifier = Notifier(address)
    dog = Watchdog(notifier)
    dog.register("drain", 60)
    task = asyncio.create_task(dog.run(0.01), name="test.watchdog")
    try:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 100), 5)
        assert data == b"WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        notifier.close()
