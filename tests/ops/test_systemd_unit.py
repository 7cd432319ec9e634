"""The shipped systemd unit: its sandbox exposure (systemd-analyze), the settings the agent relies on, and its
agreement with the Debian package (packaging/build-deb), the example config and the README."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import CREDENTIAL_PREFIX, DEFAULT_CONFIG_PATH, StatusConfig, load_config

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "solar-agent.service"
BUILD_DEB = REPO / "packaging" / "build-deb"
EXAMPLE = REPO / "config" / "site.example.toml"
README = REPO / "README.md"
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
    assert u[s + "LoadCredential"] == ["solar-agent.key:/etc/solar-agent/solar-agent.key"]
    assert u[s + "SupplementaryGroups"] == ["dialout"]
    assert u[s + "UMask"] == ["0077"]
    assert u[s + "RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_unit_is_plain_ini() -> None:
    # systemd-analyze is absent on some CI machines; at least the file parses and has its sections.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_serial_majors_are_numbers() -> None:
    # A device group name (char-ttyUSB) is looked up in /proc/devices when the unit starts; a USB
    # serial driver loaded later would stay blocked until a restart. A major number never is.
    u = _unit()
    allowed = {v.split()[0]: v.split()[1] for v in u["[Service]DeviceAllow"]}
    assert allowed == {"char-188": "rw", "char-166": "rw", "char-4": "rw", "char-204": "rw"}
    assert u["[Service]DevicePolicy"] == ["closed"]


def test_boot_id_stays_visible() -> None:
    # ProcSubset=pid hides /proc/sys/kernel/random/boot_id: held readings could not be re-stamped
    # after a restart (agent/clock.py ties them to the boot).
    assert "[Service]ProcSubset" not in _unit()


def test_config_directory_is_readable_by_the_dynamic_user() -> None:
    u = _unit()
    assert u["[Service]DynamicUser"] == ["yes"]
    assert u["[Service]ConfigurationDirectory"] == ["solar-agent"]
    assert int(u["[Service]ConfigurationDirectoryMode"][0], 8) & 0o005 == 0o005
    # ...and the package ships it that way (root 0755, site.toml 0644).
    text = BUILD_DEB.read_text()
    assert 'install -d -m 0755 "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/solar-agent"' in text
    assert 'install -m 0644 "$src/config/site.example.toml" "$root/etc/solar-agent/site.toml"' in text


def test_one_key_file_name_everywhere() -> None:
    """The unit's credential, the example config's key path and the README name the same file."""
    name, _, source = _unit()["[Service]LoadCredential"][0].partition(":")
    assert source == str(DEFAULT_CONFIG_PATH.parent / name)
    # credential:NAME outside the service resolves next to the config file: the unit's source file.
    cfg = load_config(EXAMPLE)
    assert f'private_key_path = "{CREDENTIAL_PREFIX}{name}"' in EXAMPLE.read_text()
    assert cfg.datacloud.private_key_path == EXAMPLE.parent / name
    readme = README.read_text()
    assert f'private_key_path = "{CREDENTIAL_PREFIX}{name}"' in readme
    assert f"LoadCredential={name}:{source}" in readme
    assert "private.key" not in readme and "private.key" not in UNIT.read_text()


def test_unit_paths_match_the_package() -> None:
    u = _unit()
    text = BUILD_DEB.read_text()
    assert "prefix=/opt/solar-agent" in text
    assert u["[Service]ExecStart"][0].startswith("/opt/solar-agent/bin/solar-agent ")
    # Documentation= must exist once installed: the package puts the README there.
    [doc] = u["[Unit]Documentation"]
    assert doc == "file:///usr/share/doc/solar-agent/README.md"
    assert '"$root/usr/share/doc/solar-agent/README.md"' in text
    assert 'install -m 0644 "$src/systemd/solar-agent.service" "$root/lib/systemd/system/solar-agent.service"' in text
