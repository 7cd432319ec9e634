"""SunSpec register decoding and discovery: pure functions, driven by pysunspec2's official model JSON.

Only the discovery rules (the ``SunS`` marker, the ``ID, L`` header, the end model ``0xFFFF``) are
written here; every offset, type, scale-factor link and enum symbol comes from
``sunspec2/models/json/model_<id>.json``, loaded as data. No I/O of its own: ``discover`` walks a
device through a ``read(address, count)`` coroutine the Modbus poller gives it, the rest turns
registers into values.

Conventions:
* A model block is the list of 16-bit registers as read from the device **starting at its ID
  register** (``ID, L, body...``), exactly ``L + 2`` long.
* Every "not implemented" sentinel (``0x8000``, ``0xFFFF``, accumulator ``0``, ``0xFFFFFFFF``,
  ``0x80000000``, NaN, empty string, a sentinel scale factor) decodes to ``None``, never a number.
* Scaled values are exact: ``1452 * 10**-2`` is ``14.52`` (the float nearest the decimal value, as
  ``Decimal`` would give it), and float32 values are shown with the shortest decimal that
  round-trips to the same float32.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final, TypeAlias

from agent.errors import DeviceProtocolError, DeviceRefused, DeviceTimeout

__all__ = [
    "BASE_CANDIDATES", "END_MODEL_ID", "SUNS_MARKER", "SUPPORTED_MODELS", "Discovery", "GroupDef", "GroupValues",
    "ModelAt", "ModelDef", "PointDef", "Reader", "Scalar", "decode_model", "device_id", "device_readings",
    "discover", "enum_symbol", "is_marker", "model_def", "string_metrics", "to_metrics",
]

SUNS_MARKER: Final = (0x5375, 0x6E53)          # b"SunS"
BASE_CANDIDATES: Final = (40000, 0, 50000)     # pysunspec2's probe order (0-based PDU addresses)
END_MODEL_ID: Final = 0xFFFF
MAX_REGISTERS_PER_READ: Final = 125            # FC3 limit
SUPPORTED_MODELS: Final = frozenset({1, 101, 102, 103, 111, 112, 113, 160, 701, 714})
MAX_CHAIN_MODELS: Final = 64                   # a chain longer than this is garbage, not a device
INVERTER_MODELS: Final = (103, 102, 101, 113, 112, 111)

Scalar: TypeAlias = float | int | str | None
Known: TypeAlias = float | int | str         # a Scalar that is not unknown
GroupValues: TypeAlias = dict[str, "Scalar | list[GroupValues]"]

_SIZES: Final = {
    "int16": 1, "uint16": 1, "count": 1, "acc16": 1, "enum16": 1, "bitfield16": 1, "sunssf": 1, "pad": 1,
    "int32": 2, "uint32": 2, "acc32": 2, "enum32": 2, "bitfield32": 2, "float32": 2, "ipaddr": 2,
    "int64": 4, "uint64": 4, "acc64": 4, "float64": 4, "eui48": 4, "ipv6addr": 8,
}
_SIGNED: Final = frozenset({"int16", "sunssf", "int32", "int64"})
# Raw (unsigned register-image) sentinel per integer type, from sunspec2/mb.py.
_SENTINEL: Final = {
    "int16": 0x8000, "sunssf": 0x8000, "uint16": 0xFFFF, "count": 0xFFFF, "enum16": 0xFFFF,
    "bitfield16": 0xFFFF, "acc16": 0, "int32": 0x80000000, "uint32": 0xFFFFFFFF, "enum32": 0xFFFFFFFF,
    "bitfield32": 0xFFFFFFFF, "acc32": 0, "ipaddr": 0, "int64": 0x8000000000000000,
    "uint64": 0xFFFFFFFFFFFFFFFF, "acc64": 0,
}
_DEVICE_ID_BAD: Final = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a group: offset in registers from the group start, type and links."""

    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None = None
    symbols: Mapping[int, str] | None = None


@dataclass(frozen=True, slots=True)
class GroupDef:
    """A fixed group (count None) or a repeating group (count: a point name, or 0 = fill the model)."""

    name: str
    points: tuple[PointDef, ...]
    groups: tuple[GroupDef, ...]
    count: str | int | None
    length: int                 # registers of one instance, nested fixed parts included


@dataclass(frozen=True, slots=True)
class ModelDef:
    id: int
    name: str
    group: GroupDef


# A JSON object from pysunspec2's model files: its values are whatever json.loads made of them.
_JsonObject: TypeAlias = Mapping[str, Any]


