"""The connector schema as the emulator understands it, and record validation.

Parsed from the OpenAPI YAML directly (not through ``agent.records``): the emulator is a test
peer and must not share the agent's reading of the schema. Error texts mimic the
everit-json-schema messages Data Cloud returns in ``validationReport`` (datacloud-api.md §2.2).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

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
    if ftype.format == "date-time" and value and not DATETIME_RE.match(value):
        return f"#/{field}: [{value}] is not a valid date-time. Expected [yyyy-MM-dd'T'HH:mm:ss.SSS'Z']"
    if ftype.format == "date" and value and not DATE_RE.match(value):
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
