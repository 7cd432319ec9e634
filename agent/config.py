"""Site configuration: one TOML file, loaded into frozen dataclasses.

``load_config(path)`` reads the file with stdlib ``tomllib`` and returns an ``AgentConfig``:

* strict: unknown keys, wrong types and out-of-range values are errors; nothing is coerced or
  clamped (a string ``"10GB"`` where bytes are expected is an error with a hint, not 10 GB);
* every error names the file, the key path (``modbus[0].devices[1].unit_id``), the value and a
  hint; all errors of a file are collected and raised together as one ``ConfigErrors``, which
  is a ``ConfigError`` (``exc.errors`` lists them one by one);
* relative paths resolve against the config file's directory; ``credential:NAME`` on a secret
  file key resolves to ``$CREDENTIALS_DIRECTORY/NAME`` inside the service (systemd
  ``LoadCredential=``) and to ``NAME`` in the config file's directory everywhere else, where the
  unit loads it from;
* secrets are never accepted in the TOML itself (``password = ...`` is refused), only paths to
  files holding them, and the loader never opens those files.

``redacted`` and ``to_toml`` show a loaded config (for ``solar-agent check-config``);
``accepted_keys`` lists every key the loader accepts (the docs test checks them all).
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import SplitResult, urlsplit

from agent.errors import AgentError, ConfigError
from agent.fleet import STATUS_OBJECT
from agent.records import IDENTITY_FIELDS, STREAMING_OVERHEAD, Schema

DEFAULT_CONFIG_PATH = Path("/etc/solar-agent/site.toml")
ENV_CONFIG_PATH: Final = "SOLAR_AGENT_CONFIG"
CREDENTIAL_PREFIX: Final = "credential:"
STREAMING_BODY_LIMIT: Final = 200_000                      # Ingestion API: body "less than 200 KB"
MAX_BATCH_BYTES: Final = STREAMING_BODY_LIMIT - STREAMING_OVERHEAD  # records only, without {"data":[]}
MAX_BULK_FILE_BYTES: Final = 150_000_000                   # Ingestion API: one bulk CSV file
MAX_REQUESTS_PER_SECOND: Final = 250.0                     # per org, shared by the whole fleet
# Beyond a minute, a power cut would lose more than a minute of every device's readings: a mistake, not a setting.
MAX_COMMIT_INTERVAL_MS: Final = 60_000
STANDARD_BAUDRATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    id: str
    customer_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    path: Path = Path("/var/lib/solar-agent/outbox.db")
    synchronous: Literal["full", "normal"] = "full"
    max_bytes: int = 2_000_000_000
    min_free_bytes: int = 200_000_000
    when_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    # How long appends wait to share one commit: SD-card wear against the Modbus readings a power
    # cut may lose (README, operations guide: "SD-card wear").
    commit_interval_ms: int = 1000


@dataclass(frozen=True, slots=True)
class ModbusDeviceConfig:
    unit_id: int
    name: str = ""                      # defaults to the SunSpec manufacturer + serial
    base_address: int | None = None     # None: discover SunS at 40000, 0, 50000


@dataclass(frozen=True, slots=True)
class ModbusBusConfig:
    name: str
    transport: Literal["rtu", "tcp"]
    devices: tuple[ModbusDeviceConfig, ...]
    port: str = ""                      # rtu: /dev/ttyUSB0 or /dev/serial/by-id/...
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8
    host: str = ""                      # tcp
    tcp_port: int = 502
    timeout_seconds: float = 1.0
    poll_interval_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class MqttConfig:
    name: str
    url: str                            # mqtt://host:1883 or mqtts://host:8883
    profile: Literal["opendtu", "victron", "solarassistant", "tasmota", "shelly", "generic"]
    topics: tuple[str, ...] = ()        # empty: the profile's default subscriptions
    client_id: str = ""                 # empty: solar-agent-<site id>-<name>; fixed for a persistent session
    username: str = ""
    password_file: Path | None = None
    ca_file: Path | None = None
    keepalive_seconds: int = 60
    portal_id: str = ""                 # victron: the GX portal id for the keepalive topic
    # shelly: which counter of a bidirectional meter is the energy; "export" for a meter in a PV feed
    energy_direction: Literal["import", "export"] = "import"
    # generic profile: schema field -> JSON path in the payload (e.g. "ENERGY.Power")
    fields: tuple[tuple[str, str], ...] = ()
    device_id_path: str = ""            # generic profile: JSON path of the device id; empty = topic segment
    time_path: str = ""                 # generic profile: JSON path of an epoch-seconds timestamp


@dataclass(frozen=True, slots=True)
class DataCloudConfig:
    login_url: str                      # where the token request goes: login/test.salesforce.com or a My Domain
    client_id: str
    username: str
    private_key_path: Path
    source_name: str
    object_name: str = "solar_panel_event"   # the object in the local schema file
    # The JWT's aud claim, independent of login_url: Salesforce accepts only the login servers and
    # Experience Cloud site URLs here, never a My Domain (see _check_audience).
    audience: str = "https://login.salesforce.com"
    object_endpoint: str = ""           # the connector's object endpoint (URL path, bulk job object); "" = object_name
    status_object_endpoint: str = ""    # the same for the gateway status object; "" = solar_gateway_status
    schema_path: Path | None = None     # None: the schema shipped with the agent
    dataspace: str = ""
    ca_file: Path | None = None         # extra CA (emulator, private PKI); verification is never off
    timeout_seconds: float = 30.0

    @property
    def endpoint_name(self) -> str:
        """The object's name on the wire: the connector's object endpoint, else the schema's object name."""
        return self.object_endpoint or self.object_name

    @property
    def status_endpoint_name(self) -> str:
        """The gateway status object's name on the wire (see agent/fleet.py)."""
        return self.status_object_endpoint or STATUS_OBJECT


@dataclass(frozen=True, slots=True)
class DrainConfig:
    flush_interval_seconds: float = 120.0
    batch_max_bytes: int = 190_000      # under the 200 KB streaming limit, counting the envelope
    bulk_after_seconds: float = 3600.0  # oldest undelivered older than this -> bulk backfill
    bulk_min_rows: int = 100_000        # or a backlog at least this large
    bulk_file_max_bytes: int = 150_000_000
    max_requests_per_second: float = 2.0
    retry_max_seconds: float = 300.0
    reconnect_jitter_seconds: float = 60.0


