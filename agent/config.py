"""Site configuration: one TOML file, loaded into frozen dataclasses.

Shapes only for now; the loader (tomllib, unknown keys are errors, every error names the file,
the key path, the value and a hint) is ``load_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

DEFAULT_CONFIG_PATH = Path("/etc/solar-agent/site.toml")


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
    # generic profile: schema field -> JSON path in the payload (e.g. "ENERGY.Power")
    fields: tuple[tuple[str, str], ...] = ()
    device_id_path: str = ""            # generic profile: JSON path of the device id; empty = topic segment
    time_path: str = ""                 # generic profile: JSON path of an epoch-seconds timestamp


@dataclass(frozen=True, slots=True)
class DataCloudConfig:
    login_url: str
    client_id: str
    username: str
    private_key_path: Path
    source_name: str
    object_name: str = "solar_panel_event"
    schema_path: Path | None = None     # None: the schema shipped with the agent
    dataspace: str = ""
    ca_file: Path | None = None         # extra CA (emulator, private PKI); verification is never off
    timeout_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class DrainConfig:
    flush_interval_seconds: float = 30.0
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
class AgentConfig:
    source_file: str
    site: SiteConfig
    datacloud: DataCloudConfig
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    modbus: tuple[ModbusBusConfig, ...] = ()
    mqtt: tuple[MqttConfig, ...] = ()
    drain: DrainConfig = field(default_factory=DrainConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
