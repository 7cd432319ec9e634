"""`solar-agent support-bundle`: what goes in, what is skipped and why, and never a secret.

The bundle is built from a running agent (in-process, tests/cli/conftest.py) whose config names a
real RSA key, an MQTT password file and a status token file. Every file of the archive is then
searched for that material: the key's PEM body (each line of it), the password, the token, any
"Bearer " and any "-----BEGIN".
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

from agent.bundle import BundleOptions, build_bundle, write_bundle
from agent.simulators.broker import free_port
from tests.cli.conftest import Site, cli, help_of, running_agent, write_config
from tests.peers.emulator import make_keypair

MQTT_PASSWORD = "mqtt-Passw0rd-7a1c"
STATUS_TOKEN = "status-token-9f8e7d6c5b4a39281706"


def secret_site(tmp_path: Path) -> tuple[Site, list[str]]:
    """A site whose config names a real key, an MQTT password file and a status token file."""
    key, _ = make_keypair(tmp_path)
    (tmp_path / "mqtt.pass").write_text(MQTT_PASSWORD + "\n")
    (tmp_path / "status.token").write_text(STATUS_TOKEN + "\n")
    for name in ("mqtt.pass", "status.token"):
        os.chmod(tmp_path / name, 0o600)
    site = write_config(tmp_path, key=key, extra=f"""
[[modbus]]
name = "rs485"
transport = "rtu"
port = "{tmp_path / 'ttyUSB9'}"
[[modbus.devices]]
unit_id = 1

