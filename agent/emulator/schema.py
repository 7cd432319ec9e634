"""The connector schema as the emulator understands it, and record validation.

Parsed from the OpenAPI YAML directly (not through ``agent.records``): the emulator is a test
peer and must not share the agent's reading of the schema. Error texts mimic the
everit-json-schema messages Data Cloud returns in ``validationReport`` (datacloud-api.md §2.2).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import json.encoder
import math
import re
from collections.abc import Iterator
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


def _row_batches(text: Iterator[str], size: int) -> Iterator[list[list[str]]]:
    """Rows in batches, blank lines skipped. Blocks without a quote character are split with
    str.split (several times faster than the csv module); from the first quote on, RFC 4180
    parsing by the csv module (a quoted field may span lines).
    """
    while lines := list(itertools.islice(text, size)):
        if '"' in "".join(lines):
            reader = _reader(itertools.chain(lines, text))
            while batch := [r for r in itertools.islice(reader, size) if r]:
                yield batch
            return
        yield [line.rstrip("\r\n").split(",") for line in lines if line not in ("\n", "\r\n")]


def _reader(data: Iterator[str]) -> Iterator[list[str]]:
    # strict=True makes a stray quote an error instead of silently mangling the value.
    return csv.reader(data, delimiter=",", quotechar='"', strict=True)


_NUM: Final = r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?"
_JSON_NUMBER_RE: Final = re.compile(_NUM)
# Whole-column checks: one C-level regex over the joined column instead of one call per cell.
_NUMBER_COLUMN_RE: Final = re.compile(rf"(?:{_NUM})?(?:\n(?:{_NUM})?)*")
_COLUMN_RE: Final = {
    fmt: re.compile(rf"(?:{pat.pattern[1:-1]})?(?:\n(?:{pat.pattern[1:-1]})?)*")
    for fmt, pat in (("date-time", _DATETIME_RE), ("date", _DATE_RE))
}
_encode_str: Final = json.encoder.encode_basestring


def _json_column(field: str, ftype: FieldType, cells: tuple[str, ...], first_row: int) -> list[str]:
    """One CSV column as JSON value texts ('' -> null); raises CsvFileError at the first bad cell.

    Column-wise so the per-cell work is C-level joins, regexes and maps: a 1,000,000-row
    backfill must validate in seconds.
    """
    def bad(i: int, what: str) -> CsvFileError:
        return CsvFileError(f"row {first_row + i}: #/{field}: [{cells[i]}] is not {what}")

    def joined_ok(rx: re.Pattern[str]) -> bool:
        joined = "\n".join(cells)
        # A cell with its own newline would fool the joined check: then go cell by cell.
        return joined.count("\n") == len(cells) - 1 and rx.fullmatch(joined) is not None

    if ftype.type == "number":
        out = [c or "null" for c in cells]
        if joined_ok(_NUMBER_COLUMN_RE):
            return out
        for i, cell in enumerate(cells):
            if cell and not _JSON_NUMBER_RE.fullmatch(cell):
                try:  # "+1", ".5", "1." are numbers too, just not JSON spellings
                    value = float(cell)
                except ValueError:
                    raise bad(i, "a number") from None
                if not math.isfinite(value):
                    raise bad(i, "a finite number")
                out[i] = repr(value)
        return out
    if ftype.type == "boolean":
        out = []
        for i, cell in enumerate(cells):
            low = cell.lower()
            if low not in ("true", "false", ""):
                raise bad(i, "a boolean")
            out.append(low or "null")
        return out
    column_re = _COLUMN_RE.get(ftype.format or "")
    if column_re is not None and not joined_ok(column_re):
        pattern = _DATETIME_RE if ftype.format == "date-time" else _DATE_RE
        for i, cell in enumerate(cells):
            if cell and not pattern.match(cell):
                raise bad(i, f"a valid {ftype.format}")
    return ["null" if not cell else text for cell, text in zip(cells, map(_encode_str, cells), strict=True)]


def iter_upsert_chunks(
    obj: ObjectSchema, text: io.TextIOBase, *, reject_unknown: bool, chunk_rows: int = 20_000
) -> Iterator[tuple[list[str], list[str]]]:
    """(primary keys, record JSON texts) per chunk of an upsert file; CsvFileError on a bad row.

    Bulk updates are full replace: schema fields absent from the header are stored as null.
    """
    batches = _row_batches(text, chunk_rows)
    try:
        first = next(batches, [])
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFileError(f"line 1: {exc}") from exc
    if not first:
        raise CsvFileError("the file is empty: an upsert file starts with a header of field names")
    header, first = first[0], first[1:]
    unknown = [h for h in header if h not in obj.fields]
    if unknown and reject_unknown:
        raise CsvFileError(f"header: unknown field names {unknown} (not in object {obj.name})")
    if len(set(header)) != len(header):
        raise CsvFileError("header: a field name appears twice")
    if obj.primary_key not in header:
        raise CsvFileError(f"header: the primary key column {obj.primary_key!r} is missing")
    width = len(header)
    pk_index = header.index(obj.primary_key)
    used = [(i, h) for i, h in enumerate(header) if h in obj.fields]
    # One %-template per file: the record text is built by C-level string formatting.
    template = "{" + ",".join(
        _encode_str(f).replace("%", "%%") + ":" + ("%s" if f in header else "null") for f in obj.fields) + "}"
    order = {h: n for n, (_, h) in enumerate(used)}
    slots = [order[f] for f in obj.fields if f in order]
    row_no = 0
    try:
        for batch in itertools.chain([first], batches):
            if not batch:
                continue
            for n, row in enumerate(batch):
                if len(row) != width:
                    raise CsvFileError(f"row {row_no + n + 1}: {len(row)} values for {width} header columns")
            columns = list(zip(*batch, strict=True))
            pks = list(columns[pk_index])
            if "" in pks:
                raise CsvFileError(f"row {row_no + pks.index('') + 1}: empty primary key {obj.primary_key}")
            converted = [_json_column(h, obj.fields[h], columns[i], row_no + 1) for i, h in used]
            ordered = [converted[s] for s in slots]
            yield pks, [template % values for values in zip(*ordered, strict=True)]
            row_no += len(batch)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise CsvFileError(f"row {row_no + 1}: {exc}") from exc


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