@dataclass(frozen=True, slots=True)
class StatusConfig:
    socket_path: Path = Path("/run/solar-agent/status.sock")
    listen: str = ""                    # host:port for TCP; needs token_file
    token_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ClockConfig:
    # Trust the wall clock whenever it is past the build-date floor, whatever the kernel reports.
    # For hosts whose kernel never clears STA_UNSYNC (some containers and VMs) and the emulator
    # rehearsal; never on a real gateway, where unsynchronised readings are held and re-stamped.
    assume_synced: bool = False


@dataclass(frozen=True, slots=True)
class FleetConfig:
    # How often this gateway reports its own health to Data Cloud (solar_gateway_status); 0: never.
    interval_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    source_file: str
    site: SiteConfig
    datacloud: DataCloudConfig
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    modbus: tuple[ModbusBusConfig, ...] = ()
    mqtt: tuple[MqttConfig, ...] = ()
    drain: DrainConfig = field(default_factory=DrainConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)


# --------------------------------------------------------------------------------------------
# Errors


class ConfigErrors(ConfigError):
    """Every error found in one config file, raised together. Still a ``ConfigError``.

    ``file``/``key``/``value``/``hint`` are those of the first error; ``errors`` holds them all.
    """

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = errors[0]
        if len(errors) == 1:
            message, hint = first.message, first.hint
        else:
            message = f"{len(errors)} errors in {first.file}:\n" + "\n".join(f"  {e}" for e in errors)
            hint = None
        AgentError.__init__(self, message, hint=hint)
        self.file = first.file
        self.key = first.key
        self.value = first.value
        self.errors: tuple[ConfigError, ...] = tuple(errors)


def config_errors(exc: ConfigError) -> tuple[ConfigError, ...]:
    """The individual errors inside ``exc`` (itself when it is a single error)."""
    return exc.errors if isinstance(exc, ConfigErrors) else (exc,)


# --------------------------------------------------------------------------------------------
# Public entry points


def resolve_config_path(path: str | Path | None = None) -> Path:
    """The config file to use: ``path``, else ``$SOLAR_AGENT_CONFIG``, else /etc/solar-agent/site.toml."""
    if path is not None and str(path) != "":
        return Path(path)
    env = os.environ.get(ENV_CONFIG_PATH, "")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | Path | None = None, *, credentials_dir: str | Path | None = None) -> AgentConfig:
    """Read, validate and return the site config.

    Args:
        path: the TOML file; None means ``resolve_config_path()`` (env ``SOLAR_AGENT_CONFIG``).
        credentials_dir: where ``credential:NAME`` paths point; default ``$CREDENTIALS_DIRECTORY``
            (set by systemd inside the service), else the config file's directory.

    Raises:
        ConfigError: (a ``ConfigErrors``) listing every problem, each with file, key path, value, hint.
    """
    p = resolve_config_path(path)
    file = str(p)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigErrors([ConfigError(
            file, "(file)", f"cannot read the config file: {exc.strerror or exc}",
            hint=f"pass the path (solar-agent check-config PATH) or set {ENV_CONFIG_PATH}; "
                 "start from config/site.example.toml",
        )]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigErrors([ConfigError(
            file, f"line {line}", "is not UTF-8 text", hint="save the file as UTF-8",
        )]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([_syntax_error(file, text, exc)]) from exc
    return parse_config(data, file, credentials_dir=credentials_dir)


def parse_config(
    data: Mapping[str, Any], source_file: str, *, credentials_dir: str | Path | None = None,
) -> AgentConfig:
    """Validate an already-parsed TOML document. Relative paths resolve next to ``source_file``."""
    if credentials_dir is None:
        env = os.environ.get("CREDENTIALS_DIRECTORY", "")
        credentials_dir = Path(env) if env else None
    ctx = _Ctx(source_file, Path(os.path.abspath(source_file)).parent,
               Path(credentials_dir) if credentials_dir is not None else None)
    if not isinstance(data, Mapping):
        ctx.error("(document)", "must be a TOML document (a table of sections)")
        raise ConfigErrors(ctx.errors)
    cfg = ctx.build(AgentConfig, data, "", extra={"source_file": source_file})
    if ctx.errors or not isinstance(cfg, AgentConfig):
        raise ConfigErrors(ctx.errors)
    return cfg


def check_against_schema(cfg: AgentConfig, schema: Schema) -> list[ConfigError]:
    """Config values that only make sense next to the ingestion schema (generic MQTT field maps)."""
    errors: list[ConfigError] = []
    for i, feed in enumerate(cfg.mqtt):
        for name, _path in feed.fields:
            key = _join(f"mqtt[{i}].fields", name)
            if name in IDENTITY_FIELDS:
                errors.append(ConfigError(
                    cfg.source_file, key, "is filled by the agent itself, not from a payload",
                    hint="map only metric fields; the device id comes from device_id_path",
                ))
            elif name not in schema.by_name:
                close = difflib.get_close_matches(name, schema.names, n=1)
                errors.append(ConfigError(
                    cfg.source_file, key, "is not a field of the ingestion schema",
                    hint=f"did you mean {close[0]!r}?" if close else "see the fields in the schema file",
                ))
    return errors


def device_count(cfg: AgentConfig) -> int:
    """Number of configured Modbus devices over all buses."""
    return sum(len(bus.devices) for bus in cfg.modbus)


def accepted_keys() -> list[str]:
    """Every key the loader accepts, as dotted paths without indexes (``modbus.devices.unit_id``)."""
    out: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in _INTERNAL_FIELDS:
                continue
            key = f"{prefix}{f.name}"
            sub = _dataclass_in(hints[f.name])
            if sub is None:
                out.append(key)
            else:
                walk(sub, key + ".")

    walk(AgentConfig, "")
    return out


def redacted(cfg: AgentConfig) -> dict[str, Any]:
    """The config as plain data for display.

    The loader refuses secrets in the TOML, so the config holds none: secret files show as paths
    (never opened here), usernames as they are, and URLs lose any userinfo just in case.
    """
    plain = _plain(cfg)
    assert isinstance(plain, dict)
    plain.pop("source_file", None)
    # Keys that do not apply (tcp settings on a serial bus, generic mappings on a known profile)
    # are left out while at their defaults: they would only be noise on a technician's screen.
    for bus in plain.get("modbus", []):
        _drop_defaults(bus, ModbusBusConfig, _TCP_ONLY if bus["transport"] == "rtu" else _RTU_ONLY)
    for feed in plain.get("mqtt", []):
        _drop_defaults(feed, MqttConfig, () if feed["profile"] == "generic" else _GENERIC_ONLY)
        _drop_defaults(feed, MqttConfig, () if feed["profile"] == "victron" else ("portal_id",))
        _drop_defaults(feed, MqttConfig, () if feed["profile"] == "shelly" else ("energy_direction",))
    order = ("site", "outbox", "modbus", "mqtt", "datacloud", "drain", "status", "clock", "fleet")
    return {k: plain[k] for k in sorted(plain, key=lambda k: order.index(k) if k in order else len(order))}


def to_toml(cfg: AgentConfig) -> str:
    """The resolved config (defaults filled in, paths absolute) as TOML that loads back to ``cfg``."""
    lines = [f"# resolved from {cfg.source_file}"]
    _emit_table(lines, "", redacted(cfg))
    return "\n".join(lines).strip() + "\n"


# --------------------------------------------------------------------------------------------
# The loader: a walk over the dataclass fields, with per-key rules and per-section checks


_INTERNAL_FIELDS: Final = frozenset({"source_file"})
# Keys that hold the *path* to a secret: the only ones where "credential:NAME" is allowed.
_SECRET_FILE_KEYS: Final = ("private_key_path", "password_file", "token_file")
_SECRET_NAMES: Final = frozenset({
    "password", "passwd", "pass", "pwd", "secret", "token", "private_key", "privatekey", "key",
    "client_secret", "api_key", "apikey", "access_token", "refresh_token", "passphrase", "credentials",
})
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.:-]{1,80}$")
_OBJECT_RE: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")
_ENDPOINT_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_CRED_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,254}$")
_SIZE_RE: Final = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([kmgt]i?b?|b|bytes?)?\s*$", re.IGNORECASE)
_DURATION_RE: Final = re.compile(
    r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*(ms|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?)?\s*$",
    re.IGNORECASE,
)
_SYNTAX_POS_RE: Final = re.compile(r"\(at line (\d+), column (\d+)\)")
_BAD: Final = object()  # a value that failed conversion (its error is already recorded)


