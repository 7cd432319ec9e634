"""`solar-agent scan` as the technician runs it: help that teaches, usage errors (exit 2), findings and the
block on stdout (exit 0), nothing found (exit 1), ``--json`` for tools."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.simulators.broker import free_port
from agent.simulators.ptypair import PtyPair
from agent.simulators.sunspec_device import SunSpecSimulator
from tests.cli.conftest import cli, help_of


@pytest.fixture(autouse=True)
def _quiet_pymodbus() -> Iterator[None]:
    logger = logging.getLogger("pymodbus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize(("command", "words"), [
    (["scan"], ["stop the agent first", "two masters", "garble", "read holding registers", "never publishes",
                "scan rtu --port", "scan tcp --host", "scan mqtt --url", "check-config"]),
    (["scan", "rtu"], ["--baud", "--parity", "--units", "--timeout", "--all-bases", "two masters garble"]),
    (["scan", "tcp"], ["--host", "--port", "--units", "answers every unit id"]),
    (["scan", "mqtt"], ["--seconds", "--username", "--password-file", "--ca-file", "keepalive"]),
])
def test_help_teaches(command: list[str], words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_of(command, capsys).split()).lower()
    for word in words:
        assert word.lower() in text, word


@pytest.mark.parametrize("args", [
    ["rtu", "--port", "/dev/ttyUSB0", "--units", "0-300"],
    ["rtu", "--port", "/dev/ttyUSB0", "--baud", "9601"],
    ["rtu", "--port", "/dev/ttyUSB0", "--parity", "X"],
    ["rtu", "--port", "/nonexistent/ttyUSB9"],
    ["tcp", "--host", "127.0.0.1", "--units", "x"],
    ["mqtt", "--url", "http://broker"],
    ["mqtt", "--url", "mqtt://broker", "--password-file", "/etc/x"],
])
async def test_usage_errors_exit_2_with_a_hint(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli("scan", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "\nTry: " in err


async def test_tcp_prints_the_units_and_a_block_that_parses(capsys: pytest.CaptureFixture[str]) -> None:
    sim = SunSpecSimulator((1,), seed=4, corpus={3: "kostal_end_single_zero"})
    async with sim.serve_tcp():
        assert await cli("scan", "tcp", "--host", "127.0.0.1", "--port", str(sim.port), "--units", "1-3",
                         "--timeout", "0.3") == 0
    out = capsys.readouterr().out
    assert "2 SunSpec unit(s) found" in out and "KOSTAL" in out and f"SunSpecSim-{sim.serial_number(1)}" in out
    block = out.split("check-config:\n", 1)[1]
    doc = tomllib.loads(block)
    assert [d["unit_id"] for d in doc["modbus"][0]["devices"]] == [1, 3]


async def test_tcp_json_and_nothing_found_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    sim = SunSpecSimulator((1,), seed=4)
    async with sim.serve_tcp():
        assert await cli("scan", "tcp", "--host", "127.0.0.1", "--port", str(sim.port), "--units", "5",
                         "--timeout", "0.2", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["scan"]["units"] == [] and doc["toml"] == "" and doc["scan"]["probes"] == 3
    assert await cli("scan", "tcp", "--host", "127.0.0.1", "--port", str(free_port()), "--units", "1") == 1
    captured = capsys.readouterr()
    assert "cannot connect" in captured.err and "Try: " in captured.err


async def test_rtu_json_on_a_pty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sim = SunSpecSimulator((2,), seed=5)
    with PtyPair(tmp_path / "ttySIM", tmp_path / "ttySCAN") as pair:
        async with sim.serve_rtu(pair.a):
            assert await cli("scan", "rtu", "--port", pair.b, "--baud", "9600", "--parity", "N", "--units", "1-3",
                             "--timeout", "0.3", "--json") == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["scan"]["settings"] == {"baudrate": 9600, "parity": "N"}
    assert [u["unit_id"] for u in doc["scan"]["units"]] == [2]
    assert tomllib.loads(doc["toml"])["modbus"][0]["devices"] == [{"unit_id": 2}]
    assert "9600 8N1: unit 2 answers" in captured.err          # progress goes to stderr, plain lines off a TTY