def _members(doc: _JsonObject, key: str) -> list[_JsonObject]:
    """The list of JSON objects under ``key`` ([] when absent).

    The model files ship inside pysunspec2, so a wrong shape is a packaging bug and fails loudly.
    """
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise DeviceProtocolError(f"SunSpec model group {doc.get('name')!r}: {key!r} is not a list of objects",
                                  hint="reinstall pysunspec2; its model JSON files look damaged")
    return items


def _parse_group(doc: _JsonObject) -> GroupDef:
    points: list[PointDef] = []
    offset = 0
    for p in _members(doc, "points"):
        ptype = str(p["type"])
        size = int(p.get("size", _SIZES.get(ptype, 1)))
        syms = p.get("symbols")
        symbols = {int(s["value"]): str(s["name"]) for s in syms} if syms else None
        sf = p.get("sf")
        points.append(PointDef(str(p["name"]), ptype, offset, size, sf, symbols))
        offset += size
    groups = tuple(_parse_group(g) for g in _members(doc, "groups"))
    count = doc.get("count")
    return GroupDef(str(doc["name"]), tuple(points), groups,
                    count if isinstance(count, (str, int)) else None, offset)


@cache
def model_def(model_id: int) -> ModelDef:
    """The official definition of a model, read from pysunspec2's package data."""
    path = resources.files("sunspec2") / "models" / "json" / f"model_{model_id}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DeviceProtocolError(f"unknown SunSpec model {model_id}",
                                  hint="the device reports a model pysunspec2 does not define") from exc
    return ModelDef(int(doc["id"]), str(doc["group"]["name"]), _parse_group(doc["group"]))


def is_marker(registers: Sequence[int]) -> bool:
    """True when the two registers spell ``SunS``."""
    return tuple(registers[:2]) == SUNS_MARKER


def _float32_shortest(raw: int) -> float | None:
    packed = raw.to_bytes(4, "big")
    value: float = struct.unpack(">f", packed)[0]
    if not math.isfinite(value):
        return None
    # Shortest decimal that maps back to the same float32: 230.9, not 230.89999389648438.
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def _raw(regs: Sequence[int], point: PointDef, base: int) -> Scalar:
    """The raw value of a point (before scaling); None for a sentinel or a short block."""
    start = base + point.offset
    words = regs[start:start + point.size]
    if len(words) < point.size:
        return None
    ptype = point.type
    if ptype == "string":
        data = b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)
        text = data.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()
        return text or None
    if ptype == "pad":
        return None
    value = 0
    for w in words:
        value = (value << 16) | (w & 0xFFFF)
    if ptype == "float32":
        return _float32_shortest(value)
    if ptype == "float64":
        f: float = struct.unpack(">d", value.to_bytes(8, "big"))[0]
        return f if math.isfinite(f) else None
    if ptype in ("eui48", "ipv6addr"):
        return None if value == 0 else value.to_bytes(2 * point.size, "big").hex()
    if _SENTINEL.get(ptype) == value:
        return None
    if ptype in _SIGNED:
        bits = 16 * point.size
        if value >= 1 << (bits - 1):
            value -= 1 << bits
    return value


def _scale(raw: int, sf: int) -> float | int:
    if sf >= 0:
        factor: int = 10**sf        # a non-negative exponent keeps it an int (typeshed says Any)
        return raw * factor
    # int / int is correctly rounded in Python (any size): the float nearest raw * 10**sf, the same
    # float(Decimal(raw).scaleb(sf)) gives (checked over 2M random cases), at a tenth of its cost.
    divisor: int = 10**-sf
    return raw / divisor


@dataclass(frozen=True, slots=True)
class _Plan:
    """A group's points as its decoder walks them, worked out once per group (see _decode_group)."""

    # (name, offset, one-word integer?, its sentinel, signed?, the point) of every point but pads
    points: tuple[tuple[str, int, bool, int | None, bool, PointDef], ...]
    scaled: tuple[tuple[str, str | int], ...]     # (name, sf) of the points a scale factor applies to


_ONE_WORD_INTS: Final = frozenset({"int16", "uint16", "count", "acc16", "enum16", "bitfield16", "sunssf"})
_PLANS: dict[int, tuple[GroupDef, _Plan]] = {}   # by id(group): the groups of model_def live for ever


