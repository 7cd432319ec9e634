"""`simulate` as a real separate process (what an integrator runs), and every command's --help."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from agent.cli import main
from tests.cli.conftest import help_of
from tests.peers.mosquitto import Broker, mosquitto_broker  # noqa: F401

SUNS = [0x5375, 0x6E53]


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    """`solar-agent simulate ...` in a child process; yields it with its output up to "Ctrl-C to stop."."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "simulate", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=os.getcwd())
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not any("Ctrl-C to stop" in line for line in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, f"simulator exited early: {lines}"
            lines.append(line)
        yield proc, lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 10)
            rest = (await proc.stdout.read()).decode()
            assert code == 0, rest
            assert "simulator stopped" in rest


async def test_sunspec_rtu_makes_a_pty_pair_and_serves_it() -> None:
    async with simulator("sunspec", "--rtu", "--units", "1,2") as (_, lines):
        path = re.search(r'\sport = "([^"]+)"', "".join(lines))
        assert path is not None
        client = AsyncModbusSerialClient(path.group(1), framer=FramerType.RTU, baudrate=9600, timeout=1, retries=1)
        assert await client.connect()
        try:
            for unit in (1, 2):
                rr = await client.read_holding_registers(40000, count=2, device_id=unit)
                assert list(rr.registers) == SUNS
        finally:
            client.close()


async def test_sunspec_tcp_on_a_free_port() -> None:
    async with simulator("sunspec", "--tcp", "127.0.0.1:0", "--float") as (_, lines):
        port = re.search(r"tcp_port = (\d+)", "".join(lines))
        assert port is not None and "models 1, 113" in "".join(lines)
        client = AsyncModbusTcpClient("127.0.0.1", port=int(port.group(1)), timeout=1)
        assert await client.connect()
        try:
            rr = await client.read_holding_registers(40002, count=1, device_id=1)
            assert rr.registers == [1]      # the common model comes first
        finally:
            client.close()


def test_simulate_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "sunspec", "--tcp", "nohostport"]) == 2
    assert main(["simulate", "sunspec", "--tcp", "127.0.0.1:0", "--units", "0,x"]) == 2
    assert main(["simulate", "mqtt", "--profile", "opendtu", "--url", "mqtts://broker:8883"]) == 2
    assert capsys.readouterr().err.count("Try: ") == 3


COMMANDS = [
    ["status"], ["doctor"], ["outbox"], ["outbox", "stats"], ["outbox", "peek"], ["outbox", "dead-letters"],
    ["outbox", "requeue"], ["outbox", "export"], ["drain"], ["keygen"], ["simulate"], ["simulate", "sunspec"],
    ["simulate", "mqtt"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(command, capsys)
    assert re.search(r"examples?:\n", text), text
    assert f"solar-agent {command[0]}" in text.split("example")[-1]


def test_keygen_writes_0600_and_refuses_to_overwrite(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    assert main(["keygen", "--dir", str(d), "--name", "site"]) == 0
    out = capsys.readouterr().out
    assert (d / "site.key").stat().st_mode & 0o777 == 0o600 and (d / "site.crt").is_file()
    assert "Use digital signatures" in out and "cdp_ingest_api" in out and "private_key_path" in out
    before = (d / "site.key").read_bytes()
    assert main(["keygen", "--dir", str(d), "--name", "site"]) == 1
    assert "never overwrites" in capsys.readouterr().err
    assert (d / "site.key").read_bytes() == before


async def test_mqtt_simulator_publishes_opendtu(mosquitto_broker: Broker) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    loop = asyncio.get_running_loop()
    got: asyncio.Future[str] = loop.create_future()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="cli-test-sub")
    sub.on_message = lambda c, u, msg: loop.call_soon_threadsafe(
        lambda: got.done() or got.set_result(msg.topic))
    sub.connect("127.0.0.1", mosquitto_broker.port)
    sub.subscribe("solar/#", qos=1)
    sub.loop_start()
    try:
        async with simulator("mqtt", "--profile", "opendtu", "--url", mosquitto_broker.url,
                             "--device", "114100000001", "--interval", "0.2"):
            topic = await asyncio.wait_for(got, 10)
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert topic.startswith("solar/114100000001/")
