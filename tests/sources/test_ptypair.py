"""The virtual serial cable itself: unplugging side B under traffic never kills the relay.

The relay thread used to register and read fds that ``unplug`` closed from another thread; an
EBADF in ``selector.register`` ended the thread, and every later request timed out (issue #12:
test_serial_port_that_disappears_is_reopened failed about one run in fifteen)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from agent.simulators.ptypair import PtyPair


def _roundtrip(pair: PtyPair, payload: bytes) -> bytes:
    b = os.open(pair.b, os.O_RDWR | os.O_NOCTTY)
    a = os.open(pair.a, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.write(b, payload)
        got = b""
        deadline = time.monotonic() + 5
        while len(got) < len(payload) and time.monotonic() < deadline:
            try:
                got += os.read(a, 4096)
            except BlockingIOError:
                time.sleep(0.005)    # polling a non-blocking fd with a deadline
        return got
    finally:
        os.close(a)
        os.close(b)


def test_replugging_under_traffic_keeps_the_relay_alive(tmp_path: Path) -> None:
    with PtyPair(tmp_path / "A", tmp_path / "B") as pair:
        stop = threading.Event()

        def chatter() -> None:             # side A talks all the time, as a simulator answering
            fd = os.open(pair.a, os.O_RDWR | os.O_NOCTTY)
            try:
                while not stop.is_set():
                    os.write(fd, b"\x01\x03\x02\x00\x01")
            finally:
                os.close(fd)

        talker = threading.Thread(target=chatter, daemon=True)
        talker.start()
        for _ in range(300):
            pair.replug()
        stop.set()
        talker.join(5)
        assert pair._thread.is_alive(), "the relay thread died"
        assert _roundtrip(pair, b"still connected") == b"still connected"