def _plan(group: GroupDef) -> _Plan:
    known = _PLANS.get(id(group))
    if known is not None and known[0] is group:
        return known[1]
    plan = _Plan(
        tuple((p.name, p.offset, p.size == 1 and p.type in _ONE_WORD_INTS, _SENTINEL.get(p.type),
               p.type in _SIGNED, p) for p in group.points if p.type != "pad"),
        tuple((p.name, p.sf) for p in group.points if p.type not in ("pad", "sunssf") and p.sf is not None),
    )
    _PLANS[id(group)] = (group, plan)
    return plan


def _decode_group(group: GroupDef, regs: Sequence[int], base: int, end: int,
                  parents: Sequence[Mapping[str, Scalar]]) -> GroupValues:
    # A poll decodes a 50-point model per inverter each second: one-word integers (most points)
    # are decoded inline here, the rest by _raw (measured: 80 us -> 20 us per 103 block).
    plan = _plan(group)
    raws: dict[str, Scalar] = {}
    n = len(regs)
    for name, off, word, sentinel, signed, p in plan.points:
        if word:
            i = base + off
            if i < n:
                v = regs[i] & 0xFFFF
                raws[name] = None if v == sentinel else (v - 0x10000 if signed and v >= 0x8000 else v)
            else:
                raws[name] = None
        else:
            raws[name] = _raw(regs, p, base)
    out: GroupValues = dict(raws)
    for name, ref in plan.scaled:
        value = raws[name]
        if isinstance(value, int):
            sf: Scalar
            if isinstance(ref, int):
                sf = ref
            elif ref in raws:
                sf = raws[ref]
            else:
                sf = next((s[ref] for s in parents if ref in s), None)
            out[name] = _scale(value, sf) if isinstance(sf, int) and -10 <= sf <= 10 else None
    scopes = (raws, *parents)
    offset = base + group.length
    for sub in group.groups:
        n = _repeat_count(sub, raws, end - offset)
        items: list[GroupValues] = []
        for _ in range(n):
            items.append(_decode_group(sub, regs, offset, end, scopes))
            offset += sub.length
        out[sub.name] = items
    return out


def _repeat_count(sub: GroupDef, raws: Mapping[str, Scalar], room: int) -> int:
    fits = max(0, room) // sub.length if sub.length else 0
    if sub.count is None:
        return min(1, fits)
    if isinstance(sub.count, str):
        declared = raws.get(sub.count)
        # Never trust a count past what the block holds: a bad count must not read other models.
        return min(declared, fits) if isinstance(declared, int) and declared >= 0 else 0
    return fits if sub.count == 0 else min(sub.count, fits)


def decode_model(model_id: int, registers: Sequence[int]) -> GroupValues:
    """Decode one model block (``ID, L, body``) into ``{point: value}``.

    Repeating groups (160 ``module``, 714 ``Prt``) become lists of dicts under the group name.
    Raises ``DeviceProtocolError`` if the block's ID is not ``model_id`` or it is shorter than its L.
    """
    if len(registers) < 2 or registers[0] != model_id:
        got = registers[0] if registers else None
        raise DeviceProtocolError(f"model block does not start with ID {model_id} (got {got})",
                                  hint="the model chain moved; rediscover the device")
    length = registers[1] + 2
    if len(registers) < length:
        raise DeviceProtocolError(f"model {model_id} block has {len(registers)} registers, L says {length}")
    mdef = model_def(model_id)
    values = _decode_group(mdef.group, registers, 0, length, ())
    values.pop("ID", None)
    values.pop("L", None)
    return values


def enum_symbol(model_id: int, point: str, value: object) -> str | None:
    """The symbol name of an enum value (``4`` -> ``"MPPT"`` for 103.St); None if unknown."""
    if not isinstance(value, int):
        return None
    for p in model_def(model_id).group.points:
        if p.name == point and p.symbols:
            return p.symbols.get(value, str(value))
    return None


def device_id(common: Mapping[str, object], fallback: str = "") -> str:
    """``<Mn>-<SN>`` from model 1, reduced to ``[A-Za-z0-9_.-]``; ``fallback`` when both are missing."""
    parts = [str(common[k]) for k in ("Mn", "SN") if isinstance(common.get(k), str) and common[k]]
    text = _DEVICE_ID_BAD.sub("_", "-".join(parts)).strip("_-.")
    return text or fallback


