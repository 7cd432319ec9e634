"""The connector schema as the emulator understands it, and record validation.

Parsed from the OpenAPI YAML directly (not through ``agent.records``): the emulator is a test
peer and must not share the agent's reading of the schema. Error texts mimic the
everit-json-schema messages Data Cloud returns in ``validationReport`` (datacloud-api.md §2.2).
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

# The documented value formats: date-time yyyy-MM-ddTHH:mm:ss.SSSZ, UTC, milliseconds optional
# ([SCH] "Requirements for Ingestion API Schema File"; [GS]; examples such as 2021-07-05T09:31:44.457Z
# and 2020-04-27T02:48:33Z), date yyyy-MM-dd. These regexes give the shape; a value must also be a
# real calendar instant (valid_datetime/valid_date): month 13, day 32, hour 25 or February 30 match
# the digits of the pattern but are no date in that format, so they are refused like any other
# mismatch.
DATETIME_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$")
DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_SUPPORTED: Final = {
    ("string", None), ("number", None), ("boolean", None), ("string", "date"), ("string", "date-time"),
    ("string", "email"), ("string", "phone"), ("string", "url"), ("number", "percent"),
}


class SchemaFileError(ValueError):
    """The schema file can't be used as an Ingestion API connector schema."""


@dataclass(frozen=True)
class FieldType:
    type: str  # OpenAPI type: string | number | boolean
    format: str | None

    @property
    def label(self) -> str:
        """The everit name of the JSON type: String, Number, Boolean."""
        return self.type.capitalize()


@dataclass(frozen=True)
class ObjectSchema:
    name: str
    fields: dict[str, FieldType]
    primary_key: str


def default_schema_path() -> Path:
    return Path(str(resources.files("agent") / "data" / "solar_panel_event.yaml"))


def load_schema(path: Path, primary_key: str) -> dict[str, ObjectSchema]:
    """All objects of an OpenAPI 3.0 connector schema file, by object name."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SchemaFileError(f"{path}: can't read the schema: {exc}") from exc
    if not isinstance(doc, dict) or not str(doc.get("openapi", "")).startswith("3.0"):
        raise SchemaFileError(f"{path}: not an OpenAPI 3.0.x document")
    schemas = (doc.get("components") or {}).get("schemas") or {}
    if not isinstance(schemas, dict) or not schemas:
        raise SchemaFileError(f"{path}: no components.schemas objects")
    objects: dict[str, ObjectSchema] = {}
    for name, spec in schemas.items():
        if not _NAME_RE.match(str(name)) or not isinstance(spec, dict) or spec.get("type") != "object":
            raise SchemaFileError(f"{path}: components.schemas.{name} is not a flat object with a valid name")
        props = spec.get("properties") or {}
        fields: dict[str, FieldType] = {}
        for fname, fspec in props.items():
            ftype = FieldType(str((fspec or {}).get("type")), (fspec or {}).get("format"))
            if not _NAME_RE.match(str(fname)) or "__" in str(fname):
                raise SchemaFileError(f"{path}: {name}.{fname}: invalid field name")
            if (ftype.type, ftype.format) not in _SUPPORTED:
                raise SchemaFileError(f"{path}: {name}.{fname}: unsupported type {ftype.type}/{ftype.format}")
            fields[str(fname)] = ftype
        if not fields:
            raise SchemaFileError(f"{path}: {name} has no fields")
        if primary_key not in fields:
            raise SchemaFileError(f"{path}: {name} has no primary key field {primary_key!r}")
        objects[str(name)] = ObjectSchema(str(name), fields, primary_key)
    return objects


def valid_date(text: str) -> bool:
    """``yyyy-MM-dd`` naming a real day (year 0001-9999)."""
    if not DATE_RE.match(text):
        return False
    try:
        dt.date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def valid_datetime(text: str) -> bool:
    """``yyyy-MM-ddTHH:mm:ss[.SSS]Z`` naming a real instant (no hour 24, no second 60)."""
    if not DATETIME_RE.match(text):
        return False
    try:
        dt.datetime(int(text[0:4]), int(text[5:7]), int(text[8:10]),
                    int(text[11:13]), int(text[14:16]), int(text[17:19]))
    except ValueError:
        return False
    return True


def calendar_ok(values: Iterable[str], fmt: str) -> bool:
    """Every value, already known to have the pattern's shape, is a real date (and time)."""
    return calendar_ok_joined("\n".join(values), fmt)


