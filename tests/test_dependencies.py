"""Every declared runtime dependency earns its place: the agent imports it, or names who needs it."""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Distribution name -> the module the agent imports.
IMPORT_NAMES = {"paho-mqtt": "paho", "pyjwt": "jwt", "pysunspec2": "sunspec2", "pyyaml": "yaml",
                "aiohttp": "aiohttp", "cryptography": "cryptography", "pymodbus": "pymodbus"}
# Declared without being imported by the agent, and why.
INDIRECT = {"pyserial": "pymodbus's RTU transport imports `serial` (pymodbus/transport/serialtransport.py)"}


def _declared() -> list[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    return [re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in deps]


def test_every_dependency_is_used() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "agent").rglob("*.py"))
    unused = []
    for dist in _declared():
        if dist in INDIRECT:
            continue
        module = IMPORT_NAMES.get(dist, dist.replace("-", "_"))
        if not re.search(rf"(?m)^\s*(?:import|from) {re.escape(module)}(?:[. ]|$)", source):
            unused.append(dist)
    assert unused == [], f"declared but never imported by agent/: {unused}"


def test_indirect_dependencies_are_still_needed() -> None:
    spec = importlib.util.find_spec("pymodbus.transport.serialtransport")
    assert spec is not None and spec.origin is not None
    assert re.search(r"(?m)^\s*import serial\b", Path(spec.origin).read_text(encoding="utf-8"))
    assert set(INDIRECT) <= set(_declared())