@dataclass(frozen=True, slots=True)
class _Rule:
    """What a value must be, beyond its type: ``desc`` completes "must be ..."."""

    desc: str
    ok: Callable[[Any], bool]
    hint: str | None = None


def _int_between(lo: int, hi: int | None, desc: str, hint: str | None = None) -> _Rule:
    return _Rule(desc, lambda v: v >= lo and (hi is None or v <= hi), hint)


def _num_above(lo: float, desc: str, hi: float | None = None, inclusive: bool = False) -> _Rule:
    return _Rule(desc, lambda v: (v >= lo if inclusive else v > lo) and (hi is None or v <= hi))


_POSITIVE_INT = _int_between(1, None, "a positive integer")
_NON_NEGATIVE_INT = _int_between(0, None, "an integer >= 0")
_POSITIVE_SECONDS = _num_above(0, "a number of seconds > 0")
_NAME = _Rule("a name of 1-64 letters, digits, '_' or '-'", lambda v: bool(_NAME_RE.match(v)),
              "names appear in logs, metrics and task names, e.g. \"rs485\" or \"inverter-1\"")
_NON_EMPTY = _Rule("a non-empty string", lambda v: v.strip() != "")
_PORT = _int_between(1, 65535, "a TCP port number 1-65535")

_RULES: dict[tuple[type, str], _Rule] = {
    (SiteConfig, "id"): _Rule("a site id of 1-80 letters, digits, '_', '.', ':' or '-'",
                              lambda v: bool(_ID_RE.match(v)),
                              "the site id is part of every event id: pick it once and never change it"),
    (SiteConfig, "customer_id"): _NON_EMPTY,
    (OutboxConfig, "max_bytes"): _POSITIVE_INT,
    (OutboxConfig, "min_free_bytes"): _NON_NEGATIVE_INT,
    (OutboxConfig, "commit_interval_ms"): _int_between(
        0, MAX_COMMIT_INTERVAL_MS, f"a number of milliseconds 0-{MAX_COMMIT_INTERVAL_MS}",
        "a power cut loses at most this much of the Modbus readings; 0 commits every poll at once "
        "(most SD-card wear), 1000 is the default"),
    (ModbusDeviceConfig, "unit_id"): _int_between(1, 247, "a Modbus unit id 1-247",
                                                  "the inverter's Modbus address, set on its display"),
    (ModbusDeviceConfig, "base_address"): _int_between(0, 65535, "a register address 0-65535",
                                                       "leave it out to discover SunS at 40000, 0, 50000"),
    (ModbusBusConfig, "name"): _NAME,
    (ModbusBusConfig, "baudrate"): _Rule(
        "a standard baud rate (" + ", ".join(map(str, STANDARD_BAUDRATES)) + ")",
        lambda v: v in STANDARD_BAUDRATES, "use the rate set on the inverters; 9600 is the SunSpec default"),
    (ModbusBusConfig, "stopbits"): _Rule("1 or 2", lambda v: v in (1, 2)),
    (ModbusBusConfig, "bytesize"): _Rule("7 or 8", lambda v: v in (7, 8), "Modbus RTU uses 8"),
    (ModbusBusConfig, "tcp_port"): _PORT,
    (ModbusBusConfig, "timeout_seconds"): _POSITIVE_SECONDS,
    (ModbusBusConfig, "poll_interval_seconds"): _POSITIVE_SECONDS,
    (MqttConfig, "name"): _NAME,
    (MqttConfig, "keepalive_seconds"): _int_between(1, 65535, "a number of seconds 1-65535"),
    (DataCloudConfig, "login_url"): _NON_EMPTY,
    (DataCloudConfig, "client_id"): _NON_EMPTY,
    (DataCloudConfig, "username"): _NON_EMPTY,
    (DataCloudConfig, "source_name"): _NAME,
    (DataCloudConfig, "object_name"): _Rule("an object name (a letter, then letters, digits or '_')",
                                            lambda v: bool(_OBJECT_RE.match(v))),
    (DataCloudConfig, "object_endpoint"): _Rule(
        "empty or an object endpoint name (1-80 letters, digits, '_' or '-')",
        lambda v: v == "" or bool(_ENDPOINT_RE.match(v)),
        "copy the object's name from the endpoints downloaded from the Ingestion API connector "
        "(Data Cloud Setup > Ingestion API > the connector); leave it out when it equals object_name"),
    (DataCloudConfig, "status_object_endpoint"): _Rule(
        "empty or an object endpoint name (1-80 letters, digits, '_' or '-')",
        lambda v: v == "" or bool(_ENDPOINT_RE.match(v)),
        "copy the solar_gateway_status object's name from the endpoints downloaded from the Ingestion API "
        "connector; leave it out when it is solar_gateway_status"),
    (DataCloudConfig, "audience"): _NON_EMPTY,
    (DataCloudConfig, "timeout_seconds"): _POSITIVE_SECONDS,
    (DrainConfig, "flush_interval_seconds"): _POSITIVE_SECONDS,
    (DrainConfig, "batch_max_bytes"): _int_between(
        1, MAX_BATCH_BYTES, f"a positive integer at most {MAX_BATCH_BYTES:_}",
        f"a streaming request must stay under {STREAMING_BODY_LIMIT:_} bytes including the envelope"),
    (DrainConfig, "bulk_after_seconds"): _POSITIVE_SECONDS,
    (DrainConfig, "bulk_min_rows"): _POSITIVE_INT,
    (DrainConfig, "bulk_file_max_bytes"): _int_between(
        1, MAX_BULK_FILE_BYTES, f"a positive integer at most {MAX_BULK_FILE_BYTES:_}",
        "the Ingestion API takes bulk CSV files of at most 150 MB"),
    (DrainConfig, "max_requests_per_second"): _num_above(
        0, f"a number > 0 and at most {MAX_REQUESTS_PER_SECOND:g}", MAX_REQUESTS_PER_SECOND),
    (DrainConfig, "retry_max_seconds"): _POSITIVE_SECONDS,
    (DrainConfig, "reconnect_jitter_seconds"): _num_above(0, "a number of seconds >= 0", inclusive=True),
    (FleetConfig, "interval_seconds"): _Rule(
        "0 (off) or a number of seconds from 1 to 86400",
        lambda v: v == 0 or 1 <= v <= 86400,
        "300 (5 minutes) suits a fleet: every report is one streaming request of the org's 250 per second; "
        "0 turns the gateway's status records off"),
}

