"""SIGKILL a writer at random moments: every id it was told is durable must survive, no lease stays."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox

ROOT = Path(__file__).resolve().parents[2]


def _run_and_kill(path: Path, seed: int, rng: random.Random) -> set[str]:
    """Start the writer, let it acknowledge a random number of lines, SIGKILL it; returns the acked ids."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox._crash_writer", str(path), str(seed)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline()
        assert first == b"ready\n", (first, proc.stderr.read() if proc.stderr else b"")
        for _ in range(rng.choice([0, 1, rng.randint(2, 50), rng.randint(50, 400)])):
            if not proc.stdout.readline():
                break
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait(timeout=30)
        stderr = proc.stderr.read() if proc.stderr else b""
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    lines = rest.split(b"\n")[:-1]                   # a last line without newline was not fully printed
    return {ln.decode() for ln in lines}


async def _check(path: Path, acked: set[str]) -> None:
    async with Outbox(OutboxConfig(path=path)) as ob:
        st = await ob.stats()
        assert st.leased == 0, "a lease survived the crash"
    with sqlite3.connect(path) as conn:
        present = {r[0] for r in conn.execute("SELECT event_id FROM events")}
        count, total = conn.execute("SELECT count(*), total(bytes) FROM events").fetchone()
        assert conn.execute("SELECT count(*) FROM events WHERE lease_id IS NOT NULL").fetchone() == (0,)
    lost = acked - present
    assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[:5]}"
    assert (st.rows, st.bytes) == (count, int(total)), "running totals drifted from the rows"


async def _crash_cycles(tmp_path: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "outbox.db"
    acked: set[str] = set()
    for i in range(cycles):
        acked |= _run_and_kill(path, seed * 1000 + i, rng)
        await _check(path, acked)
    assert len(acked) > cycles        # the test did write something to lose


async def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    await _crash_cycles(tmp_path, cycles=20, seed=int.from_bytes(os.urandom(2), "big"))


@pytest.mark.soak
async def test_sigkill_soak(tmp_path: Path) -> None:
    await _crash_cycles(tmp_path, cycles=300, seed=int.from_bytes(os.urandom(2), "big"))
