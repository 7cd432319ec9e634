"""A SunSpec inverter simulator: pymodbus server, register images from pysunspec2's definitions.

An independent test peer for the Modbus source (it never imports ``agent.sources``): register
images are rendered by pysunspec2 (``device.Model(id).get_mb()``, unset points are the official
"not implemented" sentinels) and served by pymodbus 3.16's ``SimDevice``/``SimData`` server over
RTU (a serial port or pty) or Modbus TCP on loopback.

Chain per unit: ``SunS | 1 Common | 103 (or 113 float) | 0xFFFF 0`` at the configured base
address. Values follow a deterministic daily PV curve (seed + the clock you pass); the energy
counter only rises. ``expected(unit)`` returns the engineering values last served, quantised
exactly as on the wire, so a test compares decoded readings with them for equality.

Corpus units: ``corpus={unit: case}`` serves a device case of ``tests/cases/sunspec/<case>/device.json``
as it is, on that unit id: its register blocks (any read outside them is answered with exception 2, like a
real device's illegal address), and its ``silent`` ranges, where a read gets no answer at all. So the
Modbus source meets the corpus's real shapes (a Kostal chain ending in one 0x0000, SunS at 0 behind a
silent 40000, 701/714 DER inverters) on a real wire; ``case_expected(unit)`` is what a poll must yield.

Faults: ``dead_units`` never answer (their responses are dropped in pymodbus's ``trace_packet``
hook: pymodbus itself would answer an unknown id with an exception, which no RS-485 inverter
does); ``inject_exception(unit, code)`` answers the next request(s) with a Modbus exception;
``corrupt_next(unit)`` flips a byte of the next response (a CRC error on RTU).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import sunspec2.device as ss_device
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.simulators.corpus import SunSpecCase, sunspec_case

__all__ = ["SunSpecSimulator", "UnitState"]

log = logging.getLogger(__name__)

Value = float | int | str | None
_SUNS = (0x5375, 0x6E53)
_DAY = 86_400.0
# Scale factors the integer model serves (what a typical 10 kW three-phase inverter uses).
_SF = {"A_SF": -2, "V_SF": -1, "W_SF": 0, "Hz_SF": -2, "VA_SF": 0, "VAr_SF": 0, "PF_SF": -1,
       "WH_SF": 0, "DCA_SF": -2, "DCV_SF": -1, "DCW_SF": 0, "Tmp_SF": -1}
_POINT_SF = {"A": "A_SF", "AphA": "A_SF", "AphB": "A_SF", "AphC": "A_SF",
             "PPVphAB": "V_SF", "PPVphBC": "V_SF", "PPVphCA": "V_SF",
             "PhVphA": "V_SF", "PhVphB": "V_SF", "PhVphC": "V_SF", "W": "W_SF", "Hz": "Hz_SF",
             "VA": "VA_SF", "VAr": "VAr_SF", "PF": "PF_SF", "WH": "WH_SF", "DCA": "DCA_SF",
             "DCV": "DCV_SF", "DCW": "DCW_SF", "TmpCab": "Tmp_SF"}
_ST_SLEEPING, _ST_MPPT = 2, 4


class _ModelImage(Protocol):
    """What we use of a pysunspec2 ``Model`` (the package has no type hints)."""

    def get_mb(self) -> bytes:
        """The model's register image, ID and L included, big-endian."""
        ...


def _regs(model: _ModelImage) -> list[int]:
    raw = model.get_mb()
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


def _quantise(value: float, sf: int) -> float | int:
    raw = round(value / 10**sf)
    return raw * 10**sf if sf >= 0 else float(Decimal(raw).scaleb(sf))


@dataclass(slots=True)
class UnitState:
    """What one simulated unit last served (engineering values, SunSpec point names)."""

    unit: int
    served: dict[str, Value]
    reads: int = 0


