"""Readings become ``solar_panel_event`` records: one dict per reading, every schema field present.

The OpenAPI schema file (``config/solar_panel_event.yaml``, uploaded to the Ingestion API connector)
drives everything here: which fields exist, their types, the JSON encoding and the CSV column
order. ``event_id`` is a UUIDv5 of (site, device, reading time) only, so a replay of the same
reading after a crash or a lost response upserts the same row in Data Cloud.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from agent.errors import RecordError, SchemaError

OBJECT_NAME: Final = "solar_panel_event"
PRIMARY_KEY: Final = "event_id"
EVENT_TIME: Final = "date_time"
# Fields the agent fills itself; a source provides the rest through Reading.metrics.
IDENTITY_FIELDS: Final = (
    "event_id", "customer_id", "date_time", "site_id", "device_id", "source", "clock_quality", "agent_version",
)
CLOCK_QUALITIES: Final = ("synced", "restamped", "unsynced")

# A fixed namespace: changing it would change every event id and break replay upserts.
EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:solar-agent:solar_panel_event")

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_RESERVED: Final = frozenset({
    "date_id", "location_id", "dat_account_currency", "dat_exchange_rate",
    "pacing_period", "pacing_end_date", "row_count", "version",
})
# Data Cloud types as the connector accepts them: (OpenAPI type, format or None).
_TYPES: Final = frozenset({
    ("string", None), ("number", None), ("boolean", None), ("string", "date"), ("string", "date-time"),
    ("string", "email"), ("string", "phone"), ("string", "url"), ("number", "percent"),
})
_DATETIME_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$")
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")

Value = float | int | str | bool | None


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement of one device at one instant, as a source produced it.

    ``metrics`` keys are schema field names (``ac_power_w``, ...); a source leaves out what the
    device does not report and the record carries null there.
    """

    device_id: str
    time_ms: int
    source: str
    metrics: Mapping[str, Value]
    clock_quality: str = "synced"


PAYLOAD_HEAD_BYTES = 256      # what a rejected input keeps of its payload: enough to see the shape


@dataclass(frozen=True, slots=True)
class RejectedInput:
    """An input that could not become readings, as recorded for a technician.

    ``redelivered`` is the peer's own flag (MQTT DUP): a copy of an input recorded before a crash
    must not be counted twice.
    """

    source: str              # mqtt:<feed>
    topic: str
    reason: str              # malformed | decode_error
    detail: str              # the decoder's message
    payload: bytes           # the first PAYLOAD_HEAD_BYTES bytes
    payload_bytes: int       # the whole payload's size
    received_ms: int
    redelivered: bool = False



@dataclass(frozen=True, slots=True)
class SchemaField:
    name: str
    type: str
    format: str | None = None


