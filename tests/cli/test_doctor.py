"""`solar-agent doctor` against real peers: the emulator, a SunSpec simulator on a pty pair, mosquitto."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.cli.doctor import run
from agent.clock import ClockGuard
from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from tests.cli.conftest import cli, write_config
from tests.peers.emulator import make_keypair, running_emulator
from tests.peers.mosquitto import Broker, mosquitto_broker  # noqa: F401
from tests.peers.serial import pty_pair  # noqa: F401

LINE = re.compile(r"^(PASS|FAIL|WARN) ([^:]+): ")


def lines_by_check(out: str) -> dict[str, str]:
    found = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            found[m.group(2)] = m.group(1)
    return found


def modbus_section(port: str, units: str = "[[modbus.devices]]\nunit_id = 1\n[[modbus.devices]]\nunit_id = 2") -> str:
    return f"""
[[modbus]]
name = "rs485"
transport = "rtu"
port = "{port}"
timeout_seconds = 0.3
{units}
"""


async def test_all_checks_pass_on_a_healthy_site(tmp_path: Path, pty_pair: PtyPair,
                                                 mosquitto_broker: Broker,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    mqtt = f'\n[[mqtt]]\nname = "balcony"\nurl = "{mosquitto_broker.url}"\nprofile = "opendtu"\n'
    async with running_emulator(tmp_path, public_key_pem=public) as emu, \
            SunSpecSimulator((1, 2), seed=3).serve_rtu(pty_pair.a):
        site = write_config(tmp_path, login_url=emu.url, key=key, extra=modbus_section(pty_pair.b) + mqtt)
        code = await run(str(site.config), timeout_seconds=10, clock=ClockGuard(assume_synced=True))
        stored = len(emu.store.keys())
    out = capsys.readouterr().out
    checks = lines_by_check(out)
    assert set(checks) == {"config", "private key", "serial port rs485", "modbus rs485/unit1", "modbus rs485/unit2",
                           "mqtt balcony", "datacloud login", "datacloud test record", "clock", "disk", "outbox"}
    assert set(checks.values()) == {"PASS"}, out
    assert code == 0
    assert "models [1, 103]" in out                      # what the simulator serves
    assert "granted QoS 1" in out
    assert stored == 0                                   # /actions/test is a dry run
    assert out.splitlines()[-1].startswith("doctor: 11 passed, 0 warning(s), 0 failed")


async def test_fail_lines_have_hints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, _ = make_keypair(tmp_path, "agent")
    key.chmod(0o644)
    site = write_config(tmp_path, key=key, extra=modbus_section(str(tmp_path / "ttyUSB9"),
                                                                "[[modbus.devices]]\nunit_id = 1"))
    assert await cli("doctor", "--config", site.config, "--timeout", "5") == 1
    out = capsys.readouterr().out
    checks = lines_by_check(out)
    assert checks["private key"] == "FAIL" and "mode 0644" in out and "Try: chmod 600" in out
    assert checks["serial port rs485"] == "FAIL" and "ttyUSB9 does not exist" in out
    assert "Try: plug the RS-485 adapter in" in out
    assert checks["modbus rs485/unit1"] == "FAIL"
    assert checks["datacloud login"] == "FAIL"
    assert checks["outbox"] == "PASS" and checks["disk"] == "PASS"
    for i, line in enumerate(out.splitlines()):
        if line.startswith("FAIL "):
            assert out.splitlines()[i + 1].startswith("     Try: "), line


async def test_wrong_client_id_fails_the_login(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key, public = make_keypair(tmp_path, "agent")
    async with running_emulator(tmp_path, public_key_pem=public) as emu:
        site = write_config(tmp_path, login_url=emu.url, key=key, client_id="3MVGwrong")
        assert await cli("doctor", "--config", site.config) == 1
    out = capsys.readouterr().out
    checks = lines_by_check(out)
    assert checks["datacloud login"] == "FAIL" and checks["private key"] == "PASS"
    assert "datacloud test record" not in checks
    fail = next(i for i, line in enumerate(out.splitlines()) if line.startswith("FAIL datacloud login"))
    assert "client" in out.splitlines()[fail].lower() and out.splitlines()[fail + 1].startswith("     Try: ")


async def test_a_bad_config_stops_after_the_first_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "site.toml").write_text("[site]\nid = 1\n")
    assert await cli("doctor", "--config", tmp_path / "site.toml") == 2     # a config that cannot be used
    out = capsys.readouterr().out
    assert out.startswith("FAIL config: ") and "Try: " in out and "0 passed" in out
