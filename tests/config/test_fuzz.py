"""Hypothesis: whatever the document, the loader answers with a config or a ConfigError, nothing else."""

from __future__ import annotations

import contextlib
import copy
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import main
from agent.config import AgentConfig, accepted_keys, config_errors, load_config, parse_config, to_toml
from agent.errors import ConfigError
from tests.fuzz import examples

from .conftest import EXAMPLE

SOURCE = "/etc/solar-agent/site.toml"
KEY_PARTS = sorted({part for key in accepted_keys() for part in key.split(".")})
EXAMPLE_DATA = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
EXAMPLE_LINES = EXAMPLE.read_text(encoding="utf-8").splitlines()

keys = st.one_of(st.sampled_from(KEY_PARTS), st.text(max_size=12), st.sampled_from(["password", "token"]))
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),  # nan and inf included: TOML has them
    st.text(max_size=30),
    st.sampled_from(["rtu", "tcp", "opendtu", "generic", "credential:k", "mqtt://127.0.0.1", "10GB", "~/x",
                     "https://login.salesforce.com", "http://127.0.0.1:8080", "solar/#", "127.0.0.1:9108"]),
    st.datetimes(), st.dates(), st.times(),  # TOML date-times arrive as these
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=8)


def _outcome(data: Any) -> AgentConfig | ConfigError:
    try:
        return parse_config(data, SOURCE, credentials_dir="/run/credentials/solar-agent.service")
    except ConfigError as exc:
        errors = config_errors(exc)
        assert errors
        for err in errors:
            assert str(err).startswith(f"{SOURCE}: ") and err.key
        return exc


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None)
@given(documents)
def test_random_documents_give_a_config_or_config_error(data: dict[str, Any]) -> None:
    _outcome(data)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


EXAMPLE_PATHS = _paths(EXAMPLE_DATA)


@st.composite
def mutated_examples(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(EXAMPLE_DATA)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent: Any = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(values)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(keys)] = draw(values)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or retyped this path
    return data


@pytest.mark.fuzz
@settings(max_examples=examples(400), deadline=None)
@given(mutated_examples())
def test_random_mutations_of_the_example_give_a_config_or_config_error(data: dict[str, Any]) -> None:
    result = _outcome(data)
    if isinstance(result, AgentConfig):
        # Whatever loads also prints and loads back unchanged (check-config shows the truth).
        assert parse_config(tomllib.loads(to_toml(result)), SOURCE,
                            credentials_dir="/run/credentials/solar-agent.service") == result


@st.composite
def mangled_texts(draw: st.DrawFn) -> str:
    lines = list(EXAMPLE_LINES)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        how = draw(st.sampled_from(["delete", "duplicate", "garble", "insert"]))
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "garble":
            cut = draw(st.integers(min_value=0, max_value=len(lines[i])))
            lines[i] = lines[i][:cut] + draw(st.text(alphabet='"[]=#{}.,\\ 0aZ\n\t\x00', max_size=4))
        else:
            lines.insert(i, draw(st.text(max_size=20)))
    return "\n".join(lines)


@pytest.mark.fuzz
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mangled_texts())
def test_mangled_files_through_the_cli_exit_0_or_2(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "site.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        schema = EXAMPLE.parent / "solar_panel_event.yaml"
        (Path(tmp) / "solar_panel_event.yaml").write_bytes(schema.read_bytes())
        with contextlib.suppress(ConfigError):
            load_config(path)
        # check-config prints; a ConfigError (or a traceback) must never escape it.
        assert main(["check-config", "-q", str(path)]) in (0, 2)
