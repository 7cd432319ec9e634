"""SunSpec over Modbus RTU/TCP: one poll loop per bus, a circuit breaker per device.

``ModbusSource(bus_config)`` polls every configured unit in turn, once per
``poll_interval_seconds`` (timed on the monotonic clock), and emits one ``Reading`` per device
per cycle (plus one per MPPT string, ``<device>/pv<n>``). pymodbus is used with ``retries=0``
and no automatic reconnect: retrying, backing off and reopening the port are decided here.

* First contact with a unit: find ``SunS`` (configured base, else 40000, 0 and 50000, each probed
  whatever the previous one answered), walk the ``ID, L`` chain to its end, read model 1 for the device
  id; the chain is cached (``sunspec.discover``). A failed discovery names every address tried and what
  it answered.
* Each cycle: each needed model block is read in ONE request (values and their scale factors
  together, so a scale-factor change cannot tear a value), split only beyond 125 registers.
* A failing unit trips its breaker: after consecutive failures it is skipped with exponential
  backoff, then tried once (half-open). A dead inverter costs the others at most one discovery
  (one timeout per base probed) per backoff period.
* Errors are counted per device by kind (``timeout``, ``crc``, ``exception``, ``not_sunspec``,
  ``connection``, ``decode``: a reply our decoder failed on, contained to that device) in
  ``DeviceHealth.errors`` and logged at most once a minute per device and kind, with a hint.
* A serial port that disappears (USB re-enumeration) or a dropped TCP connection is closed and
  reopened with capped backoff; the cached model chains are kept. Silent units do not close a TCP
  connection (pymodbus would, after a few timeouts in a row, whichever units they were for); one on
  which no unit answered for a few cycles is reopened.
* The readings of the units that answered before a cycle ended early (a lost bus, a stop) are kept.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from agent.config import ModbusBusConfig, ModbusDeviceConfig
from agent.errors import DeviceProtocolError, DeviceRefused, DeviceTimeout, SourceError
from agent.records import Reading
from agent.sources import DeviceHealth, Emit, Reject
from agent.sources.sunspec import (
    BASE_CANDIDATES,
    MAX_REGISTERS_PER_READ,
    SUPPORTED_MODELS,
    GroupValues,
    ModelAt,
    decode_model,
    device_id,
    device_readings,
    discover,
)

__all__ = ["ModbusSource", "next_slot"]

log = logging.getLogger(__name__)

_LOG_EVERY_SECONDS = 60.0
# A poll that starts this close (a fraction of its interval) before its slot counts as that slot.
_SLOT_SLACK: Final = 1e-3


def next_slot(started: float, interval: float) -> float:
    """When the poll after one that started at ``started`` (monotonic seconds) is due.

    The start of the next slot of the interval's grid: polls of buses with the same interval fall
    in step. asyncio may wake a timer a hair early, so a start just before a slot counts as that
    slot (never two polls in one slot). A poll that overran is due at once (the slot is past).
    """
    return (math.floor(started / interval + _SLOT_SLACK) + 1) * interval
# Modbus exception codes (Modbus Application Protocol V1.1b3, section 7) a technician will meet.
_EXCEPTION_NAMES = {1: " (illegal function)", 2: " (illegal data address)", 3: " (illegal data value)",
                    4: " (device failure)", 6: " (device busy)", 11: " (gateway target did not respond)"}
_HINTS = {
    "timeout": "check wiring (A/B swapped?), unit id, baud rate and parity, bus termination; "
               "the inverter may be off at night",
    "crc": "garbled frames: check baud rate and parity, termination resistors, cable shielding and ground",
    "exception": "the device refused the request: check the unit id and base address "
                 "(manuals print 40001 for PDU address 40000)",
    "not_sunspec": "no SunS marker at 40000, 0 or 50000: enable SunSpec/Modbus in the inverter "
                   "settings or set base_address",
    "connection": "serial adapter gone or TCP peer unreachable: check the USB cable and the "
                  "/dev/serial/by-id path, or the host and port",
    "decode": "the device's registers could not be decoded (a firmware with an unusual map?); it is "
              "rediscovered on the next try. If it repeats, report it with `solar-agent support-bundle`",
}


class _PollError(SourceError):
    """A failed request, with the health counter kind it belongs to (private to this module)."""

    def __init__(self, kind: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or _HINTS[kind])
        self.kind = kind


# Polling cycles of a TCP bus in which units were asked and none answered before the connection
# is reopened (a peer that vanished without a reset leaves a connection that only times out).
_SILENT_CYCLES_BEFORE_RECONNECT: Final = 3
_NEVER: Final = 2**62


class _NoAnswer(_PollError, DeviceTimeout):
    """The unit did not answer (``sunspec.discover`` tells silence from a refusal by these classes)."""

    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)


class _Refused(_PollError, DeviceProtocolError):
    """The unit answered with garbage (``crc``), or a Modbus exception (``exception``: _ExceptionReply)."""


class _ExceptionReply(_Refused, DeviceRefused):
    """The unit answered with a Modbus exception."""

    def __init__(self, message: str) -> None:
        super().__init__("exception", message)


class _BusDown(_PollError):
    """The port or connection itself is gone: reconnect the bus, do not blame a device."""

    def __init__(self, message: str) -> None:
        super().__init__("connection", message)


@dataclass(slots=True)
class _Unit:
    config: ModbusDeviceConfig
    health: DeviceHealth
    chain: tuple[ModelAt, ...] | None = None
    device_id: str = ""
    next_try: float = 0.0       # monotonic; the breaker skips the unit until then
    logged: dict[str, float] = field(default_factory=dict)


def _keep_open_through_timeouts(client: AsyncModbusTcpClient) -> None:
    """Stop pymodbus closing a TCP connection after ``retries + 3`` timeouts in a row.

    It counts them across units: behind one Modbus TCP gateway, two sleeping inverters (a
    discovery probes three bases each) cut the connection of the live ones, every cycle. The
    source decides instead: a connection on which no unit answered for ``_SILENT_CYCLES_BEFORE_RECONNECT``
    polling cycles is reopened. (pymodbus 3.16: ``TransactionManager.max_until_disconnect``; an
    attribute missing in another version leaves pymodbus' own rule in place.)
    """
    ctx = getattr(client, "ctx", None)
    if ctx is not None and hasattr(ctx, "max_until_disconnect"):
        ctx.max_until_disconnect = ctx.count_until_disconnect = _NEVER


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ModbusSource:
    """Poll the SunSpec devices of one Modbus bus (``Source`` protocol).

    Args:
        config: the bus (transport, port or host, devices, timeout, poll interval).
        now_ms: wall clock for reading times (epoch ms); injectable for tests.
        backoff_max_seconds: cap of a failing device's retry period (and of bus reconnects).
    """

    # A poll has no peer to acknowledge: the next commit may come after emit returns (SupportsBufferedEmit).
    buffered_emit: Final = True

    def __init__(self, config: ModbusBusConfig, *, now_ms: Callable[[], int] = _wall_ms,
                 backoff_max_seconds: float = 300.0) -> None:
        self.config = config
        self.name = f"modbus:{config.name}"
        self.source = "sunspec-rtu" if config.transport == "rtu" else "sunspec-tcp"
        self._now_ms = now_ms
        self._backoff_max = backoff_max_seconds
        self._units = [
            _Unit(d, DeviceHealth(device=d.name or f"{config.name}/unit{d.unit_id}", source=self.name))
            for d in config.devices
        ]
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._rx_bytes = 0      # bytes seen since the last request: tells a CRC error from silence
        self._bus_logged = 0.0
        self.cycles = 0         # completed poll cycles (status and tests)
        self._silent_cycles = 0  # consecutive cycles in which units were asked and none answered
        self._reopening = False  # the connection is being reopened quietly (see _keep_open_through_timeouts)

    def health(self) -> Sequence[DeviceHealth]:
        return [u.health for u in self._units]

    # ---- transport ----------------------------------------------------------------------

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if sending:
            self._rx_bytes = 0
        else:
            self._rx_bytes += len(data)
        return data

    def _new_client(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        c = self.config
        if c.transport == "rtu":
            return AsyncModbusSerialClient(
                c.port, framer=FramerType.RTU, baudrate=c.baudrate, bytesize=c.bytesize, parity=c.parity,
                stopbits=c.stopbits, timeout=c.timeout_seconds, retries=0, reconnect_delay=0,
                name=self.name, trace_packet=self._trace)
        client = AsyncModbusTcpClient(c.host, port=c.tcp_port, framer=FramerType.SOCKET,
                                      timeout=c.timeout_seconds, retries=0, reconnect_delay=0,
                                      name=self.name, trace_packet=self._trace)
        _keep_open_through_timeouts(client)
        return client

    async def _connect(self) -> None:
        if self._client is not None and self._client.connected:
            return
        self._close()
        self._client = self._new_client()
        try:
            ok = await self._client.connect()
        except (OSError, ModbusException) as exc:
            raise _BusDown(f"cannot open {self._where()}: {exc}") from exc
        if not ok:
            raise _BusDown(f"cannot open {self._where()}")
        (log.debug if self._reopening else log.info)("modbus bus connected bus=%s where=%s",
                                                       self.config.name, self._where())
        self._reopening = False

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _where(self) -> str:
        c = self.config
        return c.port if c.transport == "rtu" else f"{c.host}:{c.tcp_port}"

    async def _read(self, unit: int, address: int, count: int) -> list[int]:
        """FC3 read; translates every pymodbus outcome into a ``_PollError`` kind."""
        client = self._client
        if client is None or not client.connected:
            raise _BusDown(f"{self._where()} is not connected")
        try:
            rr = await client.read_holding_registers(address, count=count, device_id=unit)
        except ConnectionException as exc:
            raise _BusDown(f"connection lost on {self._where()}: {exc}") from exc
        except ModbusIOException as exc:
            if client.connected is False:
                raise _BusDown(f"connection lost on {self._where()}: {exc}") from exc
            if self._rx_bytes:
                raise _Refused("crc", f"unit {unit}: garbled response ({self._rx_bytes} bytes, bad CRC "
                                      f"or framing) reading {address}+{count}") from exc
            raise _NoAnswer(f"unit {unit}: no response in {self.config.timeout_seconds}s "
                            f"reading {address}+{count}") from exc
        except (OSError, ModbusException) as exc:
            raise _BusDown(f"{self._where()}: {exc}") from exc
        if rr.isError():
            code = getattr(rr, "exception_code", None)
            name = _EXCEPTION_NAMES.get(code, "") if isinstance(code, int) else ""
            raise _ExceptionReply(f"unit {unit}: Modbus exception {code}{name} reading {address}+{count}")
        regs = list(rr.registers)
        if len(regs) < count:
            raise _Refused("crc", f"unit {unit}: short response {len(regs)}/{count} registers")
        return regs[:count]

    async def _read_block(self, unit: int, address: int, count: int) -> list[int]:
        regs: list[int] = []
        while count > 0:
            n = min(count, MAX_REGISTERS_PER_READ)
            regs += await self._read(unit, address, n)
            address += n
            count -= n
        return regs

    # ---- SunSpec ------------------------------------------------------------------------

    async def _discover(self, u: _Unit) -> None:
        unit = u.config.unit_id
        bases = (u.config.base_address,) if u.config.base_address is not None else BASE_CANDIDATES

        async def read(address: int, count: int) -> list[int]:
            return await self._read(unit, address, count)

        try:
            found = await discover(read, bases)
        except _PollError:
            raise                               # the walk itself failed: timeout, exception, bus gone
        except DeviceProtocolError as exc:
            raise _PollError("not_sunspec", f"unit {unit}: {exc.message}", hint=exc.hint) from exc
        if found.base is None:
            kind = "timeout" if found.silent else "not_sunspec"
            raise _PollError(kind, f"unit {unit}: no SunS marker: {found.describe()}")
        if found.note:
            log.info("sunspec chain quirk bus=%s unit=%d base=%d note=%s", self.config.name, unit, found.base,
                     found.note)
        chain = found.chain
        if not any(m.model_id in SUPPORTED_MODELS and m.model_id != 1 for m in chain):
            # Nothing to read each cycle: its polls would send no request and "succeed" with an empty
            # reading, a row of nulls every interval whether the device is alive or not.
            raise _PollError("not_sunspec", f"unit {unit}: its SunSpec models {[m.model_id for m in chain]} "
                             f"hold no inverter values this agent reads "
                             f"({', '.join(str(m) for m in sorted(SUPPORTED_MODELS - {1}))})",
                             hint="check the unit id (a meter or a battery, not the inverter?)")
        common = decode_model(1, await self._read_block(unit, chain[0].address, chain[0].length))
        fallback = f"{self.config.name}-unit{unit}"
        u.device_id = u.config.name or device_id(common, fallback)
        u.health.device = u.device_id
        u.chain = chain
        log.info("sunspec device found bus=%s unit=%d device=%s base=%d models=%s tried=%s", self.config.name,
                 unit, u.device_id, found.base, [m.model_id for m in chain], found.describe() or "-")

    async def _poll(self, u: _Unit) -> list[Reading]:
        if u.chain is None:
            await self._discover(u)
        assert u.chain is not None
        models: dict[int, GroupValues] = {}
        for m in u.chain:
            if m.model_id == 1 or m.model_id not in SUPPORTED_MODELS or m.model_id in models:
                continue
            regs = await self._read_block(u.config.unit_id, m.address, m.length)
            try:
                models[m.model_id] = decode_model(m.model_id, regs)
            except DeviceProtocolError as exc:
                u.chain = None                  # the map moved (firmware update?): rediscover
                raise _PollError("not_sunspec", f"unit {u.config.unit_id}: {exc.message}") from exc
        now = self._now_ms()
        return [Reading(device, now, self.source, metrics) for device, metrics in device_readings(u.device_id, models)]

    # ---- breaker and health -------------------------------------------------------------

    def _succeeded(self, u: _Unit, readings: Sequence[Reading]) -> None:
        h = u.health
        if h.consecutive_failures:
            log.info("device recovered bus=%s device=%s after_failures=%d", self.config.name, h.device,
                     h.consecutive_failures)
        h.consecutive_failures = 0
        h.state = "ok"
        h.readings_total += len(readings)
        h.last_reading_ms = readings[0].time_ms
        u.next_try = 0.0

    def _failed(self, u: _Unit, exc: _PollError, now: float) -> None:
        h = u.health
        h.errors[exc.kind] += 1
        h.last_error = f"{exc.kind}: {exc.message}"
        h.consecutive_failures += 1
        # Retry next cycle after one failure; then skip 1, 3, 7... intervals (capped).
        interval = self.config.poll_interval_seconds
        delay = min(self._backoff_max, interval * 2 ** (h.consecutive_failures - 1)) - interval
        u.next_try = now + max(0.0, delay)
        h.state = "down" if delay + interval >= self._backoff_max else "backoff"
        last = u.logged.get(exc.kind)
        if last is None or now - last >= _LOG_EVERY_SECONDS:
            u.logged[exc.kind] = now
            log.warning("modbus poll failed bus=%s device=%s unit=%d kind=%s failures=%d retry_in=%.1fs "
                        "error=%s hint=%s", self.config.name, h.device, u.config.unit_id, exc.kind,
                        h.consecutive_failures, max(0.0, delay), exc.message, exc.hint)

    # ---- loop ---------------------------------------------------------------------------

    async def run(self, emit: Emit, reject: Reject | None = None) -> None:
        """Poll until cancelled. Device errors are counted, never raised; ``emit`` errors propagate.

        ``reject`` is unused: a Modbus reply that cannot be decoded is a device error (counted
        per device and kind), not an input to keep.
        """
        interval = self.config.poll_interval_seconds
        bus_backoff = min(1.0, interval)
        try:
            while True:
                started = time.monotonic()
                readings: list[Reading] = []
                down: _BusDown | None = None
                try:
                    await self._connect()
                    bus_backoff = min(1.0, interval)
                    await self._cycle(readings)
                except _BusDown as exc:
                    down = exc
                except asyncio.CancelledError:
                    # A stop or reload midway through a cycle: the units that answered keep their
                    # readings (queued here, committed by the stop once the sources are done).
                    if readings:
                        await emit(readings)
                    raise
                if readings:
                    # Before a lost bus is handled too: the units answered before it went keep their readings.
                    await emit(readings)
                if down is not None:
                    self._bus_down(down)
                    await asyncio.sleep(bus_backoff)      # reconnect backoff, capped exponential
                    bus_backoff = min(self._backoff_max, bus_backoff * 2)
                    continue
                self.cycles += 1
                if self._silent_cycles >= _SILENT_CYCLES_BEFORE_RECONNECT and self.config.transport == "tcp":
                    log.debug("modbus: no unit answered on %s for %d cycles; reopening the connection",
                              self._where(), self._silent_cycles)
                    self._silent_cycles = 0
                    self._reopening = True
                    self._close()
                # The next cycle starts on the interval's grid of the monotonic clock, so every bus
                # of a site with the same interval polls in step, and falls back in step after an
                # overrun or a lost connection (counting from its own start, a bus kept any phase
                # shift for ever). In step, the answers share the event loop's wake-ups: pymodbus
                # alone polling 100 devices took 2.5-2.8 % of a core staggered, 1.1-1.7 % in step.
                # A cycle that overran its slot starts the next at once: a slow bus is not made to
                # skip a slot, nor to burst to catch up.
                # the poll interval itself (always a yield, even after an overrun)
                await asyncio.sleep(max(0.0, next_slot(started, interval) - time.monotonic()))
        finally:
            self._close()

    async def _cycle(self, readings: list[Reading]) -> None:
        """Poll every due unit once, adding its readings to ``readings`` as they come (so a lost bus
        raised midway leaves the readings of the units before it)."""
        asked = answered = False
        for u in self._units:
            now = time.monotonic()
            if u.next_try > now:
                continue                                   # breaker open: not due yet
            asked = True
            try:
                got = await self._poll(u)
            except _BusDown:
                raise
            except _PollError as exc:
                answered = answered or exc.kind != "timeout"   # a refusal or garbage is an answer
                self._failed(u, exc, time.monotonic())
                continue
            except Exception as exc:  # one device's odd reply must not stop the bus: contained per unit
                log.debug("modbus unit=%d decode traceback", u.config.unit_id, exc_info=exc)
                u.chain = None        # its map may have changed: rediscover it next time
                self._failed(u, _PollError("decode", f"unit {u.config.unit_id}: {type(exc).__name__}: {exc}"),
                             time.monotonic())
                answered = True
                continue
            answered = True
            self._succeeded(u, got)
            readings += got
        if answered:
            self._silent_cycles = 0
        elif asked:
            self._silent_cycles += 1

    def _bus_down(self, exc: _BusDown) -> None:
        self._close()
        for u in self._units:
            # Every device behind a lost bus or TCP peer is unreachable: status must not say ok.
            u.health.errors["connection"] += 1
            u.health.last_error = f"connection: {exc.message}"
            u.health.consecutive_failures += 1
            u.health.state = "down"
        now = time.monotonic()
        if now - self._bus_logged >= _LOG_EVERY_SECONDS or not self._bus_logged:
            self._bus_logged = now
            log.warning("modbus bus down bus=%s where=%s error=%s hint=%s", self.config.name,
                        self._where(), exc.message, exc.hint)