# Hints for required keys that are missing.
_REQUIRED_HINTS: Final = {
    "site": "add a [site] table with id and customer_id",
    "datacloud": "add a [datacloud] table; see config/site.example.toml",
    "site.id": 'a short stable id for this plant, e.g. id = "plant-042"',
    "site.customer_id": "the Salesforce account id the site belongs to",
    "datacloud.private_key_path": 'the PEM key of the connected app, e.g. "credential:solar-agent.key"',
}


@dataclass(frozen=True, slots=True)
class _Shown:
    """A value already shortened for an error message."""

    text: str

    def __repr__(self) -> str:
        return self.text


def _show(value: Any) -> Any:
    """The bad value as an error shows it: short, and never a whole table."""
    if isinstance(value, dict):
        return _Shown("a table")
    if isinstance(value, list):
        return _Shown(f"an array of {len(value)}") if len(repr(value)) > 60 else value
    if isinstance(value, str) and len(value) > 60:
        return value[:57] + "..."
    return value


def _toml_type(value: Any) -> str:
    for typ, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                      (dict, "a table"), (list, "an array")):
        if isinstance(value, typ):
            return name
    return type(value).__name__  # datetime and friends


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS_CACHE:
        _HINTS_CACHE[cls] = typing.get_type_hints(cls)
    return _HINTS_CACHE[cls]


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds (directly or as a tuple of them), if any."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            return inner
    return None


def _join(path: str, key: str) -> str:
    """``path.key``; a key that is not a TOML bare key is quoted, as TOML would write it."""
    shown = key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)
    return f"{path}.{shown}" if path else shown


def _looks_secret(key: str) -> bool:
    k = key.lower().replace("-", "_")
    if k.endswith(("_file", "_path")):
        return False
    return k in _SECRET_NAMES or k.endswith(("_password", "_secret", "_token", "_key", "_passphrase"))


