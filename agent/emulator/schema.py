"""The connector schema as the emulator understands it, and record validation.

Parsed from the OpenAPI YAML directly (not through ``agent.records``): the emulator is a test
peer and must not share the agent's reading of the schema. Error texts mimic the
everit-json-schema messages Data Cloud returns in ``validationReport`` (datacloud-api.md §2.2).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

_DATETIME_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$")
_DATE_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
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
    if ftype.format == "date-time" and value and not _DATETIME_RE.match(value):
        return f"#/{field}: [{value}] is not a valid date-time. Expected [yyyy-MM-dd'T'HH:mm:ss.SSS'Z']"
    if ftype.format == "date" and value and not _DATE_RE.match(value):
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


# --- CSV (bulk) -------------------------------------------------------------------------

class CsvFileError(ValueError):
    """An uploaded bulk file that Data Cloud would refuse."""


def _csv_converter(field: str, ftype: FieldType) -> Callable[[str, int], Any]:
    """A function turning one CSV cell into the JSON value stored for it ('' -> None)."""
    if ftype.type == "number":
        def number(cell: str, line: int) -> Any:
            if cell == "":
                return None
            try:
                value = float(cell)
            except ValueError:
                raise CsvFileError(f"line {line}: #/{field}: [{cell}] is not a number") from None
            if not math.isfinite(value):
                raise CsvFileError(f"line {line}: #/{field}: [{cell}] is not a finite number")
            return int(value) if value.is_integer() and "." not in cell and "e" not in cell.lower() else value
        return number
    if ftype.type == "boolean":
        def boolean(cell: str, line: int) -> Any:
            if cell == "":
                return None
            low = cell.lower()
            if low not in ("true", "false"):
                raise CsvFileError(f"line {line}: #/{field}: [{cell}] is not a boolean")
            return low == "true"
        return boolean
    pattern = {"date-time": _DATETIME_RE, "date": _DATE_RE}.get(ftype.format or "")
    if pattern is not None:
        def dated(cell: str, line: int) -> Any:
            if cell == "":
                return None
            if not pattern.match(cell):
                raise CsvFileError(f"line {line}: #/{field}: [{cell}] is not a valid {ftype.format}")
            return cell
        return dated
    return lambda cell, line: cell if cell != "" else None


def _reader(data: io.TextIOBase) -> Iterator[list[str]]:
    # strict=True makes a stray quote an error instead of silently mangling the value.
    return csv.reader(data, delimiter=",", quotechar='"', strict=True)


def iter_upsert_rows(
    obj: ObjectSchema, text: io.TextIOBase, *, reject_unknown: bool
) -> Iterator[tuple[str, str]]:
    """(primary key, record JSON) per row of an upsert file; raises CsvFileError on the first bad row."""
    rows = _reader(text)
    try:
        header = next(rows)
    except StopIteration:
        raise CsvFileError("the file is empty: an upsert file starts with a header of field names") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFileError(f"line 1: {exc}") from exc
    unknown = [h for h in header if h not in obj.fields]
    if unknown and reject_unknown:
        raise CsvFileError(f"header: unknown field names {unknown} (not in object {obj.name})")
    if len(set(header)) != len(header):
        raise CsvFileError("header: a field name appears twice")
    if obj.primary_key not in header:
        raise CsvFileError(f"header: the primary key column {obj.primary_key!r} is missing")
    columns = [(i, h, _csv_converter(h, obj.fields[h])) for i, h in enumerate(header) if h in obj.fields]
    pk_index = header.index(obj.primary_key)
    width = len(header)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    # Bulk updates are full replace: fields absent from the header are stored as null.
    missing = {f: None for f in obj.fields if f not in header}
    line = 1
    try:
        for row in rows:
            line += 1
            if len(row) != width:
                if row == []:
                    continue  # a trailing blank line
                raise CsvFileError(f"line {line}: {len(row)} values for {width} header columns")
            pk = row[pk_index]
            if pk == "":
                raise CsvFileError(f"line {line}: empty primary key {obj.primary_key}")
            record = {name: conv(row[i], line) for i, name, conv in columns}
            record.update(missing)
            yield pk, dumps(record)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFileError(f"line {line}: {exc}") from exc


def iter_delete_rows(text: io.TextIOBase) -> Iterator[str]:
    """Primary keys of a delete file: no header, 1 or 2 columns (key, optional datetime)."""
    line = 0
    try:
        for row in _reader(text):
            line += 1
            if row == []:
                continue
            if len(row) > 2:
                raise CsvFileError(f"line {line}: a delete file has 1 or 2 columns, found {len(row)}")
            if row[0] == "":
                raise CsvFileError(f"line {line}: empty primary key")
            if len(row) == 2 and not _DATETIME_RE.match(row[1]):
                raise CsvFileError(f"line {line}: [{row[1]}] is not a valid date-time")
            yield row[0]
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFileError(f"line {line}: {exc}") from exc
