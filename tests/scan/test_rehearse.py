"""Rehearsing commissioning without hardware: `solar-agent simulate sunspec --corpus ...` in its own process,
found by `solar-agent scan` as a technician would run both."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys

import pytest

from agent.cli import main
from tests.cli.conftest import cli


async def test_scan_finds_the_corpus_devices_a_simulator_process_serves(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "simulate", "sunspec", "--tcp", "127.0.0.1:0", "--units", "1",
        "--corpus", "3=kostal_end_single_zero", "--corpus", "126=der701_714_three_phase",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=os.getcwd())
    assert proc.stdout is not None
    try:
        lines: list[str] = []
        while not any("Ctrl-C to stop" in line for line in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
            assert line, f"simulator exited early: {lines}"
            lines.append(line)
        text = "".join(lines)
        assert "unit 3 kostal_end_single_zero (corpus)" in text
        port = re.search(r"tcp_port = (\d+)", text)
        assert port is not None
        assert await cli("scan", "tcp", "--host", "127.0.0.1", "--port", port.group(1), "--timeout", "0.5",
                         "--json") == 0
        units = json.loads(capsys.readouterr().out)["scan"]["units"]
        assert [(u["unit_id"], u["manufacturer"], u["models"]) for u in units] == [
            (1, "SunSpecSim", [1, 103]), (3, "KOSTAL", [1, 103]), (126, "KACO", [1, 701, 714])]
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


@pytest.mark.parametrize("corpus", ["3", "0=kostal_end_single_zero", "3=no_such_case", "1=kostal_end_single_zero"])
def test_corpus_usage_errors(corpus: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "sunspec", "--tcp", "127.0.0.1:0", "--units", "1", "--corpus", corpus]) == 2
    assert "Try: " in capsys.readouterr().err
