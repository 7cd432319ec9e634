"""SIGKILL a process that is holding readings: every hold that returned is still there, and re-stamps right."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import decode_json, format_time
from tests.clock.conftest import TRUE_START_MS, Host, holdback

ROOT = Path(__file__).resolve().parents[2]


def _kill_after(path: Path, lines: int) -> list[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.clock._hold_writer", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        first = proc.stdout.readline()
        assert first == b"ready\n", (first, proc.stderr.read())
        acked = [proc.stdout.readline().decode().strip() for _ in range(lines)]
        os.kill(proc.pid, signal.SIGKILL)
        acked += [x for x in proc.stdout.read().decode().split("\n")[:-1]]
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return [a for a in acked if a]


async def test_held_readings_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    acked = _kill_after(path, 40)
    assert len(acked) >= 40
    host = Host()
    host.advance(10**7)            # same boot, later; the child's readings are all in the past
    async with Outbox(OutboxConfig(path=path, min_free_bytes=0), now_ms=host.wall) as ob:
        held = await ob.held_count()
        assert held >= len(acked)
        host.sync()
        result = await holdback(ob, host).release()
        assert result is not None and result.restamped == held
        lease = await ob.lease(10**6, 10**9)
        assert lease is not None
        times = {}
        for row in lease.rows:
            rec = decode_json(row.payload)
            times[str(rec["device_id"])] = rec["date_time"]
    assert set(acked) <= set(times)
    for dev, when in times.items():
        assert when == format_time(TRUE_START_MS + (int(dev[3:]) + 1) * 1000), dev
