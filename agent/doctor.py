"""The checks of `solar-agent doctor`: plain async functions returning :class:`CheckResult`.

Each check is bounded by a timeout (``run_checks`` wraps it), touches the outside world only
read-only (a Modbus read, an MQTT subscription under its own client id, a Data Cloud token and
one ``/actions/test`` dry run that stores nothing), and explains every FAIL with a hint.
A check never raises: whatever goes wrong becomes a FAIL line.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import quote

import aiohttp

from agent import __version__
from agent.clock import ClockGuard
from agent.config import AgentConfig, ModbusBusConfig, MqttConfig, check_against_schema, load_config
from agent.errors import AgentError, ConfigError, SchemaError
from agent.records import Reading, RecordBuilder, Schema, load_schema

if TYPE_CHECKING:
    from agent.datacloud import TokenProvider

__all__ = [
    "CheckResult", "check_clock", "check_config", "check_datacloud", "check_disk", "check_modbus_bus",
    "check_mqtt_feed", "check_outbox", "check_private_key", "check_serial_port", "run_checks",
]

Status = Literal["PASS", "FAIL", "WARN"]
CHECK_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str | None = None

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.detail}"


def _pass(name: str, detail: str) -> CheckResult:
    return CheckResult(name, "PASS", detail)


def _fail(name: str, detail: str, hint: str) -> CheckResult:
    return CheckResult(name, "FAIL", detail, hint)


_T = TypeVar("_T")


def _settle_threadsafe(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[_T], value: _T) -> None:
    """Resolve ``fut`` from another thread; the first value wins, later ones are dropped."""
    def set_once() -> None:
        if not fut.done():
            fut.set_result(value)

    loop.call_soon_threadsafe(set_once)


# -- local checks -----------------------------------------------------------------------------------------


async def check_config(path: Path | str | None, credentials_dir: Path | None = None,
                       ) -> tuple[CheckResult, AgentConfig | None, Schema | None]:
    """The config loads, and its schema loads and matches it."""
    name = "config"
    try:
        cfg = await asyncio.to_thread(functools.partial(load_config, path, credentials_dir=credentials_dir))
    except ConfigError as exc:
        return _fail(name, exc.message, exc.hint or f"solar-agent check-config {path or ''}".strip()), None, None
    try:
        schema = await asyncio.to_thread(load_schema, cfg.datacloud.schema_path, cfg.datacloud.object_name)
    except SchemaError as exc:
        return _fail(name, exc.message, exc.hint or "set datacloud.schema_path to the uploaded schema"), cfg, None
    errors = check_against_schema(cfg, schema)
    if errors:
        return _fail(name, errors[0].message, errors[0].hint or f"solar-agent check-config {cfg.source_file}"), \
            cfg, schema
    return _pass(name, f"{cfg.source_file} is valid (site {cfg.site.id}, schema {len(schema.fields)} fields)"), \
        cfg, schema


async def check_private_key(cfg: AgentConfig) -> CheckResult:
    """The signing key is a readable file that only its owner can access (0600 or stricter)."""
    name = "private key"
    path = cfg.datacloud.private_key_path
    try:
        st = await asyncio.to_thread(path.stat)
        head = await asyncio.to_thread(_read_head, path)
    except OSError as exc:
        return _fail(name, f"cannot read {path}: {exc.strerror}",
                     "check datacloud.private_key_path and run doctor as the agent's user (or sudo)")
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return _fail(name, f"{path} has mode {mode:04o}; group or others can read the key",
                     f"chmod 600 {path}")
    if b"PRIVATE KEY" not in head:
        return _fail(name, f"{path} is not a PEM private key", "solar-agent keygen makes one (see its --help)")
    return _pass(name, f"{path} mode {mode:04o}")


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(100)


async def check_serial_port(bus: ModbusBusConfig) -> CheckResult:
    """An rtu bus's port exists, is a character device and can be opened read-write."""
    return await asyncio.to_thread(_probe_serial, f"serial port {bus.name}", Path(bus.port))