def _size_hint(text: str) -> str | None:
    """``"10GB"`` -> ``"write 10_000_000_000"``: the number the technician meant, in bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        return None
    number = float(m.group(1).replace("_", ""))
    unit = (m.group(2) or "").lower()
    unit = "" if unit in ("b", "byte", "bytes") else unit.removesuffix("b")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}.get(unit)
    if mult is None or not math.isfinite(number):
        return None
    return f"write {int(number * mult):_}"


def _duration_hint(text: str) -> str | None:
    m = _DURATION_RE.match(text)
    if not m:
        return None
    number = float(m.group(1).replace("_", ""))
    unit = (m.group(2) or "s").lower()
    mult = 0.001 if unit == "ms" else 60 if unit.startswith("m") else 3600 if unit.startswith("h") else 1
    return f"write {number * mult:g} (a bare number; the unit is in the key name)"


def _syntax_error(file: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    msg = str(exc)
    m = _SYNTAX_POS_RE.search(msg)
    reason = _SYNTAX_POS_RE.sub("", msg).strip()
    if m is None:
        return ConfigError(file, "(syntax)", f"TOML syntax error: {reason}")
    line_no, col = int(m.group(1)), int(m.group(2))
    lines = text.splitlines()
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    if "overwrite" in reason or "declare" in reason.lower():
        hint = "a key or a [table] is written twice; keep one (arrays of tables use [[name]])"
    else:
        hint = "check the quotes, brackets and '=' on that line (strings need \"double quotes\")"
    if line.strip():
        hint += f"; the line reads: {line.strip()[:80]}"
    return ConfigError(file, f"line {line_no}, column {col}", f"TOML syntax error: {reason}", hint=hint)


class _Ctx:
    """One load: where relative paths and credentials resolve, and the errors found so far."""

    def __init__(self, file: str, base_dir: Path, credentials_dir: Path | None) -> None:
        self.file = file
        self.base_dir = base_dir
        self.credentials_dir = credentials_dir
        self.errors: list[ConfigError] = []

    def error(self, key: str, message: str, value: Any = None, hint: str | None = None) -> None:
        self.errors.append(ConfigError(self.file, key, message, value=value, hint=hint))

    # -- tables -------------------------------------------------------------------------------

    def build(self, cls: type, data: Mapping[str, Any], path: str,
              extra: dict[str, Any] | None = None) -> Any:
        """One dataclass from one TOML table; ``_BAD`` when anything inside it was wrong."""
        before = len(self.errors)
        hints = _hints(cls)
        known = [f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL_FIELDS]
        kwargs: dict[str, Any] = dict(extra or {})
        for key, value in data.items():  # in file order, so errors read top to bottom
            if key not in known:
                self._unknown(path, key, known)
                continue
            converted = self.convert(hints[key], value, _join(path, key), cls, key)
            if converted is not _BAD:
                kwargs[key] = converted
        for f in dataclasses.fields(cls):
            kp = _join(path, f.name)
            if f.name in data or f.name in _INTERNAL_FIELDS:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                self.error(kp, "is required", hint=_REQUIRED_HINTS.get(_strip_indexes(kp)))
        if len(self.errors) > before:
            return _BAD
        obj = cls(**kwargs)
        check = _CHECKS.get(cls)
        if check is not None:
            check(self, obj, path, data)
        return obj

    def _unknown(self, path: str, key: str, known: list[str]) -> None:
        kp = _join(path, key)
        if _looks_secret(key):
            file_keys = [k for k in known if k in _SECRET_FILE_KEYS]
            where = file_keys[0] if file_keys else "a *_file or *_path key"
            # Never echo the value: it is probably the secret itself.
            self.error(kp, "secrets are never written in the config file",
                       hint=f"put it in a file only the agent can read (chmod 0600) and set {where} to "
                            f"its path, or use a systemd credential: {where} = \"credential:<name>\"")
            return
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if not close:
            close = [k for k in known if k.lower() == key.lower().replace("-", "_")]
        section = _strip_indexes(path) or "the top level"
        hint = f"did you mean {close[0]!r}?" if close else f"known keys in {section}: {', '.join(known)}"
        self.error(kp, "unknown key", hint=hint)

    # -- values -------------------------------------------------------------------------------

    def convert(self, tp: Any, value: Any, kp: str, owner: type, name: str) -> Any:
        """Check ``value`` against the annotated type ``tp`` and the key's rule; never coerce."""
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        rule = _RULES.get((owner, name))
        if origin is Literal:
            return self._literal(args, value, kp)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, kp, owner, name)
        if tp is Path:
            return self._path(value, kp, name)
        if origin is tuple:
            return self._tuple(args[0], value, kp, name)
        sub = _dataclass_in(tp)
        if sub is not None:
            if not isinstance(value, dict):
                extra = " (write it as [[...]] once)" if isinstance(value, list) else ""
                self.error(kp, f"must be a table ([{_strip_indexes(kp)}]){extra}", _show(value),
                           hint=f"got {_toml_type(value)}")
                return _BAD
            return self.build(sub, value, kp)
        checked = self._scalar(tp, value, kp, rule)
        if checked is _BAD:
            return _BAD
        if rule is not None and not rule.ok(checked):
            self.error(kp, f"must be {rule.desc}", _show(value), hint=rule.hint)
            return _BAD
        return checked

    def _scalar(self, tp: Any, value: Any, kp: str, rule: _Rule | None) -> Any:
        want = f"must be {rule.desc}" if rule is not None else None
        if tp is str:
            if not isinstance(value, str):
                self.error(kp, want or "must be a string", _show(value),
                           hint=f'got {_toml_type(value)}; write it in double quotes, e.g. "{value}"'
                           if isinstance(value, int | float) else f"got {_toml_type(value)}")
                return _BAD
            if "-----BEGIN" in value:
                self.error(kp, "looks like a PEM key or certificate pasted into the config",
                           hint="secrets go in a file (chmod 0600) named by a *_file/*_path key")
                return _BAD
            return value
        if tp is bool:
            if not isinstance(value, bool):
                self.error(kp, want or "must be true or false", _show(value),
                           hint="write true or false without quotes")
                return _BAD
            return value
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            hint: str | None = f"got {_toml_type(value)}"
            if isinstance(value, str):
                hint = _size_hint(value) or "write a whole number without quotes"
            elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
                hint = f"write {int(value):_} (no decimal point)"
            self.error(kp, want or "must be an integer", _show(value), hint=hint)
            return _BAD
        if tp is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if not math.isfinite(value):
                    self.error(kp, want or "must be a finite number", value)
                    return _BAD
                return float(value)
            hint = f"got {_toml_type(value)}"
            if isinstance(value, str):
                hint = _duration_hint(value) or "write a number without quotes"
            self.error(kp, want or "must be a number", _show(value), hint=hint)
            return _BAD
        raise TypeError(f"agent.config: no converter for {tp!r} at {kp}")  # a bug in this module

    def _literal(self, allowed: tuple[Any, ...], value: Any, kp: str) -> Any:
        if isinstance(value, str) and value in allowed:
            return value
        choices = ", ".join(f'"{a}"' for a in allowed)
        hint = None
        if isinstance(value, str):
            same = [a for a in allowed if a.lower() == value.lower()]
            close = same or difflib.get_close_matches(value, list(allowed), n=1, cutoff=0.5)
            if close:
                hint = f'write "{close[0]}"'
        else:
            hint = f"got {_toml_type(value)}; write one of them in double quotes"
        self.error(kp, f"must be one of {choices}", _show(value), hint=hint)
        return _BAD

    def _tuple(self, elem: Any, value: Any, kp: str, name: str) -> Any:
        if typing.get_origin(elem) is tuple:  # a table of str -> str, kept in file order
            if not isinstance(value, dict):
                self.error(kp, "must be a table of name = \"path\" pairs", _show(value),
                           hint=f'e.g. [{_strip_indexes(kp)}] with ac_power_w = "ENERGY.Power"')
                return _BAD
            pairs = []
            ok = True
            for k, v in value.items():
                checked = self._scalar(str, v, _join(kp, k), None)
                if checked is _BAD:
                    ok = False
                elif not checked.strip():
                    self.error(_join(kp, k), "must be a non-empty JSON path", v)
                    ok = False
                else:
                    pairs.append((k, checked))
            return tuple(pairs) if ok else _BAD
        sub = _dataclass_in(elem) if dataclasses.is_dataclass(elem) else None
        if not isinstance(value, list):
            if sub is not None:
                self.error(kp, f"must be an array of tables ([[{_strip_indexes(kp)}]])", _show(value),
                           hint=f"write each entry under its own [[{_strip_indexes(kp)}]] header")
            else:
                self.error(kp, "must be an array of strings", _show(value),
                           hint=f'e.g. {name} = ["solar/#"]')
            return _BAD
        items = []
        ok = True
        for i, item in enumerate(value):
            ikp = f"{kp}[{i}]"
            if sub is not None:
                if not isinstance(item, dict):
                    self.error(ikp, "must be a table", _show(item),
                               hint=f"write each entry under its own [[{_strip_indexes(kp)}]] header")
                    ok = False
                    continue
                built = self.build(sub, item, ikp)
            else:
                built = self._scalar(elem, item, ikp, None)
            if built is _BAD:
                ok = False
            else:
                items.append(built)
        return tuple(items) if ok else _BAD

    def _path(self, value: Any, kp: str, name: str) -> Any:
        if not isinstance(value, str) or not value.strip():
            self.error(kp, "must be a path (a non-empty string)", _show(value),
                       hint=f"got {_toml_type(value)}" if not isinstance(value, str) else None)
            return _BAD
        if "\x00" in value:
            self.error(kp, "must not contain a NUL character", _show(value))
            return _BAD
        if value.startswith(CREDENTIAL_PREFIX):
            cred = value[len(CREDENTIAL_PREFIX):]
            if name not in _SECRET_FILE_KEYS:
                self.error(kp, "credential: is only for secret files", value,
                           hint=f"use it in {', '.join(_SECRET_FILE_KEYS)}; write a plain path here")
                return _BAD
            if not _CRED_NAME_RE.match(cred) or cred in (".", ".."):
                self.error(kp, "credential: needs a plain credential name", value,
                           hint='e.g. "credential:solar-agent.key", the name given to LoadCredential=')
                return _BAD
            if self.credentials_dir is None:
                # Not the service: a technician's command run as root beside it. The shipped unit
                # loads NAME from the config file's directory (LoadCredential=NAME:/etc/solar-agent/
                # NAME), so the same file is found there without systemd's help.
                return self.base_dir / cred
            return self.credentials_dir / cred
        if value.startswith("~"):
            self.error(kp, "~ is not expanded", value, hint="write the absolute path")
            return _BAD
        p = Path(value)
        # Lexical normalisation only (no symlink resolution): the path the technician wrote, made absolute.
        return p if p.is_absolute() else Path(os.path.normpath(self.base_dir / p))


