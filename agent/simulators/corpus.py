"""The device corpus the simulators replay: ``tests/cases/`` of a solar-agent checkout.

The corpus holds frames derived from the devices' firmware sources and vendor documents (each case cites
its source in ``SOURCE.md``); the decoders are tested against it. The simulators publish and serve the
same files instead of a second, hand-written belief of what a device sends. ``SOLAR_AGENT_CORPUS=DIR``
points elsewhere (an installed agent has no ``tests/``).

Plain file reading only: a test peer shares nothing with ``agent.sources``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

CORPUS_ENV: Final = "SOLAR_AGENT_CORPUS"
BASE_MS: Final = 1_732_860_000_000          # receive time of offset 0 in every MQTT case


@dataclass(frozen=True, slots=True)
class MqttCase:
    """One ``tests/cases/mqtt/<profile>/<name>/`` case."""

    profile: str
    name: str
    messages: tuple[tuple[int, str, bytes], ...]      # (offset ms, topic, payload)
    expected: tuple[dict[str, Any], ...]              # {"device_id", "time_ms", "metrics"}
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SunSpecCase:
    """One ``tests/cases/sunspec/<name>/`` device case."""

    name: str
    device: dict[str, Any]                            # unit_id, blocks, silent
    expected: tuple[dict[str, Any], ...]              # {"device_id", "metrics"}
    discovery: dict[str, Any]


# Where the Debian package installs the corpus (packaging/build-deb).
PACKAGED_CORPUS: Final = Path("/usr/share/solar-agent/cases")


def corpus_dir() -> Path:
    """The corpus folder, or FileNotFoundError saying where it was looked for and how to point elsewhere.

    ``$SOLAR_AGENT_CORPUS`` when set; else the checkout's ``tests/cases``; else the packaged copy.
    """
    env = os.environ.get(CORPUS_ENV)
    candidates = [Path(env)] if env else [Path(__file__).resolve().parents[2] / "tests" / "cases", PACKAGED_CORPUS]
    for path in candidates:
        if (path / "mqtt").is_dir() and (path / "sunspec").is_dir():
            return path
    raise FileNotFoundError(
        f"the device corpus is not at {' nor '.join(map(str, candidates))}: the simulators replay tests/cases/ "
        f"of a solar-agent checkout (the package installs it in {PACKAGED_CORPUS}); set {CORPUS_ENV}=DIR")


def _jsonl(path: Path) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


@cache
def mqtt_case(profile: str, name: str) -> MqttCase:
    """Load one MQTT case."""
    folder = corpus_dir() / "mqtt" / profile / name
    messages = []
    for msg in _jsonl(folder / "input.jsonl"):
        payload = bytes.fromhex(msg["payload_hex"]) if "payload_hex" in msg else str(msg["payload"]).encode()
        messages.append((int(msg["t"]), str(msg["topic"]), payload))
    cfg_file = folder / "config.json"
    config = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.exists() else {}
    return MqttCase(profile, name, tuple(messages), _jsonl(folder / "expected.jsonl"), config)


@cache
def sunspec_case(name: str) -> SunSpecCase:
    """Load one SunSpec device case."""
    folder = corpus_dir() / "sunspec" / name
    device = json.loads((folder / "device.json").read_text(encoding="utf-8"))
    discovery = json.loads((folder / "discovery.json").read_text(encoding="utf-8"))
    return SunSpecCase(name, device, _jsonl(folder / "expected.jsonl"), discovery)


def sunspec_cases() -> list[str]:
    """Names of every SunSpec device case."""
    return sorted(p.name for p in (corpus_dir() / "sunspec").iterdir() if (p / "device.json").exists())


__all__ = ["BASE_MS", "CORPUS_ENV", "MqttCase", "SunSpecCase", "corpus_dir", "mqtt_case", "sunspec_case",
           "sunspec_cases"]
