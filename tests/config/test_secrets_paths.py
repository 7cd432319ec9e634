"""Secrets never in the TOML; credential:NAME resolution; relative paths next to the config file."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import config_errors, load_config, parse_config, resolve_config_path
from agent.errors import ConfigError

from .conftest import EXAMPLE, MINIMAL

SECRET = "hunter2-s3cr3t"


def _with(**sections: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def _errors(data: dict[str, Any], source: str = "/etc/solar-agent/site.toml", **kw: Any) -> list[ConfigError]:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, source, **kw)
    return list(config_errors(exc.value))


@pytest.mark.parametrize(("section", "key", "file_key"), [
    ("datacloud", "private_key", "private_key_path"),
    ("datacloud", "client_secret", "private_key_path"),
    ("status", "token", "token_file"),
    ("site", "api_key", "a *_file or *_path key"),
])
def test_secret_values_are_refused_and_never_echoed(section: str, key: str, file_key: str) -> None:
    [err] = _errors(_with(**{section: {key: SECRET}}))
    assert err.key == f"{section}.{key}"
    assert "secrets are never written in the config file" in str(err)
    assert err.hint is not None and file_key in err.hint and "credential:" in err.hint
    assert SECRET not in str(err) and err.value is None


def test_mqtt_password_is_refused_via_cli(write_site: Callable[[str], Path],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = EXAMPLE.read_text(encoding="utf-8").replace('username = "solar-agent"',
                                                       f'username = "solar-agent"\npassword = "{SECRET}"')
    path = write_site(text)
    assert main(["check-config", str(path)]) == 2
    out = capsys.readouterr()
    assert f"Error: {path}: mqtt[0].password: secrets are never written in the config file" in out.err
    assert "Try: " in out.err and "password_file" in out.err
    assert SECRET not in out.err + out.out


def test_credentials_in_a_url_are_refused_and_not_echoed() -> None:
    feed = {"name": "m", "url": f"mqtt://agent:{SECRET}@127.0.0.1:1883", "profile": "opendtu"}
    data = _with()
    data["mqtt"] = [feed]
    [err] = _errors(data)
    assert err.key == "mqtt[0].url" and "credentials" in err.message
    assert SECRET not in str(err)


def test_pasted_pem_is_refused() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----"
    [err] = _errors(_with(datacloud={"client_id": pem}))
    assert err.key == "datacloud.client_id" and "PEM" in err.message
    assert "MIIE" not in str(err)


def test_credential_resolves_in_credentials_directory(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    data = _with(datacloud={"private_key_path": "credential:solar-agent.key"},
                 status={"listen": "127.0.0.1:9108", "token_file": "credential:status-token"})
    data["mqtt"] = [{"name": "m", "url": "mqtt://127.0.0.1", "profile": "opendtu", "username": "u",
                     "password_file": "credential:mqtt.pw"}]
    cfg = parse_config(data, "/etc/solar-agent/site.toml")
    assert cfg.datacloud.private_key_path == tmp_path / "creds" / "solar-agent.key"
    assert cfg.status.token_file == tmp_path / "creds" / "status-token"
    assert cfg.mqtt[0].password_file == tmp_path / "creds" / "mqtt.pw"


def test_credential_directory_argument_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/somewhere/else")
    data = _with(datacloud={"private_key_path": "credential:k.pem"})
    cfg = parse_config(data, "site.toml", credentials_dir=tmp_path)
    assert cfg.datacloud.private_key_path == tmp_path / "k.pem"


def test_credential_outside_the_service_is_next_to_the_config_file(
    write_site: Callable[[str], Path], capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    # sudo solar-agent check-config|status|doctor run beside the service, without systemd's
    # $CREDENTIALS_DIRECTORY: the unit loads credential NAME from /etc/solar-agent/NAME, so the
    # same file is NAME in the config file's directory.
    path = write_site(EXAMPLE.read_text(encoding="utf-8"))
    assert 'private_key_path = "credential:solar-agent.key"' in path.read_text(encoding="utf-8")
    assert load_config(path).datacloud.private_key_path == tmp_path / "solar-agent.key"
    assert main(["check-config", "-q", str(path)]) == 0
    creds = tmp_path / "creds"
    assert load_config(path, credentials_dir=creds).datacloud.private_key_path == creds / "solar-agent.key"
    assert main(["check-config", "-q", "--credentials-directory", str(creds), str(path)]) == 0
    capsys.readouterr()


def test_credential_in_a_relative_config_path_is_absolute(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(_with(datacloud={"private_key_path": "credential:solar-agent.key"}), "site.toml")
    assert cfg.datacloud.private_key_path == tmp_path / "solar-agent.key"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("private_key_path", "credential:../etc/shadow", "plain credential name"),
    ("private_key_path", "credential:", "plain credential name"),
    ("ca_file", "credential:ca.pem", "only for secret files"),
])
def test_bad_credential_references(tmp_path: Path, key: str, value: str, message: str) -> None:
    [err] = _errors(_with(datacloud={key: value}), credentials_dir=tmp_path)
    assert err.key == f"datacloud.{key}" and message in err.message and err.value == value


def test_relative_paths_resolve_against_the_config_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    conf_dir = tmp_path / "etc" / "solar-agent"
    conf_dir.mkdir(parents=True)
    (conf_dir / "site.toml").write_text(
        '[site]\nid = "p"\ncustomer_id = "c"\n[outbox]\npath = "data/outbox.db"\n'
        '[datacloud]\nlogin_url = "https://login.salesforce.com"\nclient_id = "x"\nusername = "u"\n'
        'private_key_path = "keys/dc.key"\nsource_name = "s"\nca_file = "/abs/ca.pem"\n'
        '[status]\nsocket_path = "../run/status.sock"\n',
        encoding="utf-8",
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "etc" / "solar-agent" / "site.toml")
    assert cfg.outbox.path == conf_dir / "data" / "outbox.db"
    assert cfg.datacloud.private_key_path == conf_dir / "keys" / "dc.key"
    assert cfg.datacloud.ca_file == Path("/abs/ca.pem")
    assert cfg.status.socket_path == conf_dir.parent / "run" / "status.sock"


def test_tilde_is_not_expanded() -> None:
    [err] = _errors(_with(outbox={"path": "~/outbox.db"}))
    assert err.key == "outbox.path" and err.hint == "write the absolute path"


def test_config_path_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_config_path() == Path("/etc/solar-agent/site.toml")
    monkeypatch.setenv("SOLAR_AGENT_CONFIG", str(tmp_path / "x.toml"))
    assert resolve_config_path() == tmp_path / "x.toml"
    assert resolve_config_path("given.toml") == Path("given.toml")
    monkeypatch.setenv("SOLAR_AGENT_CONFIG", str(EXAMPLE))
    assert load_config().source_file == str(EXAMPLE)


@pytest.mark.parametrize("argv", [
    ["status", "--config", "{config}"],
    ["drain", "--now", "--config", "{config}"],
    ["outbox", "--config", "{config}", "stats"],
    ["outbox", "--config", "{config}", "peek"],
    ["outbox", "--config", "{config}", "dead-letters"],
])
def test_commands_beside_the_service_accept_a_credential_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
) -> None:
    # Run as root next to the service there is no $CREDENTIALS_DIRECTORY (the conftest clears it):
    # these commands never read the key, so they get as far as the (absent) agent and outbox.
    config = tmp_path / "site.toml"
    config.write_text(
        '[site]\nid = "p"\ncustomer_id = "c"\n'
        f'[outbox]\npath = "{tmp_path / "outbox.db"}"\n'
        '[datacloud]\nlogin_url = "https://login.salesforce.com"\nclient_id = "x"\nusername = "u"\n'
        'private_key_path = "credential:solar-agent.key"\nsource_name = "s"\n'
        f'[status]\nsocket_path = "{tmp_path / "status.sock"}"\n', encoding="utf-8")
    code = main([a.format(config=config) for a in argv])
    err = capsys.readouterr().err
    assert "CREDENTIALS_DIRECTORY" not in err and "credential" not in err
    assert code in (1, 3), err   # 3: the agent is not running; 1: no outbox file yet
