"""The technician commands' rough edges (issue #12, point 4), one test each."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.doctor import run as doctor_run
from agent.clock import ClockGuard
from tests.cli.conftest import cli, running_agent, write_config
from tests.cli.test_outbox import filled_site
from tests.peers.emulator import make_keypair

ROOT = Path(__file__).resolve().parents[2]


async def test_options_are_accepted_after_the_action_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, _ = await filled_site(tmp_path, rows=5, dead=0)
    assert await cli("outbox", "stats", "--config", site.config) == 0
    after = capsys.readouterr().out
    assert await cli("outbox", "--config", site.config, "stats") == 0
    before = capsys.readouterr().out
    assert "rows          5" in after and after.splitlines()[:3] == before.splitlines()[:3]
    assert await cli("outbox", "peek", "-n", "1", "--config", site.config) == 0


async def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`solar-agent outbox peek | head -1` on a large outbox: no BrokenPipeError traceback."""
    site, _ = await filled_site(tmp_path, rows=3000, dead=0)
    proc = await asyncio.to_thread(
        subprocess.run, f"{sys.executable} -m agent outbox peek -n 3000 --config {site.config} | head -1",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.startswith("#1 "), proc.stdout[:200]
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


async def test_requeue_of_an_unknown_id_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, ids = await filled_site(tmp_path, rows=5, dead=2)
    assert await cli("outbox", "requeue", "--config", site.config, ids[0], "not-a-dead-letter") == 1
    err = capsys.readouterr().err
    assert "1 of the ids are not dead letters" in err and "Try:" in err
    async with running_agent(site):
        assert await cli("outbox", "requeue", "--config", site.config, "also-unknown") == 1


@pytest.mark.parametrize("command", [
    ["status"], ["doctor"], ["outbox", "stats"], ["outbox", "peek"], ["drain", "--now"], ["check-config"],
])
async def test_one_exit_code_for_a_missing_config(tmp_path: Path, command: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    args = [*command, str(missing)] if command == ["check-config"] else [*command, "--config", str(missing)]
    assert await cli(*args) == 2
    out = capsys.readouterr()
    assert "cannot read the config file" in out.out + out.err


async def test_doctor_honours_the_sites_clock_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path, extra="[clock]\nassume_synced = true\n")
    await doctor_run(str(site.config), timeout_seconds=2)
    line = next(x for x in capsys.readouterr().out.splitlines() if " clock:" in x)
    assert line.startswith("PASS clock: synchronised"), line


async def test_doctor_says_one_thing_about_a_missing_serial_port(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make_keypair(tmp_path)
    site = write_config(tmp_path, extra="""
[[modbus]]
name = "rs485"
transport = "rtu"
port = "/dev/serial/by-id/usb-not-plugged-in"
[[modbus.devices]]
unit_id = 1
[[modbus.devices]]
unit_id = 2
""")
    await doctor_run(str(site.config), timeout_seconds=3, clock=ClockGuard(assume_synced=True))
    out = capsys.readouterr().out
    assert "FAIL serial port rs485: /dev/serial/by-id/usb-not-plugged-in does not exist" in out
    for unit in (1, 2):
        assert f"FAIL modbus rs485/unit{unit}: not checked: /dev/serial/by-id/usb-not-plugged-in does not exist" in out
    assert "refused" not in out.lower()


def test_no_sudo_advice_to_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli import main

    if os.geteuid() != 0:
        pytest.skip("the advice to root is what this checks")
    assert main(["keygen", "--dir", "/proc/solar-agent-keys"]) == 1
    err = capsys.readouterr().err
    assert "Try:" in err and "sudo" not in err


async def test_the_mqtt_simulator_ends_cleanly_when_the_broker_goes_away(tmp_path: Path) -> None:
    from agent.simulators.broker import Broker, find_mosquitto, free_port

    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto not installed")
    broker = Broker(binary, tmp_path, free_port())
    await asyncio.to_thread(broker.start)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "simulate", "mqtt", "--profile", "opendtu", "--url", broker.url,
        "--interval", "0.2", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            while b"Ctrl-C to stop" not in await proc.stdout.readline():
                pass
        await asyncio.to_thread(broker.stop)                 # the broker goes away under it
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 1
        text = err.decode()
        assert "Error: cannot publish to" in text and "Try:" in text and "Traceback" not in text, text
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
