"""Fixtures for the config tests: the shipped example, and a way to write broken copies of it."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "site.example.toml"
DOCS = REPO / "README.md"  # the configuration reference is a section of the README

# A small valid config as a dict (the example is the big one).
MINIMAL: dict[str, Any] = {
    "site": {"id": "plant-1", "customer_id": "001xx"},
    "datacloud": {
        "login_url": "https://login.salesforce.com",
        "client_id": "3MVG9",
        "username": "agent@example.com",
        "private_key_path": "keys/dc.key",
        "source_name": "solar_agent",
    },
}


@pytest.fixture(autouse=True)
def _no_ambient_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's environment must not decide where configs or credentials come from."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("SOLAR_AGENT_CONFIG", raising=False)


@pytest.fixture
def example_data() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


@pytest.fixture
def write_site(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text as site.toml next to a copy of the schema (the example refers to it)."""
    schema = REPO / "config" / "solar_panel_event.yaml"
    (tmp_path / "solar_panel_event.yaml").write_bytes(schema.read_bytes())

    def write(text: str, name: str = "site.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write
