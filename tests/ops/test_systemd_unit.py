"""The shipped systemd unit: its sandbox exposure (systemd-analyze) and the settings the agent relies on."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG_PATH, StatusConfig

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "solar-agent.service"
MAX_EXPOSURE = 1.5


def _unit() -> dict[str, list[str]]:
    """Key -> values of the [Service] section (systemd keys may repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}{key}", []).append(value)
    return values


def test_exposure_is_low() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd): exposure not measured")
    proc = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    output = proc.stdout + proc.stderr
    if "unrecognized option" in output or "Unknown option" in output:
        pytest.skip(f"this systemd-analyze cannot analyse unit files offline: {output.strip()[:200]}")
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", output)
    assert match, f"no exposure line in systemd-analyze output:\n{output}"
    exposure = float(match[1])
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


def test_unit_settings_the_agent_relies_on() -> None:
    u = _unit()
    s = "[Service]"
    assert u[s + "Type"] == ["notify"]                       # agent/notify.py sends READY=1
    assert u[s + "NotifyAccess"] == ["main"]
    assert u[s + "WatchdogSec"] == ["60"]                   # agent/notify.py Watchdog
    assert u[s + "Restart"] == ["on-failure"]               # OutboxFatalError exits non-zero
    exec_start = u[s + "ExecStart"][0].split()
    assert exec_start[:2] == ["/opt/solar-agent/bin/solar-agent", "run"]
    assert exec_start[exec_start.index("--config") + 1] == str(DEFAULT_CONFIG_PATH)
    # The status socket's default path lives in the RuntimeDirectory systemd creates.
    runtime_dir = Path("/run") / u[s + "RuntimeDirectory"][0]
    assert StatusConfig().socket_path.parent == runtime_dir
    assert u[s + "StateDirectory"] == ["solar-agent"]       # /var/lib/solar-agent: the outbox
    assert u[s + "LoadCredential"] == ["solar-agent.key:/etc/solar-agent/private.key"]
    allowed = {v.split()[0] for v in u[s + "DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyACM", "char-ttyS", "char-ttyAMA"} <= allowed
    assert u[s + "SupplementaryGroups"] == ["dialout"]
    assert u[s + "UMask"] == ["0077"]
    assert u[s + "RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_unit_is_plain_ini() -> None:
    # systemd-analyze is absent on some CI machines; at least the file parses and has its sections.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"