def _num(value: object) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def to_metrics(models: Mapping[int, Mapping[str, object]]) -> dict[str, Scalar]:
    """Map decoded models to ``solar_panel_event`` fields (every field present, None if unknown).

    The first inverter model present wins (103, 102, 101, 113, 112, 111); 701/714 fill in when
    no 10x/11x model is there. 701's ``Alrm`` is not ``Evt1`` (other bit meanings): event_flags stays None;
    its ``PF`` is a fraction (stored as percent) and its operating state is ``InvSt`` (``St`` is ON/OFF).
    An inverter's reading holds its totals and its reference voltage (``PhVphA``, the mandatory voltage
    point of 101-103; 701's ``LNV``). Its per-phase points (``AphA..C``, ``WL1..3``) are not emitted as
    phase readings: an inverter's phases are balanced by design, unlike a meter's, and three more rows
    per poll would carry little.
    """
    m: dict[str, Scalar] = dict.fromkeys((
        "ac_power_w", "ac_energy_wh", "ac_voltage_v", "ac_current_a", "ac_frequency_hz",
        "ac_apparent_power_va", "ac_reactive_power_var", "power_factor_pct", "dc_power_w",
        "dc_voltage_v", "dc_current_a", "temperature_c", "operating_state", "event_flags"))
    inv_id = next((mid for mid in INVERTER_MODELS if mid in models), None)
    if inv_id is not None:
        inv = models[inv_id]
        for field, point in (("ac_power_w", "W"), ("ac_energy_wh", "WH"), ("ac_voltage_v", "PhVphA"),
                             ("ac_current_a", "A"), ("ac_frequency_hz", "Hz"), ("ac_apparent_power_va", "VA"),
                             ("ac_reactive_power_var", "VAr"), ("power_factor_pct", "PF"),
                             ("dc_power_w", "DCW"), ("dc_voltage_v", "DCV"), ("dc_current_a", "DCA"),
                             ("temperature_c", "TmpCab"), ("event_flags", "Evt1")):
            m[field] = _num(inv.get(point))
        # 111-113 share the St enum of 101-103; model_111.json (pysunspec2 1.3.7) spells every symbol with
        # a stray "gg" prefix (ggMPPT), so the integer twin's symbols are used for all of them.
        m["operating_state"] = enum_symbol(inv_id - 10 if inv_id > 110 else inv_id, "St", inv.get("St"))
    elif 701 in models:
        ac = models[701]
        for field, point in (("ac_power_w", "W"), ("ac_energy_wh", "TotWhInj"), ("ac_current_a", "A"),
                             ("ac_frequency_hz", "Hz"), ("ac_apparent_power_va", "VA"),
                             ("ac_reactive_power_var", "Var"), ("temperature_c", "TmpCab")):
            m[field] = _num(ac.get(point))
        # 701's PF has no unit: a -1..1 fraction (the 10x models' PF is in percent).
        pf = _num(ac.get("PF"))
        m["power_factor_pct"] = None if pf is None else float(Decimal(str(pf)) * 100)
        m["ac_voltage_v"] = _num(ac.get("LNV")) if ac.get("LNV") is not None else _num(ac.get("VL1"))
        # 701's St is only OFF/ON (connected or not); the inverter's operating state is InvSt.
        state = ("InvSt", ac.get("InvSt")) if ac.get("InvSt") is not None else ("St", ac.get("St"))
        m["operating_state"] = enum_symbol(701, *state)
    if m["dc_power_w"] is None and m["dc_current_a"] is None and 714 in models:
        dc = models[714]
        m["dc_power_w"] = _num(dc.get("DCW"))
        m["dc_current_a"] = _num(dc.get("DCA"))
        ports = dc.get("Prt")
        if isinstance(ports, list) and len(ports) == 1:
            m["dc_voltage_v"] = _num(ports[0].get("DCV"))
    return m


def string_metrics(models: Mapping[int, Mapping[str, object]]) -> list[tuple[int, dict[str, Scalar]]]:
    """Per-string DC metrics ``[(n, {dc_*})]`` (n from 1) from model 160 modules or 714 ports."""
    for mid, group in ((160, "module"), (714, "Prt")):
        items = models.get(mid, {}).get(group)
        if isinstance(items, list) and items:
            return [(n, {"dc_current_a": _num(it.get("DCA")), "dc_voltage_v": _num(it.get("DCV")),
                         "dc_power_w": _num(it.get("DCW"))})
                    for n, it in enumerate(items, start=1)]
    return []


def device_readings(device: str, models: Mapping[int, Mapping[str, object]]) -> list[tuple[str, dict[str, Known]]]:
    """The readings of one poll: ``(device, metrics)`` then ``(device/pv<n>, metrics)`` per string.

    Unknown values (None) are left out; a string whose values are all unknown is no reading.
    """
    out: list[tuple[str, dict[str, Known]]] = [
        (device, {k: v for k, v in to_metrics(models).items() if v is not None})]
    for n, dc in string_metrics(models):
        values = {k: v for k, v in dc.items() if v is not None}
        if values:
            out.append((f"{device}/pv{n}", values))
    return out


