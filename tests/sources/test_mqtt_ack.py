"""Acks follow durability: a source killed after receiving but before committing loses nothing.

The source runs in a child process (this file run as a script) whose ``emit`` is a file-backed
commit (append JSON lines + fsync). In ``block`` mode it commits the first readings, then blocks
forever inside ``emit``; the test SIGKILLs it there, restarts it with the same client id, and
checks that the broker redelivered every message that had not been acked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.peers.mosquitto import Broker, mosquitto_broker  # noqa: F401 (fixture)
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
COMMIT_BEFORE_BLOCK = 2


async def _child(url: str, out: str, mode: str) -> None:
    from agent.config import MqttConfig
    from agent.sources.mqtt import MqttSource

    cfg = MqttConfig(name="ack", url=url, profile="generic", topics=("ack/+/telemetry",),
                     fields=(("ac_power_w", "W"),), time_path="ts", client_id="ack-crash-test")
    started = 0

    def append(lines: list[str]) -> None:
        with open(out, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    async def emit(readings: object) -> None:
        # Counted on entry: the source pipelines its commits, so several emits run at once.
        nonlocal started
        started += 1
        if mode == "block" and started > COMMIT_BEFORE_BLOCK:
            await asyncio.to_thread(append, [])
            Path(out + ".blocked").touch()
            await asyncio.Event().wait()         # received, never committed: SIGKILL lands here
        lines = [json.dumps({"device_id": r.device_id, "time_ms": r.time_ms}) + "\n" for r in readings]  # type: ignore[attr-defined]
        await asyncio.to_thread(append, lines)

    await MqttSource(cfg, "site").run(emit)


def _committed(out: Path) -> list[tuple[str, int]]:
    if not out.exists():
        return []
    return [(d["device_id"], d["time_ms"]) for d in map(json.loads, out.read_text().splitlines())]


def _spawn(broker: Broker, out: Path, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, broker.url, str(out), mode], cwd=ROOT, env=env)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


async def test_sigkill_before_commit_loses_nothing(mosquitto_broker: Broker, tmp_path: Path) -> None:
    from agent.simulators.mqtt_publishers import Message, MqttPublisher

    out = tmp_path / "committed.jsonl"
    t0 = int(time.time())
    async with MqttPublisher("generic", mosquitto_broker.url, (), client_id="ack-pub") as pub:
        # 1. create the persistent session (and its subscription) with a committing child
        child = _spawn(mosquitto_broker, out, "commit")
        try:
            n = 0
            while not _committed(out):
                assert child.poll() is None, "child died"
                await pub.publish([Message("ack/probe/telemetry", json.dumps({"ts": t0 - 100 + n, "W": 0}).encode())])
                n += 1
                await asyncio.sleep(0.1)     # re-probe until the subscription is live
        finally:
            _kill(child)
        out.unlink()
        # 2. publish while the source is down; the broker queues for the session
        msgs = [Message(f"ack/inv{k}/telemetry", json.dumps({"ts": t0 + k, "W": 100 + k}).encode()) for k in range(6)]
        await pub.publish(msgs)
    want = {(f"inv{k}", (t0 + k) * 1000) for k in range(6)}

    # 3. a child that commits two readings, then blocks in emit; SIGKILL it there
    child = _spawn(mosquitto_broker, out, "block")
    try:
        await wait_for(lambda: Path(str(out) + ".blocked").exists() or child.poll() is not None, 15, "emit to block")
        assert child.poll() is None, "child died before blocking"
    finally:
        _kill(child)
    before = {x for x in _committed(out) if x[0] != "probe"}
    assert len(before) == COMMIT_BEFORE_BLOCK and before < want

    # 4. restart with the same client id: the broker redelivers what was never acked
    child = _spawn(mosquitto_broker, out, "commit")
    try:
        await wait_for(lambda: want <= set(_committed(out)), 15, "redelivery of the uncommitted messages")
    finally:
        _kill(child)
    assert want <= set(_committed(out))


if __name__ == "__main__":
    asyncio.run(_child(sys.argv[1], sys.argv[2], sys.argv[3]))
