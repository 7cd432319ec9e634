"""What a scan found, as plain records: printed for the technician, dumped with ``--json`` for tools,
and turned into a site-config block by ``agent.scan.toml``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class LineSettings:
    """Serial line settings of an RS-485 bus (8 data bits, 1 stop bit)."""

    baudrate: int
    parity: str                      # N, E or O

    def __str__(self) -> str:
        return f"{self.baudrate} 8{self.parity}1"


@dataclass(frozen=True, slots=True)
class FoundUnit:
    """A Modbus unit that answered, and what its SunSpec common model says.

    ``base`` None: the unit answers Modbus but has no SunSpec map at any base (``note`` says what each
    base answered); such a unit is listed, never put in the config block.
    """

    unit_id: int
    base: int | None
    models: tuple[int, ...] = ()
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    version: str = ""
    device_id: str = ""              # the id the agent will give its readings
    note: str = ""
    also_unit_ids: tuple[int, ...] = ()   # TCP: the same device answered these unit ids too

    @property
    def sunspec(self) -> bool:
        return self.base is not None


@dataclass(slots=True)
class ModbusScan:
    """One ``scan rtu`` or ``scan tcp`` run."""

    transport: str                   # rtu | tcp
    where: str                       # the serial port, or host:port
    units: list[FoundUnit] = field(default_factory=list)
    settings: LineSettings | None = None                       # rtu: the line settings the units answer at
    other_settings: dict[str, list[int]] = field(default_factory=dict)   # rtu: more settings that answered
    garbled: list[str] = field(default_factory=list)           # rtu: settings that got garbled replies
    refused: dict[str, str] = field(default_factory=dict)      # rtu: settings the adapter refused, and why
    slow: list[int] = field(default_factory=list)              # rtu: units that answered after the timeout
    probes: int = 0                                            # requests sent
    elapsed_s: float = 0.0
    error: str = ""                                            # the scan could not run at all
    hint: str = ""

    @property
    def found(self) -> bool:
        return any(u.sunspec for u in self.units)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["settings"] = None if self.settings is None else {"baudrate": self.settings.baudrate,
                                                              "parity": self.settings.parity}
        return out


@dataclass(frozen=True, slots=True)
class MqttDevice:
    """A device seen on a broker: its profile, the device id its readings get, and a sample reading."""

    profile: str
    device_id: str
    sample: dict[str, float | int | str | None]     # the latest reading's metrics ({} when none came)
    time_ms: int | None = None                     # the sample's time
    note: str = ""                                 # why there is no sample (only old retained values, ...)


@dataclass(slots=True)
class MqttFeedFound:
    """What the config needs for one feed: a profile and, when the defaults would miss them, topics."""

    profile: str
    name: str                                      # the feed's name in the config block
    topics: tuple[str, ...] = ()                   # () = the profile's default subscriptions cover it all
    portal_id: str = ""                            # victron
    messages: int = 0


@dataclass(slots=True)
class MqttScan:
    """One ``scan mqtt`` run."""

    url: str
    seconds: float
    messages: int = 0
    feeds: list[MqttFeedFound] = field(default_factory=list)
    devices: list[MqttDevice] = field(default_factory=list)
    unrecognised: dict[str, int] = field(default_factory=dict)   # topic -> messages, for the topics nobody knew
    unrecognised_total: int = 0
    skipped: int = 0                                             # commands and discovery documents
    elapsed_s: float = 0.0
    error: str = ""
    hint: str = ""
    username: str = ""
    password_file: str = ""
    ca_file: str = ""

    @property
    def found(self) -> bool:
        return bool(self.feeds)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["FoundUnit", "LineSettings", "ModbusScan", "MqttDevice", "MqttFeedFound", "MqttScan"]