def _strip_indexes(kp: str) -> str:
    return re.sub(r"\[\d+\]", "", kp)


# --------------------------------------------------------------------------------------------
# Section checks: relations between keys, run once a section's values are individually valid


def _set(data: Mapping[str, Any], cls: type, obj: Any, key: str) -> bool:
    """True when the file sets ``key`` to something other than its default."""
    f = next(f for f in dataclasses.fields(cls) if f.name == key)
    return key in data and getattr(obj, key) != f.default


def _check_bus(ctx: _Ctx, bus: ModbusBusConfig, path: str, data: Mapping[str, Any]) -> None:
    if bus.transport == "rtu":
        if not bus.port.strip():
            ctx.error(_join(path, "port"), "is required for transport = \"rtu\"",
                      hint='the serial device, e.g. port = "/dev/ttyUSB0" (better: /dev/serial/by-id/...)')
        for key in _TCP_ONLY:
            if _set(data, ModbusBusConfig, bus, key):
                ctx.error(_join(path, key), "is only for transport = \"tcp\"", getattr(bus, key),
                          hint="remove it, or set transport = \"tcp\"")
    else:
        if not bus.host.strip():
            ctx.error(_join(path, "host"), "is required for transport = \"tcp\"",
                      hint='the inverter\'s address, e.g. host = "192.168.1.50"')
        for key in _RTU_ONLY:
            if _set(data, ModbusBusConfig, bus, key):
                ctx.error(_join(path, key), "is only for transport = \"rtu\"", getattr(bus, key),
                          hint="remove it; the TCP port is tcp_port" if key == "port" else "remove it")
    if not bus.devices:
        ctx.error(_join(path, "devices"), "needs at least one device",
                  hint=f"add a [[modbus.devices]] table with unit_id under bus {bus.name!r}")
    seen: dict[int, int] = {}
    for i, dev in enumerate(bus.devices):
        if dev.unit_id in seen:
            ctx.error(f"{path}.devices[{i}].unit_id",
                      f"duplicate unit id on this bus (also devices[{seen[dev.unit_id]}])", dev.unit_id,
                      hint="every device on one bus needs its own Modbus address")
        seen.setdefault(dev.unit_id, i)