[[mqtt]]
name = "dtu"
url = "mqtt://127.0.0.1:{free_port()}"
profile = "opendtu"
username = "agent"
password_file = "{tmp_path / 'mqtt.pass'}"
""")
    text = site.config.read_text()
    site.config.write_text(text.replace(f'socket_path = "{site.socket}"',
                                        f'socket_path = "{site.socket}"\nlisten = "127.0.0.1:{free_port()}"\n'
                                        f'token_file = "{tmp_path / "status.token"}"'))
    pem_body = [line for line in key.read_text().splitlines() if line and "-----" not in line]
    return site, [MQTT_PASSWORD, STATUS_TOKEN, *pem_body]


def archive_texts(path: Path) -> dict[str, str]:
    with tarfile.open(path, "r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None, m.name
            out[m.name.split("/", 1)[1]] = f.read().decode("utf-8", "replace")
        return out


def assert_no_secret(texts: dict[str, str], secrets: list[str]) -> None:
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{name} holds secret material {secret[:12]}..."
        assert "Bearer " not in text, name
        assert "-----BEGIN" not in text, name


async def test_a_bundle_from_a_running_agent_holds_no_secret(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    site, secrets = secret_site(tmp_path)
    out = tmp_path / "bundle.tar.gz"
    async with running_agent(site):
        rc = await cli("support-bundle", "-o", out, "--config", site.config, "--timeout", "3")
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "support-bundle: status     ok (the agent is running" in printed
    assert f"wrote {out}" in printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    texts = archive_texts(out)
    assert_no_secret(texts, secrets)
    assert {"MANIFEST.txt", "config/site.toml", "status.json", "doctor.txt", "outbox/stats.json",
            "outbox/dead_letters.jsonl", "outbox/rejected_inputs.jsonl", "versions.json"} <= set(texts)
    status = json.loads(texts["status.json"])
    assert status["running"] is True and status["health"]["level"] in ("ok", "degraded", "failed")
    assert status["fleet"]["object"] == "solar_gateway_status"
    # The doctor ran what is safe while the agent runs, and never touched the serial bus.
    doctor = texts["doctor.txt"]
    assert "config:" in doctor and "mqtt dtu:" in doctor and "outbox:" in doctor
    assert "serial port" not in doctor and "modbus rs485" not in doctor
    # The config names the secret files; the resolved config shows their paths only.
    assert "password_file" in texts["config/site.toml"] and "token_file" in texts["config/site.toml"]
    versions = json.loads(texts["versions.json"])
    assert versions["python"].startswith(sys.version.split()[0]) and "aiohttp" in versions["distributions"]
    manifest = texts["MANIFEST.txt"]
    assert "agent      " in manifest and "RUNNING" in manifest
    for name in texts:
        if name != "MANIFEST.txt":
            assert name in manifest, name
    assert "doctor: serial port and modbus checks: the agent is running" in manifest
    assert "journal.txt:" in manifest or "journal.txt " in manifest   # listed, or skipped with the reason


async def test_every_text_is_scrubbed_the_journal_and_the_unit_file_too(tmp_path: Path) -> None:
    site, secrets = secret_site(tmp_path)
    key_pem = site.key.read_text()
    # A journal that (wrongly) logged every secret there is, and a unit file with an inline credential.
    journal = "\n".join([
        f"agent: connecting password={MQTT_PASSWORD}", f"agent: Authorization: Bearer {STATUS_TOKEN}",
        f"agent: {MQTT_PASSWORD} in a message", "agent: key follows", key_pem,
        "agent: access_token=eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
    ])
    unit = tmp_path / "solar-agent.service"
    unit.write_text("[Service]\nLoadCredential=solar-agent.key:/etc/solar-agent/private.key\n"
                    f"SetCredential=mqtt.pass:{MQTT_PASSWORD}\n")
    opts = BundleOptions(config=str(site.config), socket=tmp_path / "nobody.sock", timeout_seconds=2,
                         journal_command=(sys.executable, "-c", f"print({journal!r})"), unit_files=(unit,),
                         drop_in_dirs=())
    progress: list[tuple[str, str]] = []
    bundle = await build_bundle(opts, lambda part, what: progress.append((part, what)))
    out = tmp_path / "b.tar.gz"
    write_bundle(bundle, out)
    texts = archive_texts(out)
    assert_no_secret(texts, [*secrets, "eyJhbGciOiJSUzI1NiJ9"])
    assert "agent: key follows" in texts["journal.txt"] and "[REDACTED" in texts["journal.txt"]
    assert "LoadCredential=solar-agent.key:/etc/solar-agent/private.key" in texts["systemd/solar-agent.service"]
    assert ("status", "the agent is not running (nothing answers on " + str(tmp_path / "nobody.sock") + ")") \
        in progress
    # Not running: every doctor check runs, the serial port's included (it does not exist here).
    assert "serial port rs485" in texts["doctor.txt"]
    assert json.loads(texts["status.json"])["running"] is False


async def test_a_broken_config_still_gives_a_bundle_without_its_secret(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    site = write_config(tmp_path)
    # A technician pasted the password into the config: the agent refuses it, the bundle masks it.
    site.config.write_text(site.config.read_text() + '\n[[mqtt]]\nname = "x"\nurl = "mqtt://u:pw-in-url-123@h"\n'
                                                     'profile = "opendtu"\npassword = "pasted-Secret-42"\n')
    out = tmp_path / "broken.tar.gz"
    assert await cli("support-bundle", "-o", out, "--config", site.config, "--no-journal", "--timeout", "2") == 0
    assert "support-bundle: config     INVALID" in capsys.readouterr().out
    texts = archive_texts(out)
    assert_no_secret(texts, ["pasted-Secret-42", "pw-in-url-123"])
    errors = texts["config/errors.txt"]
    assert "mqtt[0].password" in errors and "never written in the config" in errors
    assert 'password = "[REDACTED]"' in texts["config/site.toml.raw"]
    assert "journal.txt: --no-journal" in texts["MANIFEST.txt"]
    assert "outbox/: no config" in texts["MANIFEST.txt"]


async def test_an_unwritable_output_fails_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = write_config(tmp_path)
    missing = tmp_path / "no" / "such" / "dir" / "b.tar.gz"
    assert await cli("support-bundle", "-o", missing, "--config", site.config, "--no-journal", "--timeout", "1") == 1
    err = capsys.readouterr().err
    assert f"Error: cannot write {missing}" in err and "Try: " in err


def test_help_explains_the_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(["support-bundle"], capsys)
    assert "MANIFEST.txt" in text and "examples:" in text and "Exit codes" in text
    assert "two masters on one bus" in text
