"""The shipped example loads, round-trips through to_toml, and the docs name every accepted key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import (
    AgentConfig,
    accepted_keys,
    device_count,
    load_config,
    parse_config,
    redacted,
    to_toml,
)

from .conftest import DOCS, EXAMPLE, REPO


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert isinstance(cfg, AgentConfig)
    assert [b.transport for b in cfg.modbus] == ["rtu", "tcp"]
    assert cfg.modbus[0].port == "/dev/ttyUSB0"
    assert [d.unit_id for d in cfg.modbus[0].devices] == [1, 2]
    assert device_count(cfg) == 3
    assert [f.profile for f in cfg.mqtt] == ["opendtu"]
    assert cfg.datacloud.login_url == "https://login.salesforce.com"
    # No schema path: the copy shipped with the agent, so the file works wherever it is copied.
    assert cfg.datacloud.schema_path is None
    # Outside the service, credential:NAME is NAME next to the file (where the unit loads it from).
    assert cfg.datacloud.private_key_path == REPO / "config" / "solar-agent.key"


def test_to_toml_round_trips_the_example() -> None:
    cfg = load_config(EXAMPLE)
    again = parse_config(tomllib.loads(to_toml(cfg)), cfg.source_file)
    assert again == cfg


def test_redacted_shows_paths_and_usernames() -> None:
    shown = redacted(load_config(EXAMPLE))
    assert shown["datacloud"]["private_key_path"] == str(EXAMPLE.parent / "solar-agent.key")
    assert shown["mqtt"][0]["username"] == "solar-agent"
    assert shown["mqtt"][0]["password_file"].endswith("mqtt-balcony.password")
    assert "host" not in shown["modbus"][0]  # tcp-only key on a serial bus, at its default


def test_check_config_on_example_says_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert f"OK: {EXAMPLE} is valid (2 modbus buses, 3 devices, 1 mqtt feed" in out
    assert 'login_url = "https://login.salesforce.com"' in out


def test_check_config_path_from_env(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SOLAR_AGENT_CONFIG", str(EXAMPLE))
    assert main(["check-config", "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"OK: {EXAMPLE} is valid")


def test_check_config_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check-config", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    needles = ("did you mean", "SOLAR_AGENT_CONFIG", "credential:NAME",
               "solar-agent check-config /etc/solar-agent")
    for needle in needles:
        assert needle in out


def _section_blocks(text: str, header_re: str) -> list[str]:
    """The text under every header (commented-out headers count) matching ``header_re``."""
    blocks = re.split(r"(?m)^(?=\s*#?\s*\[)", text)
    return [b for b in blocks if re.match(rf"\s*#?\s*{header_re}\s*$", b.splitlines()[0] if b else "")]


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = []
    for key in accepted_keys():
        section, _, name = key.rpartition(".")
        header = r"\[\[?" + re.escape(section) + r"\]\]?"
        blocks = _section_blocks(text, header)
        pattern = re.compile(rf"(?m)^\s*#?\s*{re.escape(name)}\s*=")
        sub_header = re.compile(rf"(?m)^\s*#?\s*\[\[?{re.escape(key)}\]\]?\s*$")
        if not any(pattern.search(b) for b in blocks) and not sub_header.search(text):
            missing.append(key)
    assert missing == []


def _reference() -> str:
    """The README's "Configuration reference" section, up to the next top-level section."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("## Configuration reference")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_docs_document_every_key() -> None:
    text = _reference()
    missing = []
    for key in accepted_keys():
        section, _, name = key.rpartition(".")
        # Each section has a heading naming it, e.g. "### `[[modbus.devices]]`", and a table row per key.
        parts = re.split(r"(?m)^#+ ", text)
        blocks = [p for p in parts if re.match(rf"`\[\[?{re.escape(section)}\]\]?`", p)]
        if not any(f"| `{name}` |" in b for b in blocks):
            missing.append(key)
    assert missing == []


def test_docs_mention_no_key_that_does_not_exist() -> None:
    """The reverse direction: a renamed key must not linger in the docs' tables."""
    text = _reference()
    known = {part for k in accepted_keys() for part in k.split(".")}  # "devices" is a key too
    documented = set(re.findall(r"(?m)^\| `([a-z_]+)` \|", text))
    assert documented - known == set()


def test_example_copied_alone_is_valid(tmp_path: Path) -> None:
    # The package installs the example as /etc/solar-agent/site.toml with nothing beside it: it
    # must name no file relative to itself that is not there (it once named the schema that way).
    copy = tmp_path / "site.toml"
    copy.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["check-config", "-q", str(copy)]) == 0