def _check_mqtt(ctx: _Ctx, feed: MqttConfig, path: str, data: Mapping[str, Any]) -> None:
    url_key = _join(path, "url")
    try:
        parts = urlsplit(feed.url)
        port = parts.port
    except ValueError:
        ctx.error(url_key, "is not a valid URL", _show(feed.url), hint="e.g. mqtt://127.0.0.1:1883")
        return
    if parts.username is not None or parts.password is not None:
        # The URL may carry a password: do not show it.
        ctx.error(url_key, "must not carry credentials", hint="set username and password_file instead")
        return
    if parts.scheme not in ("mqtt", "mqtts"):
        ctx.error(url_key, "must start with mqtt:// or mqtts://", _show(feed.url),
                  hint="mqtt://host:1883 for plain TCP, mqtts://host:8883 for TLS")
    elif not parts.hostname:
        ctx.error(url_key, "needs a host", _show(feed.url), hint="e.g. mqtt://127.0.0.1:1883")
    elif port == 0:
        ctx.error(url_key, "has port 0", _show(feed.url), hint="1883 for mqtt://, 8883 for mqtts://")
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        ctx.error(url_key, "must be only scheme://host:port", _show(feed.url),
                  hint="topics go in topics = [...], not in the URL")
    if feed.ca_file is not None and parts.scheme == "mqtt":
        ctx.error(_join(path, "ca_file"), "needs an mqtts:// url", str(feed.ca_file),
                  hint="use mqtts:// (TLS), or remove ca_file")
    if feed.password_file is not None and not feed.username:
        ctx.error(_join(path, "password_file"), "needs a username", str(feed.password_file),
                  hint="set username = \"...\" next to it")
    for i, topic in enumerate(feed.topics):
        problem = _topic_problem(topic)
        if problem:
            ctx.error(f"{path}.topics[{i}]", problem, topic, hint='e.g. "solar/#" or "solar/+/0/power"')
    if feed.profile == "generic":
        if not feed.fields:
            ctx.error(_join(path, "fields"), "is required for profile = \"generic\"",
                      hint=f'add [{_strip_indexes(path)}.fields] with lines like ac_power_w = "ENERGY.Power"')
        if not feed.topics:
            ctx.error(_join(path, "topics"), "is required for profile = \"generic\"",
                      hint='the generic profile has no default topics, e.g. topics = ["tele/+/SENSOR"]')
    else:
        for key in _GENERIC_ONLY:
            if _set(data, MqttConfig, feed, key):
                ctx.error(_join(path, key), "is only for profile = \"generic\"",
                          hint=f'remove it; profile "{feed.profile}" knows its payloads')
    if feed.profile == "victron" and not feed.portal_id.strip():
        ctx.error(_join(path, "portal_id"), "is required for profile = \"victron\"",
                  hint="the GX only publishes while it receives R/<portal id>/keepalive; "
                       "find the id under Settings > VRM online portal")
    if feed.portal_id and feed.profile != "victron":
        ctx.error(_join(path, "portal_id"), "is only for profile = \"victron\"", feed.portal_id,
                  hint="remove it")
    if feed.energy_direction != "import" and feed.profile != "shelly":
        ctx.error(_join(path, "energy_direction"), "is only for profile = \"shelly\"", feed.energy_direction,
                  hint="remove it")