def _probe_serial(name: str, port: Path) -> CheckResult:
    if not port.exists():
        return _fail(name, f"{port} does not exist",
                     "plug the RS-485 adapter in and look at ls -l /dev/serial/by-id/ (use that stable name)")
    real = port.resolve()
    if not stat.S_ISCHR(real.stat().st_mode):
        return _fail(name, f"{port} -> {real} is not a character device", "point modbus.port at the tty device")
    try:
        fd = os.open(real, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        return _fail(name, f"cannot open {port}: {exc.strerror}",
                     "the agent's user must be in the dialout group (usermod -aG dialout USER), "
                     f"and nothing else may hold the port (fuser -v {real})")
    os.close(fd)
    return _pass(name, f"{port}" + (f" -> {real}" if real != port else "") + " opens read-write")


async def check_clock(clock: ClockGuard | None = None) -> CheckResult:
    """The wall clock is synchronised (else readings are held with provisional times)."""
    guard = clock or ClockGuard()
    info = await asyncio.to_thread(guard.describe)
    if info["synced"]:
        return _pass("clock", f"synchronised (source {info['source']})")
    return CheckResult("clock", "WARN", f"NOT synchronised (source {info['source']}); readings are kept with "
                       "provisional times until it is",
                       "timedatectl timesync-status; NTP needs UDP 123 to a time server")


async def check_disk(cfg: AgentConfig) -> CheckResult:
    """Free space where the outbox lives, against ``outbox.min_free_bytes``."""
    name = "disk"
    where = cfg.outbox.path.parent
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = await asyncio.to_thread(shutil.disk_usage, probe)
    floor = cfg.outbox.min_free_bytes
    detail = f"{usage.free / 1e9:.2f} GB free on {probe} (floor outbox.min_free_bytes={floor / 1e9:.2f} GB)"
    if usage.free < floor:
        return _fail(name, detail, f"free space (du -sh /var/log/journal; journalctl --vacuum-size=100M) "
                                   f"or lower outbox.min_free_bytes; df -h {probe}")
    if usage.free < 2 * floor:
        return CheckResult(name, "WARN", detail, f"df -h {probe}")
    return _pass(name, detail)


async def check_outbox(cfg: AgentConfig) -> CheckResult:
    """``PRAGMA quick_check`` on a read-only connection (safe while the agent runs: WAL readers share)."""
    name = "outbox"
    path = cfg.outbox.path
    if not path.exists():
        if os.access(path.parent if path.parent.exists() else path.parent.parent, os.W_OK):
            return _pass(name, f"{path} not created yet (the agent creates it on first start)")
        return CheckResult(name, "WARN", f"{path} does not exist yet",
                           f"the agent's user must be able to create it in {path.parent}")
    try:
        result = await asyncio.to_thread(_quick_check, path)
    except sqlite3.Error as exc:
        return _fail(name, f"cannot check {path}: {exc}",
                     "run doctor with sudo; a damaged file is moved aside and salvaged at the agent's next start")
    if result != ["ok"]:
        return _fail(name, f"{path} is damaged: {'; '.join(result[:3])}",
                     "sudo systemctl restart solar-agent (it moves the file aside and salvages what it can)")
    return _pass(name, f"{path} quick_check ok")


def _quick_check(path: Path) -> list[str]:
    mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode={mode}", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        return [str(r[0]) for r in conn.execute("PRAGMA quick_check")]
    finally:
        conn.close()


# -- devices -------------------------------------------------------------------------------------------------


async def check_modbus_bus(bus: ModbusBusConfig) -> list[CheckResult]:
    """Each device of the bus answers and is SunSpec; lists the models found (one result per device)."""
    from pymodbus import FramerType
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    from agent.sources.sunspec import BASE_CANDIDATES, END_MODEL_ID, decode_model, device_id, is_marker

    where = bus.port if bus.transport == "rtu" else f"{bus.host}:{bus.tcp_port}"
    client: AsyncModbusSerialClient | AsyncModbusTcpClient
    timeout = min(bus.timeout_seconds, 2.0)
    if bus.transport == "rtu":
        client = AsyncModbusSerialClient(bus.port, framer=FramerType.RTU, baudrate=bus.baudrate, bytesize=bus.bytesize,
                                         parity=bus.parity, stopbits=bus.stopbits, timeout=timeout, retries=0,
                                         reconnect_delay=0)
    else:
        client = AsyncModbusTcpClient(bus.host, port=bus.tcp_port, timeout=timeout, retries=0, reconnect_delay=0)
    names = [f"modbus {bus.name}/unit{d.unit_id}" for d in bus.devices]
    try:
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            connected = False
            why = str(exc)
        else:
            why = ("connection refused or no answer" if bus.transport == "tcp"
                   else "the Modbus client could not open it (in use by another program, e.g. the running agent?)")
        if not connected:
            hint = (f"check the host, tcp_port {bus.tcp_port} and the firewall" if bus.transport == "tcp"
                    else f"stop the agent first (systemctl stop solar-agent: two masters garble each other on "
                         f"RS-485), and see who holds it: fuser -v {bus.port}")
            return [_fail(n, f"cannot open {where}: {why}", hint) for n in names]

        async def read(unit: int, address: int, count: int) -> list[int] | None:
            try:
                rr = await client.read_holding_registers(address, count=count, device_id=unit)
            except ModbusException:
                return None
            if rr.isError() or len(rr.registers) < count:
                return None
            return list(rr.registers[:count])

        results = []
        for dev, name in zip(bus.devices, names, strict=True):
            unit = dev.unit_id
            bases = (dev.base_address,) if dev.base_address is not None else BASE_CANDIDATES
            base = None
            answered = False
            for candidate in bases:
                regs = await read(unit, candidate, 2)
                answered = answered or regs is not None
                if regs is not None and is_marker(regs):
                    base = candidate
                    break
            if base is None:
                if not answered:
                    results.append(_fail(name, f"no answer from unit {unit} on {where}",
                                         "check wiring (A/B swapped? termination), power, unit id and baudrate "
                                         f"({bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits})"
                                         if bus.transport == "rtu" else "check the unit id and that Modbus TCP "
                                         "is enabled on the device"))
                else:
                    results.append(_fail(name, f"unit {unit} answers but has no SunSpec marker at {list(bases)}",
                                         "enable SunSpec on the inverter (installer menu) or set base_address"))
                continue
            models: list[int] = []
            addr = base + 2
            common: list[int] | None = None
            for _ in range(64):
                head = await read(unit, addr, 2)
                if head is None or head[0] == END_MODEL_ID:
                    break
                if head[0] == 1 and common is None:
                    common = await read(unit, addr, head[1] + 2)
                models.append(head[0])
                addr += head[1] + 2
            ident = ""
            if common is not None:
                try:
                    ident = device_id(decode_model(1, common))
                except AgentError:
                    ident = ""
            results.append(_pass(name, f"SunSpec at {base}{', device ' + ident if ident else ''}, "
                                       f"models {models}"))
        return results
    finally:
        client.close()


async def check_mqtt_feed(feed: MqttConfig, *, timeout_seconds: float = 5.0) -> CheckResult:
    """The broker accepts a connection and grants the feed's subscriptions.

    Uses its own client id with a clean session, so the agent's persistent session (and its
    queued messages) is never touched.
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from agent.sources.mqtt import parse_url
    from agent.sources.profiles import PROFILES

    name = f"mqtt {feed.name}"
    try:
        host, port, tls = parse_url(feed.url, f"mqtt[{feed.name}].url")
    except ConfigError as exc:
        return _fail(name, exc.message, exc.hint or "mqtt://host:1883")
    topics = PROFILES[feed.profile].default_topics(feed)
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[int] = loop.create_future()
    subscribed: asyncio.Future[list[int]] = loop.create_future()

    # paho calls these on its network thread.
    def on_connect(_client: paho.Client, _userdata: object, _flags: paho.ConnectFlags, rc: ReasonCode,
                   _props: Properties | None) -> None:
        _settle_threadsafe(loop, connected, int(rc.value))

    def on_subscribe(_client: paho.Client, _userdata: object, _mid: int, rcs: list[ReasonCode],
                     _props: Properties | None) -> None:
        _settle_threadsafe(loop, subscribed, [int(r.value) for r in rcs])

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"solar-agent-doctor-{os.getpid()}",
                         protocol=paho.MQTTv311, clean_session=True)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    try:
        if feed.username:
            password = None
            if feed.password_file is not None:
                password = (await asyncio.to_thread(feed.password_file.read_text, encoding="utf-8")).strip()
            client.username_pw_set(feed.username, password)
        if tls:
            import ssl
            client.tls_set(ca_certs=str(feed.ca_file) if feed.ca_file else None, cert_reqs=ssl.CERT_REQUIRED)
        await asyncio.to_thread(client.connect, host, port, 30)
    except (OSError, ValueError) as exc:
        return _fail(name, f"cannot connect to {feed.url}: {exc}",
                     "is the broker running and reachable? (systemctl status mosquitto; nc -zv HOST PORT)")
    client.loop_start()
    try:
        try:
            rc = await asyncio.wait_for(connected, timeout_seconds)
        except TimeoutError:
            return _fail(name, f"{feed.url} accepted TCP but sent no CONNACK in {timeout_seconds:g}s",
                         "is it an MQTT port? mqtts:// needs TLS, mqtt:// plain")
        if rc != 0:
            return _fail(name, f"{feed.url} refused the connection (reason code {rc})",
                         "check mqtt username and password_file, and the broker's ACL")
        client.subscribe([(t, 1) for t in topics])
        try:
            granted = await asyncio.wait_for(subscribed, timeout_seconds)
        except TimeoutError:
            return _fail(name, f"no SUBACK for {topics} in {timeout_seconds:g}s", "check the broker's log")
        refused = [t for t, g in zip(topics, granted, strict=False) if g >= 0x80]
        if refused:
            return _fail(name, f"the broker refused the subscription to {refused}",
                         "grant the agent's user read access to these topics in the broker's ACL")
        return _pass(name, f"{feed.url} connected, subscribed to {', '.join(topics)} (granted QoS "
                           f"{','.join(map(str, granted))})")
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)


# -- Data Cloud ----------------------------------------------------------------------------------------------


async def check_datacloud(cfg: AgentConfig, schema: Schema) -> list[CheckResult]:
    """A token is obtained, and a synthetic record passes ``/actions/test`` (a dry run: nothing stored)."""
    from agent.datacloud import StreamingClient, TokenProvider, make_ssl_context

    dc = cfg.datacloud
    timeout = aiohttp.ClientTimeout(total=min(dc.timeout_seconds, 10.0))
    connector = aiohttp.TCPConnector(ssl=make_ssl_context(dc.ca_file))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tokens = TokenProvider(dc, session)
        try:
            token = await tokens.token()
        except AgentError as exc:
            return [_fail("datacloud login", f"{exc.message} ({login_pair(cfg)})",
                          exc.hint or "check datacloud.login_url, audience, client_id, username and the "
                                      "connected app")]
        results = [_pass("datacloud login", f"token obtained for {dc.username} ({login_pair(cfg)}), instance "
                                            f"{token.instance_url}")]
        builder = RecordBuilder(schema, cfg.site.id, cfg.site.customer_id, __version__)
        record = builder.encode(Reading("solar-agent-doctor", int(time.time() * 1000), "doctor", {}))
        client = StreamingClient(tokens, session, dc.source_name, dc.endpoint_name)
        name = "datacloud test record"
        where = f"{dc.source_name}/{dc.endpoint_name}"
        try:
            report = await client.validate([record.payload])
        except AgentError as exc:
            hint = exc.hint or ("check datacloud.source_name and object_endpoint (or object_name) against the "
                                "Ingestion API connector and its data stream in Data Cloud Setup")
            results.append(_fail(name, f"{where}: {exc.message}", hint))
            return results
        if report:
            results.append(_fail(name, f"/actions/test on {where} refused a synthetic record: {report[0]}",
                                 "the schema uploaded to the connector must match datacloud.schema_path"))
        else:
            results.append(_pass(name, f"/actions/test on {where} accepted a synthetic {dc.object_name} record "
                                       "(a dry run: nothing stored)"))
        if cfg.fleet.interval_seconds > 0:
            results.append(await _check_status_object(cfg, tokens, session))
        return results


async def _check_status_object(cfg: AgentConfig, tokens: TokenProvider, session: aiohttp.ClientSession,
                               ) -> CheckResult:
    """The connector knows the gateway status object: one synthetic status record passes ``/actions/test``."""
    from agent.datacloud import StreamingClient
    from agent.fleet import STATUS_FIELDS, STATUS_OBJECT, StatusBuilder

    dc = cfg.datacloud
    name = "datacloud status record"
    where = f"{dc.source_name}/{dc.status_endpoint_name}"
    hint = (f"upload the schema file shipped with this version (it holds {STATUS_OBJECT}) to the connector and "
            f"create a data stream on {STATUS_OBJECT}; until then the gateway's status records wait in the outbox")
    try:
        schema = await asyncio.to_thread(load_schema, dc.schema_path, STATUS_OBJECT, STATUS_FIELDS)
    except SchemaError as exc:
        return CheckResult(name, "WARN", f"no gateway status records: {exc.message}", hint)
    record = StatusBuilder(schema, cfg.site.id, cfg.site.customer_id, __version__).sample(int(time.time() * 1000))
    try:
        report = await StreamingClient(tokens, session, dc.source_name, dc.status_endpoint_name).validate(
            [record.payload])
    except AgentError as exc:
        return _fail(name, f"{where}: {exc.message}", hint)
    if report:
        return _fail(name, f"/actions/test on {where} refused a synthetic {STATUS_OBJECT} record: {report[0]}", hint)
    return _pass(name, f"/actions/test on {where} accepted a synthetic {STATUS_OBJECT} record (a dry run)")


def login_pair(cfg: AgentConfig) -> str:
    """Where the token request goes and which audience the assertion names: two settings."""
    dc = cfg.datacloud
    return f"token request to {dc.login_url.rstrip('/')}/services/oauth2/token, JWT audience {dc.audience}"


# -- running them ---------------------------------------------------------------------------------------------


async def _bounded(names: list[str], work: Awaitable[CheckResult | list[CheckResult]],
                   timeout_seconds: float) -> list[CheckResult]:
    try:
        result = await asyncio.wait_for(work, timeout_seconds)
    except TimeoutError:
        return [_fail(n, f"no result within {timeout_seconds:g}s", "look at the network path or the device; "
                                                                 "doctor -v shows what it was doing")
                for n in names]
    return result if isinstance(result, list) else [result]


async def run_checks(config_path: Path | str | None, *, clock: ClockGuard | None = None,
                     timeout_seconds: float = CHECK_TIMEOUT_SECONDS,
                     devices: bool = True, credentials_dir: Path | None = None) -> AsyncIterator[CheckResult]:
    """Every check, in the order a technician fixes things; yields results as they come.

    Args:
        config_path: the site config (None: the default path).
        clock: the clock guard to ask (tests and containers inject one).
        timeout_seconds: the bound of each check.
        devices: run the serial port and Modbus checks. False while the agent runs (the support
            bundle): a second master on an RS-485 bus garbles the agent's requests, and an
            inverter's Modbus TCP server may take one client only.
        credentials_dir: where ``credential:NAME`` paths point (default: ``$CREDENTIALS_DIRECTORY``).
    """
    result, cfg, schema = await check_config(config_path, credentials_dir)
    yield result
    if cfg is None:
        return
    steps: list[tuple[list[str], Callable[[], Awaitable[CheckResult | list[CheckResult]]]]] = [
        (["private key"], lambda: check_private_key(cfg)),
    ]
    unusable: dict[str, CheckResult] = {}      # rtu buses whose port check failed

    async def serial_then_remember(bus: ModbusBusConfig) -> CheckResult:
        result = await check_serial_port(bus)
        if result.status == "FAIL":
            unusable[bus.name] = result
        return result

    async def devices_unless_port_failed(bus: ModbusBusConfig) -> list[CheckResult]:
        port = unusable.get(bus.name)
        if port is not None:
            # One cause, said once: the devices behind an unusable port are not checked.
            return [_fail(f"modbus {bus.name}/unit{d.unit_id}", f"not checked: {port.detail}", port.hint or "")
                    for d in bus.devices]
        return await check_modbus_bus(bus)

    for bus in cfg.modbus if devices else ():
        if bus.transport == "rtu":
            steps.append(([f"serial port {bus.name}"], functools.partial(serial_then_remember, bus)))
    for bus in cfg.modbus if devices else ():
        steps.append(([f"modbus {bus.name}/unit{d.unit_id}" for d in bus.devices],
                      functools.partial(devices_unless_port_failed, bus)))
    for feed in cfg.mqtt:
        steps.append(([f"mqtt {feed.name}"], functools.partial(check_mqtt_feed, feed)))
    if schema is not None:
        steps.append((["datacloud login"], lambda: check_datacloud(cfg, schema)))
    steps += [
        # The site's own [clock] setting (a container without a synchronised kernel clock).
        (["clock"], lambda: check_clock(clock or ClockGuard(assume_synced=cfg.clock.assume_synced))),
        (["disk"], lambda: check_disk(cfg)),
        (["outbox"], lambda: check_outbox(cfg)),
    ]
    for names, make in steps:
        for r in await _bounded(names, make(), timeout_seconds):
            yield r