@dataclass(frozen=True, slots=True)
class Schema:
    """The fields of the ingestion object, in the schema file's order (= CSV column order)."""

    object_name: str
    fields: tuple[SchemaField, ...]
    source_path: str = "<embedded>"
    by_name: Mapping[str, SchemaField] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A record ready for the outbox: its key, its compact UTF-8 JSON, and the reading time.

    ``object`` names the schema object the record belongs to; None is the site's reading object
    (``datacloud.object_name``), so readings never spell out a name a config can change.
    """

    event_id: str
    payload: bytes
    time_ms: int
    object: str | None = None


def default_schema_path() -> Path:
    """The schema shipped inside the package (same file as config/solar_panel_event.yaml)."""
    return Path(str(resources.files("agent") / "data" / "solar_panel_event.yaml"))


def load_schema(path: str | Path | None = None, object_name: str = OBJECT_NAME,
                required: Sequence[str] = IDENTITY_FIELDS) -> Schema:
    """Load and check an OpenAPI schema file against the Data Cloud connector rules.

    ``required`` are the fields solar-agent fills in that object (the reading object's by default).
    """
    p = Path(path) if path is not None else default_schema_path()
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaError(f"{p}: cannot read schema file: {exc.strerror}",
                          hint="set datacloud.schema_path to the YAML you uploaded to the connector") from exc
    except yaml.YAMLError as exc:
        raise SchemaError(f"{p}: not valid YAML: {exc}") from exc
    return parse_schema(doc, object_name, str(p), required)


def parse_schema(doc: Any, object_name: str = OBJECT_NAME, source: str = "<schema>",
                 required: Sequence[str] = IDENTITY_FIELDS) -> Schema:
    """Validate a parsed OpenAPI document and return the object's fields."""
    def fail(msg: str, hint: str | None = None) -> SchemaError:
        return SchemaError(f"{source}: {msg}", hint=hint)

    if not isinstance(doc, dict):
        raise fail("top level must be a mapping")
    version = str(doc.get("openapi", ""))
    if not re.fullmatch(r"3\.0\.\d+", version):
        raise fail(f"openapi must be 3.0.x (got {version!r})", "Data Cloud accepts OpenAPI 3.0 schemas only")
    schemas = (doc.get("components") or {}).get("schemas")
    if not isinstance(schemas, dict) or not schemas:
        raise fail("components.schemas must define at least one object")
    lowered = [str(n).lower() for n in schemas]
    if len(set(lowered)) != len(lowered):
        raise fail("object names must be unique ignoring case")
    for name in schemas:
        if not _NAME_RE.match(str(name)):
            raise fail(f"object name {name!r} may only use a-z A-Z 0-9 _ - and at most 80 characters")
    if object_name not in schemas:
        raise fail(f"no object named {object_name!r} in components.schemas (found {sorted(schemas)})",
                   "set datacloud.object_name to the object you created the data stream on")
    obj = schemas[object_name]
    if not isinstance(obj, dict) or obj.get("type") != "object" or not isinstance(obj.get("properties"), dict):
        raise fail(f"{object_name} must be `type: object` with `properties`")
    props: dict[str, Any] = obj["properties"]
    if not 1 <= len(props) <= 1000:
        raise fail(f"{object_name} must have between 1 and 1000 fields (has {len(props)})")
    seen: set[str] = set()
    fields: list[SchemaField] = []
    for fname, spec in props.items():
        fname = str(fname)
        where = f"{object_name}.{fname}"
        if not _NAME_RE.match(fname) or "__" in fname:
            raise fail(f"{where}: field names may only use a-z A-Z 0-9 _ -, at most 80 characters, no '__'")
        if fname.lower() in _RESERVED:
            raise fail(f"{where}: {fname!r} is a reserved field name in Data Cloud")
        if fname.lower() in seen:
            raise fail(f"{where}: duplicate field name ignoring case")
        seen.add(fname.lower())
        if not isinstance(spec, dict):
            raise fail(f"{where}: must be a mapping with a type")
        if "properties" in spec or spec.get("type") in ("object", "array"):
            raise fail(f"{where}: nested objects and arrays are not allowed; flatten the field")
        key = (spec.get("type"), spec.get("format"))
        if key not in _TYPES:
            raise fail(f"{where}: unsupported type/format {key}",
                       "use string, number, boolean, or string with format date / date-time")
        fields.append(SchemaField(fname, str(key[0]), key[1]))
    schema = Schema(object_name, tuple(fields), source)
    for name in required:
        if name not in schema.by_name:
            raise fail(f"{object_name} lacks the field {name!r} that solar-agent fills",
                       "use the schema file shipped with this version (leave datacloud.schema_path unset) and upload "
                       "it to the Ingestion API connector")
    if schema.by_name[PRIMARY_KEY].type != "string" or schema.by_name[EVENT_TIME].format != "date-time":
        raise fail("event_id must be a string and date_time a string with format date-time")
    return schema


_NAMESPACE_BYTES: Final = EVENT_NAMESPACE.bytes


def event_id(site_id: str, device_id: str, time_ms: int) -> str:
    """Deterministic primary key: the same reading always gets the same id.

    ``uuid.uuid5(EVENT_NAMESPACE, name)`` written out (RFC 4122 4.3: SHA-1 of the namespace and the
    name, version 5, variant 10): the UUID object it builds was two thirds of the cost, once per
    reading. tests/outbox/test_records_roundtrip.py holds it to uuid.uuid5.
    """
    name = f"{site_id}\x1f{device_id}\x1f{time_ms}".encode()
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def format_time(time_ms: int) -> str:
    """UTC ``yyyy-MM-ddTHH:mm:ss.SSSZ`` from epoch milliseconds, with integer arithmetic only."""
    secs, millis = divmod(time_ms, 1000)
    return f"{_utc_second(secs)}.{millis:03d}Z"


@functools.lru_cache(maxsize=256)
def _utc_second(secs: int) -> str:
    # A site's readings of one poll share their second: strftime once per second, not per reading.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def check_value(f: SchemaField, value: Value) -> None:
    """Raise RecordError when ``value`` does not fit field ``f`` (null always fits)."""
    if value is None:
        return
    ok: bool
    if f.type == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    elif f.type == "boolean":
        ok = isinstance(value, bool)
    elif f.format == "date-time":
        ok = isinstance(value, str) and bool(_DATETIME_RE.match(value))
    elif f.format == "date":
        ok = isinstance(value, str) and bool(_DATE_RE.match(value))
    else:
        ok = isinstance(value, str)
    if not ok:
        raise RecordError(f"field {f.name}: {value!r} is not a valid {f.format or f.type}")


@dataclass(frozen=True, slots=True)
class RecordBuilder:
    """Turns readings into records for one site."""

    schema: Schema
    site_id: str
    customer_id: str
    agent_version: str = ""
    # Worked out once per builder, used for every reading (build runs once per reading per poll):
    # (name, kind, field) per schema field to check, kind 0: a number, 1: a plain string, 2: other;
    # date_time is left out, format_time writes it in the schema's format by construction.
    _checks: tuple[tuple[str, int, SchemaField], ...] = field(init=False, repr=False, compare=False)
    _names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _metric_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        kinds = [(f.name, 0 if f.type == "number" else 1 if f.type == "string" and not f.format else 2, f)
                 for f in self.schema.fields if not (f.name == "date_time" and f.format == "date-time")]
        object.__setattr__(self, "_checks", tuple(kinds))
        object.__setattr__(self, "_names", self.schema.names)
        object.__setattr__(self, "_metric_names", frozenset(self.schema.names).difference(IDENTITY_FIELDS))

    def build(self, reading: Reading) -> dict[str, Value]:
        """One record with every schema field present, validated against the schema."""
        unknown = reading.metrics.keys() - self._metric_names
        if unknown:
            raise RecordError(f"device {reading.device_id}: metrics not in the schema: {sorted(unknown)}")
        if reading.clock_quality not in CLOCK_QUALITIES:
            raise RecordError(f"clock_quality must be one of {CLOCK_QUALITIES} (got {reading.clock_quality!r})")
        if not reading.device_id:
            raise RecordError("a reading needs a device_id")
        record: dict[str, Value] = dict.fromkeys(self._names)
        record.update(reading.metrics)
        record.update(
            event_id=event_id(self.site_id, reading.device_id, reading.time_ms),
            customer_id=self.customer_id,
            date_time=format_time(reading.time_ms),
            site_id=self.site_id,
            device_id=reading.device_id,
            source=reading.source,
            clock_quality=reading.clock_quality,
            agent_version=self.agent_version or None,
        )
        # check_value for each field, with the common cases (a float, an int, a str) decided here:
        # a reading is checked every poll, and 28 calls were a third of its encoding.
        for name, kind, f in self._checks:
            value = record[name]
            if value is None:
                continue
            vt = type(value)
            if kind == 0 and (vt is int or (vt is float and math.isfinite(value))):   # type: ignore[arg-type]
                continue
            if kind == 1 and vt is str:
                continue
            check_value(f, value)
        return record

    def encode(self, reading: Reading) -> EncodedRecord:
        """Build and serialise one reading for the outbox."""
        record = self.build(reading)
        return EncodedRecord(str(record[PRIMARY_KEY]), encode_json(record), reading.time_ms)


# One encoder for every record: json.dumps with options builds a new one per call.
_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_json(record: Mapping[str, Value]) -> bytes:
    """Compact UTF-8 JSON; NaN/Infinity are refused (Data Cloud has no such numbers)."""
    return _JSON.encode(record).encode()


def decode_json(payload: bytes) -> dict[str, Value]:
    return json.loads(payload)  # type: ignore[no-any-return]


def streaming_body(payloads: Sequence[bytes]) -> bytes:
    """``{"data":[...]}`` from already-encoded records, without decoding them again.

    One join, one copy of the body: ``head + join + tail`` copied a 190 kB body twice more, about
    a quarter of the streaming client's CPU per request against a null sink (bench/drain.py).
    """
    if not payloads:
        return b'{"data":[]}'
    if len(payloads) == 1:
        return b'{"data":[' + payloads[0] + b"]}"
    return b",".join([b'{"data":[' + payloads[0], *payloads[1:-1], payloads[-1] + b"]}"])


STREAMING_OVERHEAD: Final = len(streaming_body([]))  # bytes around the records; +1 comma per extra record


def _csv_cell(value: Value) -> Value:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# One JSON value as ``encode_json`` writes it, for the CSV fast path. null is outside the group, so
# ``groups(b"")`` turns it into an empty cell. A string token is accepted only without a backslash:
# then it holds no '"', no CR/LF and no control character (json.dumps escapes all of those), so
# it needs CSV quotes only when it holds a comma, and its JSON form is then already the CSV form.
# Numbers follow the JSON grammar and are copied as written: json.dumps writes float repr(), the
# very text csv.writer would write after json.loads, without the float round trip.
# Possessive quantifiers: a token never has to give characters back, so no backtracking.
_JSON_VALUE: Final = (rb'(?:null|("[^"\\]*+"|-?+(?:[1-9][0-9]*+|0)(?:\.[0-9]++)?+(?:[eE][-+]?+[0-9]++)?+'
                      rb'|true|false))')


def _fast_row_pattern(columns: Sequence[str]) -> re.Pattern[bytes]:
    """A compact JSON object with exactly ``columns`` as keys, in that order; one group per value."""
    fields = (b'"' + re.escape(c.encode()) + b'":' + _JSON_VALUE for c in columns)
    return re.compile(rb"\{" + b",".join(fields) + rb"\}")


def _csv_token(token: bytes) -> bytes:
    """The CSV cell of one JSON token from ``_JSON_VALUE`` (only strings change)."""
    if token[:1] == b'"' and b"," not in token:
        return token[1:-1]
    return token


class CsvEncoder:
    """RFC 4180 CSV (comma, CRLF, quoted when needed) in schema column order.

    Stored payloads come from ``encode_json`` of a dict built in schema order, so ``rows`` takes a
    fast path for them: one regex match that checks the keys and splits the values, then bytes
    joins, about 4x faster than json.loads + csv.writer. A payload it does not recognise (other
    key order, missing or extra keys, a string with an escape) goes through json.loads and
    csv.writer as before; the output is the same bytes either way (tests/records/test_csv_fast.py).
    """

    def __init__(self, schema: Schema) -> None:
        self.columns = schema.names
        self._buf = io.StringIO()
        self._writer = csv.writer(self._buf, lineterminator="\r\n")
        self._fast = _fast_row_pattern(self.columns)
        self._separators = len(self.columns) - 1

    def header(self) -> bytes:
        return self._encode([self.columns])

    def rows(self, payloads: Iterable[bytes]) -> bytes:
        """Encode stored JSON payloads as CSV rows (one per payload)."""
        match = self._fast.fullmatch
        separators = self._separators
        out: list[bytes] = []
        for p in payloads:
            m = match(p)
            if m is None:
                out.append(self._slow_row(p))
                continue
            row = b",".join(m.groups(b""))
            if row.count(b",") == separators:
                # No value holds a comma, so no cell needs quotes and every '"' left is a JSON
                # string delimiter: drop them all in one C call.
                row = row.replace(b'"', b"")
            else:
                row = b",".join([_csv_token(t) for t in m.groups(b"")])
            out.append(row)
        if not out:
            return b""
        out.append(b"")
        return b"\r\n".join(out)

    def _slow_row(self, payload: bytes) -> bytes:
        """One payload through json.loads and csv.writer, without the line terminator."""
        rec = json.loads(payload)
        return self._encode([[_csv_cell(rec.get(c)) for c in self.columns]])[:-2]

    def _encode(self, rows: Iterable[Sequence[Any]]) -> bytes:
        self._buf.seek(0)
        self._buf.truncate()
        self._writer.writerows(rows)
        return self._buf.getvalue().encode()