# ---- discovery ------------------------------------------------------------------------------

Reader = Callable[[int, int], Awaitable[list[int]]]
"""``await read(address, count)``: holding registers, or DeviceTimeout (no answer) / DeviceProtocolError
(a Modbus exception or a garbled answer). Any other error (the bus is gone) ends the discovery."""


@dataclass(frozen=True, slots=True)
class ModelAt:
    """A model in a device's chain: its ID, the address of its ID register, its length incl. ID and L."""

    model_id: int
    address: int
    length: int


@dataclass(frozen=True, slots=True)
class Discovery:
    """What a SunSpec discovery found: the base and model chain, or why not.

    ``tried``: every base probed before the marker was found (all of them when it was not), with what it
    answered, so a failed discovery can name each address and its answer.
    """

    base: int | None
    chain: tuple[ModelAt, ...]
    tried: tuple[tuple[int, str], ...]
    note: str = ""                      # a quirk discovery worked around (e.g. the chain's end marker)

    @property
    def silent(self) -> bool:
        """True when no base answered at all: the device, not the base address, is the problem."""
        return self.base is None and all(answer.startswith("no answer") for _, answer in self.tried)

    def describe(self) -> str:
        """``40000: no answer (timeout); 0: Modbus exception 2 ...; 50000: answered 0x0000 0x0000 (not SunS)``"""
        return "; ".join(f"{address}: {answer}" for address, answer in self.tried)


async def discover(read: Reader, bases: Sequence[int]) -> Discovery:
    """Find ``SunS`` at the first of ``bases`` that has it and walk the model chain.

    Every base is probed in turn, whatever the previous one answered: a unit may be silent at 40000 and
    have its map at 0 or 50000 (pysunspec2's ``scan`` does the same). The chain ends at ``0xFFFF``, at
    ``0x0000`` (no model has ID 0: a KOSTAL quirk, sunspec/models issue #44, ends the chain with one
    0x0000 register and refuses any read past it), or at a Modbus exception where the next ID should be.
    Raises DeviceProtocolError when the chain found is not SunSpec (no model 1 first, no end);
    DeviceTimeout and DeviceProtocolError from ``read`` during the walk propagate.
    """
    tried: list[tuple[int, str]] = []
    base = None
    for candidate in bases:
        try:
            regs = await read(candidate, 2)
        except DeviceTimeout:
            tried.append((candidate, "no answer (timeout)"))
            continue
        except DeviceProtocolError as exc:
            tried.append((candidate, exc.message))
            continue
        if is_marker(regs):
            base = candidate
            break
        shown = " ".join(f"0x{r & 0xFFFF:04X}" for r in regs[:2])
        tried.append((candidate, f"answered {shown} (not SunS)"))
    if base is None:
        return Discovery(None, (), tuple(tried))
    chain: list[ModelAt] = []
    note = ""
    addr = base + 2
    for _ in range(MAX_CHAIN_MODELS):
        try:
            # ID and L read apart: some devices do not supply L for the end model.
            (mid,) = await read(addr, 1)
        except DeviceRefused as exc:
            # Only a Modbus exception ends a chain: a garbled answer (RS-485 noise) is no answer at
            # all, and taking it for the end cached a chain without the inverter model, whose polls
            # then read nothing and "succeeded" for ever, dead device or not.
            if not chain:
                raise
            note = f"chain ends at {addr} with an exception instead of 0xFFFF ({exc.message})"
            break
        if mid == END_MODEL_ID:
            break
        if mid == 0:
            note = f"chain ends at {addr} with 0x0000 instead of 0xFFFF"
            break
        (length,) = await read(addr + 1, 1)
        chain.append(ModelAt(mid, addr, length + 2))
        addr += length + 2
    else:
        raise DeviceProtocolError(f"model chain at {base} does not end after {MAX_CHAIN_MODELS} models",
                                  hint="not a SunSpec map: set base_address, or check the unit id")
    if not chain or chain[0].model_id != 1:
        first = chain[0].model_id if chain else None
        raise DeviceProtocolError(f"chain at {base} does not start with model 1 (starts with {first})",
                                  hint="not a SunSpec map: set base_address, or check the unit id")
    return Discovery(base, tuple(chain), tuple(tried), note)
