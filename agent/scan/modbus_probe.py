"""One Modbus link for commissioning: classify what a unit answers, and identify a SunSpec unit.

A probe is one FC3 read with a short timeout, classified four ways, because each tells the technician
something different on an RS-485 line:

* ``data`` / ``exception``: a valid frame from that unit id (a Modbus exception is an answer too: the
  unit exists and the line settings are right);
* ``garbled``: bytes came back but not a valid frame (bad CRC or framing): someone talks, but at other
  line settings (parity), or two units share an id, or the line is noisy;
* ``silent``: nothing within the timeout: nobody at this id, or nobody understood the request (another
  baud rate);
* ``late``: a valid frame from another unit id, the one asked before: it answers after the timeout
  (the line settings are right; the timeout is too short for it).

Read-only: only function 3 (read holding registers) is ever sent. Foreign exceptions (pymodbus,
pyserial, termios) end here and become ``SourceError`` (the link cannot be opened) or a probe kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import termios
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final, Literal

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException, ModbusIOException

from agent.errors import AgentError, DeviceProtocolError, DeviceRefused, DeviceTimeout, SourceError
from agent.scan.results import FoundUnit, LineSettings
from agent.sources.sunspec import BASE_CANDIDATES, decode_model, device_id, discover

ProbeKind = Literal["data", "exception", "silent", "garbled", "late"]
SUNSPEC_BASES: Final = BASE_CANDIDATES          # 40000, 0, 50000: the order the agent tries them in
_EXCEPTIONS: Final = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
                      4: "device failure", 6: "device busy", 11: "gateway target did not respond"}


IDENTIFY_TIMEOUT_SECONDS: Final = 1.0             # reading a map that answered: worth waiting for


@dataclass(frozen=True, slots=True)
class Probe:
    kind: ProbeKind
    detail: str = ""
    registers: tuple[int, ...] = ()
    late_unit: int | None = None                 # ``late``: the unit whose answer came

    @property
    def answered(self) -> bool:
        """A valid frame from the unit asked: it exists, and the line settings are right."""
        return self.kind in ("data", "exception")


class Link:
    """An open pymodbus client with a probe counter. Use ``open_rtu``/``open_tcp`` (async context managers)."""

    def __init__(self, client: AsyncModbusSerialClient | AsyncModbusTcpClient, where: str) -> None:
        self._client = client
        self.where = where
        self.probes = 0
        self._rx = bytearray()        # bytes received since the last request (garbled vs silent vs late)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx.clear()
        else:
            self._rx += data
        return data

    async def probe(self, unit: int, address: int, count: int = 2) -> Probe:
        """One read; never raises for what the unit did (only for a link that is gone)."""
        self.probes += 1
        try:
            rr = await self._client.read_holding_registers(address, count=count, device_id=unit)
        except ModbusIOException:
            if not self._client.connected:
                raise SourceError(f"{self.where}: the link closed during the scan",
                                  hint="is another program using the port? stop the agent first") from None
            late = late_frame_unit(bytes(self._rx), unit)
            if late is not None:
                return Probe("late", f"unit {late} answered after the timeout", late_unit=late)
            if self._rx:
                return Probe("garbled", f"{len(self._rx)} bytes without a valid frame")
            return Probe("silent", "no answer")
        except ModbusException as exc:
            raise SourceError(f"{self.where}: {exc}", hint="check the port or host") from exc
        if getattr(rr, "dev_id", unit) != unit:
            # A late answer of the unit asked before: not this unit's.
            return Probe("garbled", f"an answer from unit {getattr(rr, 'dev_id', '?')}")
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            return Probe("exception", f"Modbus exception {code} ({_EXCEPTIONS.get(code, 'other')})")
        regs = tuple(rr.registers)
        if len(regs) < count:
            return Probe("garbled", f"short answer, {len(regs)} of {count} registers")
        return Probe("data", "", regs[:count])

    async def read(self, unit: int, address: int, count: int) -> list[int]:
        """``sunspec.Reader``: registers, or DeviceTimeout / DeviceProtocolError."""
        got = await self.probe(unit, address, count)
        if got.kind == "silent":
            raise DeviceTimeout(f"unit {unit}: no answer reading {address}+{count}")
        if got.kind == "exception":
            raise DeviceRefused(f"{got.detail} reading {address}+{count}")
        if got.kind != "data":
            raise DeviceProtocolError(f"garbled answer reading {address}+{count}")
        return list(got.registers)

    async def first_answer(self, unit: int, bases: tuple[int, ...]) -> Probe:
        """Probe ``bases`` in turn until the unit answers one of them (the last probe when none did)."""
        got = Probe("silent", "no base probed")
        for base in bases:
            got = await self.probe(unit, base)
            if got.answered:
                return got
        return got

    async def identify(self, unit: int) -> FoundUnit:
        """SunSpec discovery at every base and the common model: who the unit is, as the agent will see it."""
        try:
            found = await discover(lambda address, count: self.read(unit, address, count), SUNSPEC_BASES)
        except (DeviceTimeout, DeviceProtocolError) as exc:
            return FoundUnit(unit, None, note=f"SunSpec map unreadable: {exc.message}")
        if found.base is None:
            return FoundUnit(unit, None, note=f"no SunSpec map: {found.describe()}")
        models = tuple(m.model_id for m in found.chain)
        try:
            head = found.chain[0]
            common = decode_model(1, await self._read_block(unit, head.address, head.length))
        except AgentError as exc:
            return FoundUnit(unit, found.base, models, note=f"common model unreadable: {exc.message}")

        def text(key: str) -> str:
            value = common.get(key)
            return value if isinstance(value, str) else ""

        return FoundUnit(unit, found.base, models, text("Mn"), text("Md"), text("SN"), text("Vr"),
                         device_id(common, f"unit{unit}"), found.note)

    async def _read_block(self, unit: int, address: int, length: int) -> list[int]:
        regs: list[int] = []
        while length > 0:
            n = min(length, 125)
            regs += await self.read(unit, address, n)
            address += n
            length -= n
        return regs

    def close(self) -> None:
        self._client.close()


@contextlib.asynccontextmanager
async def open_rtu(port: str, settings: LineSettings, timeout_seconds: float) -> AsyncIterator[Link]:
    """The serial port at ``settings``. SourceError when it cannot be opened at them (missing, busy, refused)."""
    link: Link | None = None

    def trace(sending: bool, data: bytes) -> bytes:
        return link._trace(sending, data) if link is not None else data

    client = AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=settings.baudrate, bytesize=8,
                                     parity=settings.parity, stopbits=1, timeout=timeout_seconds, retries=0,
                                     reconnect_delay=0, name="scan", trace_packet=trace)
    link = Link(client, port)
    try:
        await asyncio.to_thread(_try_settings, port, settings)
        refused = ""
        try:
            ok = await client.connect()
        except (OSError, termios.error, ModbusException, ValueError) as exc:
            # Raised outside this block, so nothing keeps the traceback: its frames hold the half-made
            # transport whose port pyserial left open and locked, and it is closed when they go.
            ok, refused = False, str(exc)
        if refused:
            raise SourceError(f"{port} refused {settings}: {refused}",
                              hint="this adapter or its driver does not take these settings")
        if not ok:
            raise SourceError(f"cannot open {port} at {settings}", hint=_port_hint(port))
        yield link
    finally:
        link.close()


@contextlib.asynccontextmanager
async def open_tcp(host: str, port: int, timeout_seconds: float) -> AsyncIterator[Link]:
    """A Modbus TCP connection. SourceError when nothing accepts it."""
    link: Link | None = None

    def trace(sending: bool, data: bytes) -> bytes:
        return link._trace(sending, data) if link is not None else data

    client = AsyncModbusTcpClient(host, port=port, timeout=timeout_seconds, retries=0,
                                  reconnect_delay=0, name="scan", trace_packet=trace)
    link = Link(client, f"{host}:{port}")
    try:
        try:
            ok = await client.connect()
        except (OSError, ModbusException) as exc:
            raise SourceError(f"cannot connect to {host}:{port}: {exc}", hint=_tcp_hint(port)) from exc
        if not ok:
            raise SourceError(f"cannot connect to {host}:{port} (refused or unreachable)", hint=_tcp_hint(port))
        yield link
    finally:
        link.close()


_SPEEDS: Final = {b: getattr(termios, f"B{b}") for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200,
                                                         230400)}
_PARITY_FLAGS: Final = {"N": 0, "E": termios.PARENB, "O": termios.PARENB | termios.PARODD}


def port_problem(port: str) -> SourceError | None:
    """Why ``port`` cannot be scanned at all (missing, no permission, in use), or None (blocking: a thread)."""
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return SourceError(f"cannot open {port}: {exc.strerror}", hint=_port_hint(port))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)         # the lock pyserial's exclusive=True takes
    except OSError:
        return SourceError(f"{port} is in use by another program",
                           hint="stop the agent first: sudo systemctl stop solar-agent")
    finally:
        os.close(fd)
    return None


def _try_settings(port: str, settings: LineSettings) -> None:
    """Open ``port``, lock it, set ``settings``, close it (blocking: run in a thread). SourceError when refused.

    Done with termios alone before pymodbus opens the port: when an adapter refuses a setting inside
    pymodbus (pyserial), the half-made transport keeps the port open and locked for a while, and the
    next settings would all fail with "could not exclusively lock".
    """
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise SourceError(f"cannot open {port}: {exc.strerror}", hint=_port_hint(port)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # the lock pyserial's exclusive=True takes
        except OSError:
            raise SourceError(f"{port} is in use by another program",
                              hint="stop the agent first: sudo systemctl stop solar-agent") from None
        try:
            attrs = termios.tcgetattr(fd)
            attrs[2] = (attrs[2] & ~(termios.PARENB | termios.PARODD | termios.CSIZE | termios.CSTOPB)) \
                | termios.CS8 | termios.CREAD | termios.CLOCAL | _PARITY_FLAGS[settings.parity]
            attrs[4] = attrs[5] = _SPEEDS[settings.baudrate]
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (termios.error, KeyError) as exc:
            raise SourceError(f"{port} refused {settings}: {exc}",
                              hint="this adapter or its driver does not take these settings") from None
    finally:
        os.close(fd)


def crc16(frame: bytes) -> int:
    """Modbus RTU CRC (polynomial 0xA001 reflected, initial 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def late_frame_unit(data: bytes, asked: int) -> int | None:
    """The unit id of a whole, valid RTU frame in ``data`` from another unit than ``asked``, else None.

    pymodbus drops such a frame (it answers a request we stopped waiting for); its bytes still tell us
    that unit exists and needs a longer timeout.
    """
    if len(data) < 5 or data[0] == asked:
        return None
    body, crc = data[:-2], int.from_bytes(data[-2:], "little")
    return data[0] if 1 <= data[0] <= 247 and crc16(body) == crc else None


def _port_hint(port: str) -> str:
    if not os.path.exists(port):
        return "no such port: list the adapters with ls -l /dev/serial/by-id/"
    if not os.access(port, os.R_OK | os.W_OK):
        return "no permission: run with sudo, or add the user to the dialout group"
    return "is the agent or another program holding the port? sudo systemctl stop solar-agent"


def _tcp_hint(port: int) -> str:
    return (f"is Modbus TCP enabled on the inverter (installer menu), on port {port}? "
            "ping the host; check the firewall")


__all__ = ["IDENTIFY_TIMEOUT_SECONDS", "SUNSPEC_BASES", "Link", "Probe", "ProbeKind", "crc16", "late_frame_unit",
           "open_rtu", "open_tcp", "port_problem"]
