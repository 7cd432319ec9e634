"""Virtual serial pairs for Modbus RTU tests: a null-modem cable between two pty paths.

``pty_pair`` is the pure-Python pair (``agent.simulators.ptypair``: supports fault injection and
``replug()``); ``socat_pair`` uses socat with ``link=`` names in tmp_path when socat is installed.
Both are stopped and cleaned up by the fixture. Import the fixtures in a test module or conftest:
``from tests.peers.serial import pty_pair, serial_pair  # noqa: F401``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.simulators.ptypair import PtyPair


@dataclass(frozen=True, slots=True)
class SerialPair:
    device_side: str      # the simulator opens this one
    agent_side: str       # the agent (or pysunspec2) opens this one


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    """A started pure-Python pty pair: ``.a`` for the simulator, ``.b`` for the agent."""
    with PtyPair(tmp_path / "ttySIM", tmp_path / "ttyAGENT") as pair:
        yield pair


def _socat(tmp_path: Path) -> Iterator[SerialPair]:
    a, b = tmp_path / "ttyS_SIM", tmp_path / "ttyS_AGENT"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        # socat creates the links asynchronously: poll the condition with a deadline.
        while not (a.is_symlink() and b.is_symlink()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("socat did not create the pty links")
            time.sleep(0.01)
        yield SerialPair(str(a), str(b))
    finally:
        proc.terminate()
        proc.wait(timeout=5)


@pytest.fixture
def socat_pair(tmp_path: Path) -> Iterator[SerialPair]:
    """A socat null-modem pair (skipped when socat is not installed)."""
    if shutil.which("socat") is None:
        pytest.skip("socat not installed")
    yield from _socat(tmp_path)


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[SerialPair]:
    """socat when available, else the pure-Python pair."""
    if shutil.which("socat") is not None:
        yield from _socat(tmp_path)
        return
    with PtyPair(tmp_path / "ttySIM", tmp_path / "ttyAGENT") as pair:
        yield SerialPair(pair.a, pair.b)
