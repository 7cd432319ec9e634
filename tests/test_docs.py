"""The README keeps its promises: the two commands first, every CLI command documented."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_every_command_is_in_the_readme() -> None:
    missing = [c for c in _commands() if f"solar-agent {c}" not in README]
    assert missing == []


def test_every_command_has_help_with_a_description() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, f"`solar-agent {name} --help` has no description"