def _topic_problem(topic: str) -> str | None:
    if not topic:
        return "must not be empty"
    if "\x00" in topic or len(topic.encode()) > 65535:
        return "is not a valid MQTT topic filter"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "may use # only as the whole last level"
        if "+" in level and level != "+":
            return "may use + only as a whole level"
    return None


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses: the only hosts where plain http is accepted (the emulator)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The JWT bearer flow (Salesforce Help, "OAuth 2.0 JWT Bearer Flow for Server-to-Server
# Integration", https://help.salesforce.com/s/articleView?id=xcloud.remoteaccess_oauth_jwt_flow.htm)
# names exactly three kinds of audience: https://login.salesforce.com, https://test.salesforce.com,
# or an Experience Cloud site URL (https://site.force.com/customers). The token request itself may
# go to a My Domain: Salesforce's own CLI posts to the My Domain it is given and still signs
# aud = login/test.salesforce.com (forcedotcom/sfdx-core, src/util/sfdcUrl.ts getJwtAudienceUrl),
# and clients that signed the My Domain or a sandbox host as aud report `invalid_grant: audience is
# invalid` (forcedotcom/cli#3325, Talend/components#1423, restforce/restforce#886).
PRODUCTION_AUDIENCE: Final = "https://login.salesforce.com"
SANDBOX_AUDIENCE: Final = "https://test.salesforce.com"
_LOGIN_HOSTS: Final = {"login.salesforce.com": PRODUCTION_AUDIENCE, "test.salesforce.com": SANDBOX_AUDIENCE}
# Salesforce hosts that are never an audience: My Domains (*.my.salesforce.com, sandboxes included),
# instance hosts (na123.salesforce.com), the Lightning and Setup UI domains. Experience Cloud sites
# (*.my.site.com, *.force.com/path) stay allowed.
_NOT_AUDIENCE_SUFFIXES: Final = (".salesforce.com", ".lightning.force.com", ".salesforce-setup.com",
                                 ".visualforce.com")
_AUDIENCE_HINT: Final = (f'set datacloud.audience = "{PRODUCTION_AUDIENCE}" (production) or "{SANDBOX_AUDIENCE}" '
                         "(sandbox), or your Experience Cloud site URL; a My Domain belongs in login_url only")


def _check_datacloud(ctx: _Ctx, dc: DataCloudConfig, path: str, data: Mapping[str, Any]) -> None:
    login_hint = f"use {PRODUCTION_AUDIENCE}, {SANDBOX_AUDIENCE} (sandbox) or your My Domain URL"
    login = _check_url(ctx, _join(path, "login_url"), dc.login_url, login_hint, path_allowed=False)
    aud = _check_url(ctx, _join(path, "audience"), dc.audience, _AUDIENCE_HINT, path_allowed=True)
    if login is not None and aud is not None:
        _check_audience(ctx, _join(path, "audience"), dc.audience, login, aud)


def _check_url(ctx: _Ctx, key: str, url: str, hint: str, *, path_allowed: bool) -> SplitResult | None:
    """The parsed URL when it is usable for a login or an audience, else None (the error is recorded)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is the check
    except ValueError:
        ctx.error(key, "is not a valid URL", _show(url), hint=hint)
        return None
    ok = False
    if parts.username is not None or parts.password is not None:
        ctx.error(key, "must not carry credentials", hint=hint)
    elif parts.scheme == "http" and is_loopback_host(parts.hostname):
        ok = True  # the local emulator; certificates cannot matter on loopback
    elif parts.scheme == "http":
        ctx.error(key, "must be https (http only for a loopback emulator)", _show(url), hint=hint)
    elif parts.scheme != "https":
        ctx.error(key, "must be an https:// URL", _show(url), hint=hint)
    elif not parts.hostname:
        ctx.error(key, "needs a host", _show(url), hint=hint)
    else:
        ok = True
    if parts.query or parts.fragment or (not path_allowed and parts.path not in ("", "/")):
        ctx.error(key, "must be only scheme://host[:port]" + ("[/path]" if path_allowed else ""), _show(url),
                  hint=hint if path_allowed else "the agent adds /services/oauth2/token itself")
        ok = False
    return parts if ok else None


def _check_audience(ctx: _Ctx, key: str, audience: str, login: SplitResult, aud: SplitResult) -> None:
    """The audience is one Salesforce accepts, and it suits the login host (a sandbox signs test)."""
    login_host = (login.hostname or "").lower()
    aud_host = (aud.hostname or "").lower()
    if is_loopback_host(login_host):
        return  # the emulator: it accepts the audiences it was started with
    if aud_host in _LOGIN_HOSTS:
        if aud.path not in ("", "/") or aud.port is not None or aud.scheme != "https":
            ctx.error(key, f"must be exactly {_LOGIN_HOSTS[aud_host]}", _show(audience), hint=_AUDIENCE_HINT)
            return
        sandbox_login = login_host == "test.salesforce.com" or login_host.endswith(".sandbox.my.salesforce.com")
        if sandbox_login and aud_host == "login.salesforce.com":
            ctx.error(key, f"is the production audience, but datacloud.login_url {login.geturl()!r} is a sandbox",
                      _show(audience), hint=f'set datacloud.audience = "{SANDBOX_AUDIENCE}"')
        elif login_host == "login.salesforce.com" and aud_host == "test.salesforce.com":
            ctx.error(key, "is the sandbox audience, but datacloud.login_url is the production login",
                      _show(audience), hint=f'set datacloud.audience = "{PRODUCTION_AUDIENCE}", or login_url = '
                                            f'"{SANDBOX_AUDIENCE}" for a sandbox')
        return
    if aud_host.endswith(_NOT_AUDIENCE_SUFFIXES):
        what = "a My Domain" if aud_host.endswith(".my.salesforce.com") else "a Salesforce instance or UI host"
        ctx.error(key, f"is {what}, which Salesforce refuses as a JWT audience (invalid_grant: audience is "
                       "invalid); the My Domain goes in login_url, the audience stays a login server",
                  _show(audience), hint=_AUDIENCE_HINT)


def _check_status(ctx: _Ctx, st: StatusConfig, path: str, data: Mapping[str, Any]) -> None:
    if not st.listen:
        return
    key = _join(path, "listen")
    host, sep, port_text = st.listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        ctx.error(key, "must be host:port with a port 1-65535", st.listen,
                  hint='e.g. "127.0.0.1:9108"; leave it empty to serve on the unix socket only')
    elif st.token_file is None:
        ctx.error(_join(path, "token_file"), "is required when listen is set",
                  hint='the TCP status listener needs a bearer token: token_file = "credential:status-token"')


def _check_agent(ctx: _Ctx, cfg: AgentConfig, path: str, data: Mapping[str, Any]) -> None:
    bus_names = [bus.name for bus in cfg.modbus]
    feed_names = [feed.name for feed in cfg.mqtt]
    for section, section_names in (("modbus", bus_names), ("mqtt", feed_names)):
        seen: dict[str, int] = {}
        for i, name in enumerate(section_names):
            if name in seen:
                ctx.error(f"{section}[{i}].name", f"duplicate name (also {section}[{seen[name]}])",
                          name,
                          hint="each bus and each feed needs its own name")
            seen.setdefault(name, i)
    names: dict[str, str] = {}
    for b, bus in enumerate(cfg.modbus):
        for d, dev in enumerate(bus.devices):
            key = f"modbus[{b}].devices[{d}].name"
            if dev.name and dev.name in names:
                ctx.error(key, f"duplicate device name (also {names[dev.name]})", dev.name,
                          hint="device names become device ids in Data Cloud and must be unique")
            names.setdefault(dev.name, key)


_CHECKS: dict[type, Callable[[_Ctx, Any, str, Mapping[str, Any]], None]] = {
    ModbusBusConfig: _check_bus,
    MqttConfig: _check_mqtt,
    DataCloudConfig: _check_datacloud,
    StatusConfig: _check_status,
    AgentConfig: _check_agent,
}


# --------------------------------------------------------------------------------------------
# Display


_TCP_ONLY: Final = ("host", "tcp_port")
_RTU_ONLY: Final = ("port", "baudrate", "parity", "stopbits", "bytesize")
_GENERIC_ONLY: Final = ("fields", "device_id_path", "time_path")


def _drop_defaults(table: dict[str, Any], cls: type, keys: Sequence[str]) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key in keys:
        if key in table and table[key] in (_plain(defaults[key]), {}):
            del table[key]


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue  # TOML has no null: an unset optional is simply absent
            if f.name == "fields":
                out[f.name] = dict(value)
            elif f.name == "url" and isinstance(value, str):
                out[f.name] = _without_userinfo(value)
            else:
                out[f.name] = _plain(value)
        return out
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _without_userinfo(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


_BARE_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_value(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # JSON strings are TOML basic strings once DEL is escaped too (TOML forbids it raw).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _emit_table(lines: list[str], path: str, table: Mapping[str, Any]) -> None:
    subtables: list[tuple[str, Any]] = []
    for key, value in table.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        sub = f"{path}.{_toml_key(key)}" if path else _toml_key(key)
        for item in _iter_tables(value):
            lines.append("")
            lines.append(f"[[{sub}]]" if isinstance(value, list) else f"[{sub}]")
            _emit_table(lines, sub, item)


def _iter_tables(value: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(value, list):
        yield from value
    else:
        yield value