class SunSpecSimulator:
    """Several SunSpec inverters on one bus (RTU) or behind one TCP server.

    Args:
        unit_ids: Modbus unit ids that answer (plus ``dead_units``, which never do).
        base_address: PDU address of ``SunS``: 40000, 0 or 50000.
        float_model: serve model 113 (float32) instead of 103 (int + scale factors).
        seed: makes each unit's curve, serial number and energy start deterministic.
        clock: epoch seconds used for the PV curve; pass a fixed one for constant values.
        unimplemented: point names left at their sentinel (e.g. ``{"Hz"}``, or ``{"V_SF"}``).
        dead_units: unit ids that are silent (timeouts); change later with ``set_dead``.
        rated_power_w: peak AC power of the curve.
        corpus: unit id -> name of a SunSpec device case to serve on that unit, as it is.
    """

    def __init__(self, unit_ids: Iterable[int] = (1,), *, base_address: int = 40000,
                 float_model: bool = False, seed: int = 0, clock: Callable[[], float] = time.time,
                 unimplemented: Iterable[str] = (), dead_units: Iterable[int] = (),
                 rated_power_w: float = 10_000.0, manufacturer: str = "SunSpecSim",
                 model_name: str = "SIM-10K-3P", corpus: Mapping[int, str] | None = None) -> None:
        self.cases: dict[int, SunSpecCase] = {u: sunspec_case(name) for u, name in (corpus or {}).items()}
        self.unit_ids = (*unit_ids, *self.cases)
        self.dead_units = set(dead_units)
        self.base_address = base_address
        self.float_model = float_model
        self.seed = seed
        self.clock = clock
        self.unimplemented = frozenset(unimplemented)
        self.rated_power_w = rated_power_w
        self.manufacturer = manufacturer
        self.model_name = model_name
        self.inverter_model = 113 if float_model else 103
        self.port: int | None = None             # bound TCP port once serving
        self._epoch_day = clock() // _DAY
        self._units = {u: UnitState(u, {}) for u in (*self.unit_ids, *self.dead_units)}
        self._exceptions: dict[int, list[int]] = {}
        self._corrupt: dict[int, int] = {}
        self._mute: set[int] = set()            # corpus units whose request hit a silent range

    # ---- values -------------------------------------------------------------------------

    def serial_number(self, unit: int) -> str:
        return f"SIM{self.seed:03d}{unit:03d}"

    def values_at(self, unit: int, t: float) -> dict[str, Value]:
        """Engineering values of ``unit`` at epoch ``t``, quantised as served (None = sentinel)."""
        rng = random.Random(self.seed * 1_000_003 + unit * 7919 + int(t // 60))
        hour = (t % _DAY) / 3600.0
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))
        scale = 0.8 + 0.2 * random.Random(self.seed * 31 + unit).random()
        w = self.rated_power_w * scale * sun * (0.97 + 0.03 * rng.random())
        # Energy = closed-form integral of the (cloud-free) curve, counted from the day the
        # simulator was created: deterministic, only rising, and small enough (< 2**24) that a
        # float32 energy register is exact too.
        day_wh = self.rated_power_w * scale * 24.0 / math.pi
        frac = 0.0 if hour < 6 else (1.0 if hour > 18 else (1 - math.cos(math.pi * (hour - 6) / 12)) / 2)
        days = max(0.0, t // _DAY - self._epoch_day)
        wh = 1_000_000 + 1000 * unit + (days + frac) * day_wh
        v = 230.0 + 2.0 * rng.random()
        pf = 99.0 + rng.random() if w > 0 else 100.0
        va = w / (pf / 100.0) if w > 0 else 0.0
        var = -math.sqrt(max(0.0, va * va - w * w))
        amps = w / (3 * v) if w > 0 else 0.0
        dcv = 600.0 + 40.0 * sun if w > 0 else 0.0
        dcw = w / 0.97
        eng: dict[str, float] = {
            "A": 3 * amps, "AphA": amps, "AphB": amps, "AphC": amps,
            "PPVphAB": v * math.sqrt(3), "PPVphBC": v * math.sqrt(3), "PPVphCA": v * math.sqrt(3),
            "PhVphA": v, "PhVphB": v, "PhVphC": v, "W": w, "Hz": 50.0 + (rng.random() - 0.5) / 10,
            "VA": va, "VAr": var, "PF": pf, "WH": wh, "DCA": dcw / dcv if dcv else 0.0, "DCV": dcv,
            "DCW": dcw, "TmpCab": 25.0 + 20.0 * sun,
        }
        out: dict[str, Value] = {}
        for name, value in eng.items():
            sf_name = _POINT_SF[name]
            if name in self.unimplemented or (not self.float_model and sf_name in self.unimplemented):
                out[name] = None
            else:
                out[name] = _quantise(value, _SF[sf_name])
        out["St"] = None if "St" in self.unimplemented else (_ST_MPPT if w > 0 else _ST_SLEEPING)
        out["Evt1"] = None if "Evt1" in self.unimplemented else 0
        out["Mn"], out["Md"], out["SN"] = self.manufacturer, self.model_name, self.serial_number(unit)
        return out

    def expected(self, unit: int, at: float | None = None) -> dict[str, Value]:
        """Engineering values last served by ``unit`` (or the curve at ``at``)."""
        if at is not None:
            return self.values_at(unit, at)
        return dict(self._units[unit].served)

    def case_expected(self, unit: int) -> list[tuple[str, dict[str, Value]]]:
        """``(device_id, metrics)`` a poll of corpus unit ``unit`` must yield (its case's expected.jsonl)."""
        return [(str(e["device_id"]), dict(e["metrics"])) for e in self.cases[unit].expected]

    def reads(self, unit: int) -> int:
        """Read requests this unit has processed (dead units count too: they heard the frame)."""
        return self._units[unit].reads

    # ---- faults -------------------------------------------------------------------------

    def set_dead(self, unit: int, dead: bool = True) -> None:
        (self.dead_units.add if dead else self.dead_units.discard)(unit)

    def inject_exception(self, unit: int, code: int = int(ExcCodes.DEVICE_BUSY), times: int = 1) -> None:
        """Answer the next ``times`` requests to ``unit`` with Modbus exception ``code``."""
        self._exceptions.setdefault(unit, []).extend([code] * times)

    def corrupt_next(self, unit: int, times: int = 1) -> None:
        """Flip a byte in the next ``times`` responses of ``unit`` (a CRC error on RTU)."""
        self._corrupt[unit] = self._corrupt.get(unit, 0) + times

    # ---- register image ---------------------------------------------------------------------

    def _common(self, unit: int) -> list[int]:
        m = ss_device.Model(model_id=1)
        m.Mn.set_value(self.manufacturer)
        m.Md.set_value(self.model_name)
        m.Vr.set_value("1.0.0")
        m.SN.set_value(self.serial_number(unit))
        m.DA.set_value(unit)
        return _regs(m)

    def _inverter(self, values: Mapping[str, Value]) -> list[int]:
        m = ss_device.Model(model_id=self.inverter_model)
        for name, value in values.items():
            if value is None or name in ("Mn", "Md", "SN"):
                continue
            if self.float_model or name in ("St", "Evt1"):
                getattr(m, name).set_value(value)
            else:
                sf = _SF[_POINT_SF[name]]
                getattr(m, name).set_value(round(Decimal(str(value)).scaleb(-sf)))
        if not self.float_model:
            for sf_name, sf in _SF.items():
                if sf_name not in self.unimplemented:
                    getattr(m, sf_name).set_value(sf)
        return _regs(m)

    def _image(self, unit: int) -> tuple[list[int], int]:
        values = self.values_at(unit, self.clock())
        common = self._common(unit)
        inverter = self._inverter(values)
        self._units[unit].served = values
        return [*_SUNS, *common, *inverter, 0xFFFF, 0], 2 + len(common)

    def _corpus_device(self, unit: int) -> SimDevice:
        case = self.cases[unit]
        blocks = [(int(b["address"]), [int(r) for r in b["registers"]]) for b in case.device["blocks"]]
        silent = [(int(lo), int(hi)) for lo, hi in case.device.get("silent", [])]
        # A silent range needs registers behind it, or pymodbus would answer "illegal address" before the
        # action could mute the answer.
        blocks += [(lo, [0] * (hi - lo)) for lo, hi in silent]

        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: object) -> ExcCodes | None:
            self._units[unit].reads += 1
            if any(lo <= address < hi for lo, hi in silent):
                self._mute.add(unit)
            queued = self._exceptions.get(unit)
            return ExcCodes(queued.pop(0)) if queued else None

        return SimDevice(id=unit, simdata=[SimData(a, values=regs, datatype=DataType.REGISTERS)
                                           for a, regs in sorted(blocks)], action=action)

    def _device(self, unit: int) -> SimDevice:
        if unit in self.cases:
            return self._corpus_device(unit)
        regs, inv_offset = self._image(unit)

        async def action(function_code: int, start_address: int, address: int, count: int,
                         registers: list[int], set_values: object) -> ExcCodes | None:
            state = self._units[unit]
            state.reads += 1
            queued = self._exceptions.get(unit)
            if queued:
                return ExcCodes(queued.pop(0))
            # Live values: re-render the inverter model in place before pymodbus answers.
            values = self.values_at(unit, self.clock())
            inverter = self._inverter(values)
            at = self.base_address - start_address + inv_offset
            registers[at:at + len(inverter)] = inverter
            state.served = values
            return None

        return SimDevice(id=unit, simdata=[SimData(self.base_address, values=regs, datatype=DataType.REGISTERS)],
                         action=action)

    def _trace_packet(self, framer: FramerType) -> Callable[[bool, bytes], bytes]:
        def trace(sending: bool, data: bytes) -> bytes:
            if not sending or not data:
                return data
            unit = data[0] if framer == FramerType.RTU else (data[6] if len(data) > 6 else -1)
            if unit in self.dead_units or unit not in self._units:
                return b""          # a silent unit: the master times out, as on a real bus
            if unit in self._mute:
                self._mute.discard(unit)
                return b""          # a corpus unit's silent address range
            if self._corrupt.get(unit, 0) > 0:
                self._corrupt[unit] -= 1
                pos = len(data) // 2
                return data[:pos] + bytes([data[pos] ^ 0x5A]) + data[pos + 1:]
            return data
        return trace

    # ---- serving ------------------------------------------------------------------------------

    @asynccontextmanager
    async def serve_rtu(self, port_path: str, baudrate: int = 9600) -> AsyncIterator[SunSpecSimulator]:
        """Serve every unit on one RTU bus at ``port_path`` (open the pty pair first)."""
        server = ModbusSerialServer([self._device(u) for u in self._units], framer=FramerType.RTU,
                                    port=port_path, baudrate=baudrate, timeout=1,
                                    trace_packet=self._trace_packet(FramerType.RTU))
        await server.serve_forever(background=True)
        log.info("sunspec simulator serving rtu port=%s units=%s dead=%s", port_path,
                 self.unit_ids, sorted(self.dead_units))
        try:
            yield self
        finally:
            await server.shutdown()

    @asynccontextmanager
    async def serve_tcp(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[SunSpecSimulator]:
        """Serve every unit on Modbus TCP at ``host:port`` (0 = a free port, see ``self.port``)."""
        server = ModbusTcpServer([self._device(u) for u in self._units], framer=FramerType.SOCKET,
                                 address=(host, port), trace_packet=self._trace_packet(FramerType.SOCKET))
        await server.serve_forever(background=True)
        sockets = getattr(server.transport, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("sunspec simulator serving tcp host=%s port=%s units=%s", host, self.port, self.unit_ids)
        try:
            yield self
        finally:
            await server.shutdown()
            self.port = None
            await asyncio.sleep(0)   # let the listener's close callbacks run before the loop ends