def calendar_ok_joined(joined: str, fmt: str) -> bool:
    """``calendar_ok`` for values joined by newlines, all of the pattern's shape.

    A few C-level searches for an impossible part instead of a datetime per value: a million
    readings of a bulk file cost a fraction of a second. February 29 is the one part that needs the
    year, and is checked per distinct year.
    """
    if "0000-" in joined:  # year 0: a 4-digit year is the only place "0000-" can occur
        return False
    checks = (_BAD_DATE,) if fmt == "date" else (_BAD_DATE, *_BAD_TIME)
    if any(rx.search(joined) for rx in checks):
        return False
    if "-02-29" not in joined:  # a substring test is far cheaper than the regex scan below
        return True
    return all(calendar.isleap(int(year)) for year in set(_FEB_29.findall(joined)))


# Impossible parts of a yyyy-MM-dd[THH:mm:ss...] value. Only the date has '-', only the time ':'.
# One pattern per literal it starts with: sre then skips ahead to that character.
_BAD_DATE: Final = re.compile(
    r"-(?:(?:00|1[3-9]|[2-9]\d)-"          # month 00, 13-99
    r"|\d\d-(?:00|3[2-9]|[4-9]\d)"         # day 00, 32-99
    r"|02-3[01]|(?:0[469]|11)-31)"         # past the end of a short month
)
_BAD_TIME: Final = (
    re.compile(r"T(?:2[4-9]|[3-9]\d)"),     # hour 24-99
    re.compile(r":[6-9]"),                  # minute or second 60-99
)
_FEB_29: Final = re.compile(r"(\d{4})-02-29")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int | float):
        return "Number"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "JSONArray"
    if isinstance(value, dict):
        return "JSONObject"
    return "Null"


def check_value(field: str, ftype: FieldType, value: Any) -> str | None:
    """The everit-style problem with one JSON value, or None when it fits the field."""
    if value is None:
        return None
    found = _json_type(value)
    if found != ftype.label:
        return f"#/{field}: expected type: {ftype.label}, found: {found}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"#/{field}: {value} is not a finite number"
    if ftype.format == "date-time" and value and not valid_datetime(value):
        return f"#/{field}: [{value}] is not a valid date-time. Expected [yyyy-MM-dd'T'HH:mm:ss.SSS'Z']"
    if ftype.format == "date" and value and not valid_date(value):
        return f"#/{field}: [{value}] is not a valid date. Expected [yyyy-MM-dd]"
    return None


def validate_record(
    obj: ObjectSchema, record: Any, *, reject_unknown: bool, require_all: bool
) -> list[str]:
    """Every problem with one streamed record (empty list = valid)."""
    if not isinstance(record, dict):
        return [f"#: expected type: JSONObject, found: {_json_type(record)}"]
    problems: list[str] = []
    for key, value in record.items():
        ftype = obj.fields.get(key)
        if ftype is None:
            if reject_unknown:
                problems.append(f"#: extraneous key [{key}] is not permitted")
            continue
        problem = check_value(key, ftype, value)
        if problem:
            problems.append(problem)
    pk = record.get(obj.primary_key)
    if pk is None or pk == "":
        problems.append(f"#: required key [{obj.primary_key}] not found")
    if require_all:
        problems.extend(f"#: required key [{k}] not found" for k in obj.fields if k not in record)
    return problems


def parse_json_strict(raw: bytes) -> Any:
    """JSON as a strict parser reads it: NaN/Infinity literals are not JSON."""

    def _reject(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    return json.loads(raw.decode("utf-8"), parse_constant=_reject)
