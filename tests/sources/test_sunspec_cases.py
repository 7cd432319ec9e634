"""The SunSpec corpus (tests/cases/sunspec/<case>/device.json): discovery and decoding, without a wire.

A case's ``device.json`` is what a Modbus unit answers; ``read`` below plays it by the same rules the
simulator serves it with (an address outside the blocks is exception 2, a ``silent`` range never answers).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import DeviceProtocolError, DeviceRefused, DeviceTimeout
from agent.sources import sunspec
from tests.fuzz import examples

CASES = Path(__file__).parent.parent / "cases" / "sunspec"


def _cases() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if (p / "device.json").exists())


def reader(device: dict[str, Any]) -> Callable[[int, int], Awaitable[list[int]]]:
    """An in-memory unit answering like ``device.json`` says (and like the simulator serves it)."""

    async def read(address: int, count: int) -> list[int]:
        if any(lo <= address < hi for lo, hi in device.get("silent", [])):
            raise DeviceTimeout(f"no answer reading {address}+{count}")
        for block in device["blocks"]:
            start, regs = block["address"], block["registers"]
            if start <= address and address + count <= start + len(regs):
                return list(regs[address - start:address - start + count])
        raise DeviceRefused(f"Modbus exception 2 (illegal data address) reading {address}+{count}")
    return read


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_case_cites_its_source(case: Path) -> None:
    assert (case / "SOURCE.md").exists()
    assert (case / "discovery.json").exists()


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
async def test_discovery(case: Path) -> None:
    device = json.loads((case / "device.json").read_text())
    want = json.loads((case / "discovery.json").read_text())
    found = await sunspec.discover(reader(device), sunspec.BASE_CANDIDATES)
    if "error" in want:
        assert found.base is None and not found.chain
        text = found.describe()
        for address, answer in want["error"].items():
            assert f"{address}: " in text and answer in text, (address, answer, text)
        return
    assert found.base == want["base"]
    assert [m.model_id for m in found.chain] == want["models"]
    for address, answer in want.get("tried", {}).items():
        assert answer in dict((str(a), t) for a, t in found.tried)[address]


@pytest.mark.parametrize("case", [c for c in _cases() if (c / "expected.jsonl").read_text().strip()],
                         ids=lambda p: p.name)
async def test_readings(case: Path) -> None:
    device = json.loads((case / "device.json").read_text())
    read = reader(device)
    found = await sunspec.discover(read, sunspec.BASE_CANDIDATES)
    models: dict[int, sunspec.GroupValues] = {}
    for m in found.chain:
        if m.model_id in sunspec.SUPPORTED_MODELS and m.model_id not in models:
            models[m.model_id] = sunspec.decode_model(m.model_id, await read(m.address, m.length))
    common = models.pop(1)
    got = [{"device_id": d, "metrics": m} for d, m in sunspec.device_readings(sunspec.device_id(common), models)]
    expected = [json.loads(line) for line in (case / "expected.jsonl").read_text().splitlines()]
    assert got == expected


async def test_a_garbled_answer_in_the_chain_is_no_end_of_it() -> None:
    # RS-485 noise on the read of the next model ID: discovery fails (and is tried again next cycle)
    # instead of caching a chain that ends early. Seen in tests/reliability (serial garbage): a unit
    # whose chain was cut after model 1 was "read" every cycle without a request, alive or dead.
    case = next(c for c in _cases() if json.loads((c / "discovery.json").read_text()).get("models", [0])[1:])
    device = json.loads((case / "device.json").read_text())
    want = json.loads((case / "discovery.json").read_text())
    honest = reader(device)
    calls = 0

    async def noisy(address: int, count: int) -> list[int]:
        nonlocal calls
        regs = await honest(address, count)
        calls += 1
        if address > want["base"] + 2 and count == 1 and calls > 3:     # an ID past model 1's
            raise DeviceProtocolError(f"garbled answer reading {address}+{count}")
        return regs
    with pytest.raises(DeviceProtocolError, match="garbled"):
        await sunspec.discover(noisy, sunspec.BASE_CANDIDATES)
    assert [m.model_id for m in (await sunspec.discover(honest, sunspec.BASE_CANDIDATES)).chain] == want["models"]


REG = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 1, 0xFFFF, 0x5375, 0x6E53, 66, 50, 103]))


@pytest.mark.fuzz
@settings(max_examples=examples(200), deadline=None)
@given(blocks=st.lists(st.tuples(st.sampled_from([0, 40000, 50000, 40002, 40070]),
                                 st.lists(REG, min_size=0, max_size=140)), max_size=3),
       silent=st.lists(st.sampled_from([(40000, 40125), (0, 10), (50000, 50070)]), max_size=2))
def test_discovery_of_any_register_map_ends(blocks: list[tuple[int, list[int]]], silent: list[tuple[int, int]]) -> None:
    """Any map: a Discovery, or DeviceTimeout/DeviceProtocolError; never a hang or another exception."""
    device = {"blocks": [{"address": a, "registers": r} for a, r in blocks], "silent": [list(s) for s in silent]}

    async def run() -> None:
        try:
            found = await sunspec.discover(reader(device), sunspec.BASE_CANDIDATES)
        except (DeviceTimeout, DeviceProtocolError):
            return
        if found.base is None:
            assert len(found.tried) == len(sunspec.BASE_CANDIDATES) and found.describe()
        else:
            assert found.chain[0].model_id == 1 and len(found.chain) <= sunspec.MAX_CHAIN_MODELS

    asyncio.run(run())
