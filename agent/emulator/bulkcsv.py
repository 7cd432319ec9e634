"""Bulk CSV files as the emulator reads them: validated and converted while they stream in.

An upload is fed to a converter in pieces as the bytes arrive (``feed``), and ``close`` ends
it; each call returns the complete rows seen so far as chunks of (primary keys, record JSON
texts) or, for delete files, (primary keys, []). A bad file raises ``CsvFileError`` at the
first bad row, so the server still answers it with a synchronous 400.

Upsert rows take one of two paths that give the same bytes (tests/emulator/test_bulkcsv.py):

* fast: a block of rows with no quote, backslash or control character (what a CSV writer
  emits for plain numbers and strings). Cells are split with one ``str.split`` per block, each
  column is validated on its *distinct values* (numbers and datetimes by their digit shape, so
  1,000,000 distinct readings cost a few hundred regex calls), and the record texts are built
  by interleaving columns with the JSON separators in one ``str.join``: no Python per cell.
* reference: everything else (quoted cells, escapes, non-JSON number spellings, mixed-case
  booleans, a bad row) goes through the csv module and ``_json_column``, which also words
  every error. The fast path never raises; it hands anything unusual to the reference path.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json.encoder
import math
import re
from collections.abc import Iterable, Iterator
from typing import Final

from agent.emulator.schema import (
    DATE_RE,
    DATETIME_RE,
    FieldType,
    ObjectSchema,
    calendar_ok,
    calendar_ok_joined,
    valid_date,
    valid_datetime,
)

Chunk = tuple[list[str], list[str]]  # (primary keys, record JSON texts; empty for deletes)


class CsvFileError(ValueError):
    """An uploaded bulk file that Data Cloud would refuse."""


def _reader(data: Iterable[str]) -> Iterator[list[str]]:
    # strict=True makes a stray quote an error instead of silently mangling the value.
    return csv.reader(data, delimiter=",", quotechar='"', strict=True)


_NUM: Final = r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?"
_JSON_NUMBER_RE: Final = re.compile(_NUM)
# Whole-column checks: one C-level regex over the joined column instead of one call per cell.
_NUMBER_COLUMN_RE: Final = re.compile(rf"(?:{_NUM})?(?:\n(?:{_NUM})?)*")
_COLUMN_RE: Final = {
    fmt: re.compile(rf"(?:{pat.pattern[1:-1]})?(?:\n(?:{pat.pattern[1:-1]})?)*")
    for fmt, pat in (("date-time", DATETIME_RE), ("date", DATE_RE))
}
_encode_str: Final = json.encoder.encode_basestring
# Control characters other than CR/LF need JSON escapes: their blocks take the reference path.
_CONTROL_BYTES: Final = bytes(c for c in range(32) if c not in (10, 13))
# 1-9 -> 1 keeps what the number/date regexes can tell apart (\d, and 0 versus [1-9]), so a
# value matches iff its shape does, and a column of distinct readings has few shapes.
_SHAPE: Final = str.maketrans("23456789", "11111111")
_FEW: Final = 64  # up to this many distinct values are matched one by one, no shapes needed


def _json_column(field: str, ftype: FieldType, cells: tuple[str, ...], first_row: int) -> list[str]:
    """One CSV column as JSON value texts ('' -> null); raises CsvFileError at the first bad cell."""
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
    if column_re is not None and not (joined_ok(column_re) and calendar_ok(cells, ftype.format or "")):
        valid = valid_datetime if ftype.format == "date-time" else valid_date
        for i, cell in enumerate(cells):
            if cell and not valid(cell):
                raise bad(i, f"a valid {ftype.format}")
    return ["null" if not cell else text for cell, text in zip(cells, map(_encode_str, cells), strict=True)]


def _all_match(values: set[str], check: re.Pattern[str]) -> bool:
    """Every value fully matches ``check`` (judged on digit shapes when there are many)."""
    if len(values) > _FEW:
        values = set("\n".join(values).translate(_SHAPE).split("\n"))
    return all(check.fullmatch(v) for v in values)


def _all_dates(values: set[str], check: re.Pattern[str], fmt: str) -> bool:
    """Every value has the date (or date-time) shape and is a real calendar day and time."""
    joined = "\n".join(values)
    shapes = set(joined.translate(_SHAPE).split("\n")) if len(values) > _FEW else values
    return all(check.fullmatch(v) for v in shapes) and calendar_ok_joined(joined, fmt)


def _row_end(text: str) -> int:
    """The index after the last line break that is outside quotes (0: no complete row yet).

    RFC 4180 escapes a quote by doubling it, so an even number of quotes before a line break
    means the break ends a row; an odd number means it sits inside a quoted cell.
    """
    end = text.rfind("\n")
    if '"' in text:
        while end >= 0 and text.count('"', 0, end) % 2:
            end = text.rfind("\n", 0, end)
    return end + 1


class _StreamingCsv:
    """UTF-8 decoding and row-boundary cutting shared by the upsert and delete converters."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._carry = ""
        self._control = False  # a control character was seen: escaping may be needed from now on
        self.rows = 0  # data rows converted so far

    def feed(self, data: bytes) -> list[Chunk]:
        """Convert the complete rows in ``data`` (plus what an earlier call left over)."""
        if not self._control and len(data.translate(None, _CONTROL_BYTES)) != len(data):
            self._control = True
        text = self._decode(data, final=False)
        end = _row_end(text)
        self._carry = text[end:]
        return self._convert(text[:end]) if end else []

    def close(self) -> list[Chunk]:
        """Convert the rest; the file ends here (a last row needs no line break)."""
        text = self._decode(b"", final=True)
        self._carry = ""
        return self._convert(text) if text else []

    def _decode(self, data: bytes, *, final: bool) -> str:
        try:
            return self._carry + self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise CsvFileError(f"row {self.rows + 1}: {exc}") from exc

    def _convert(self, text: str) -> list[Chunk]:
        raise NotImplementedError


class UpsertConverter(_StreamingCsv):
    """An upsert file: a header of field names, then rows. Bulk updates are full replace:
    schema fields absent from the header are stored as null. Header columns that are not fields
    of the object are ignored ([BI] "Prepare CSV Files": "Results only include columns that are a
    match"), or refuse the file with ``reject_unknown`` (the other reading of "must be the same").
    """

    def __init__(self, obj: ObjectSchema, *, reject_unknown: bool) -> None:
        super().__init__()
        self._obj = obj
        self._reject_unknown = reject_unknown
        self._header: list[str] | None = None

    def close(self) -> list[Chunk]:
        out = super().close()
        if self._header is None:
            raise CsvFileError("the file is empty: an upsert file starts with a header of field names")
        return out

    def _convert(self, text: str) -> list[Chunk]:
        if self._header is None:
            text = text.lstrip("\r\n")  # blank lines are skipped, before the header too
            if not text:
                return []
            first = text[:text.find("\n") + 1] or text
            if '"' in first:  # a quoted header: let the csv module read it
                rows = self._reference_rows(text)
                self._set_header(rows[0])
                return [self._reference(rows[1:])] if len(rows) > 1 else []
            self._set_header(first.rstrip("\r\n").split(","))
            text = text[len(first):]
        if not text:
            return []
        fast = self._fast(text)
        return [fast if fast is not None else self._reference(self._reference_rows(text))]

    def _set_header(self, header: list[str]) -> None:
        obj = self._obj
        unknown = [h for h in header if h not in obj.fields]
        if unknown and self._reject_unknown:
            raise CsvFileError(f"header: unknown field names {unknown} (not in object {obj.name})")
        if len(set(header)) != len(header):
            raise CsvFileError("header: a field name appears twice")
        if obj.primary_key not in header:
            raise CsvFileError(f"header: the primary key column {obj.primary_key!r} is missing")
        self._header = header
        self._pk_index = header.index(obj.primary_key)
        self._used = [(i, h) for i, h in enumerate(header) if h in obj.fields]
        # One %-template per file: the record text is built by C-level string formatting.
        self._template = "{" + ",".join(
            _encode_str(f).replace("%", "%%") + ":" + ("%s" if f in header else "null") for f in obj.fields) + "}"
        order = {h: n for n, (_, h) in enumerate(self._used)}
        self._slots = [order[f] for f in obj.fields if f in order]

    # --- reference path -----------------------------------------------------------------
    def _reference_rows(self, text: str) -> list[list[str]]:
        lines = io.StringIO(text, newline="")
        try:
            if '"' in text:
                return [r for r in _reader(lines) if r]
            return [line.rstrip("\r\n").split(",") for line in lines if line not in ("\n", "\r\n")]
        except csv.Error as exc:
            raise CsvFileError(f"row {self.rows + 1}: {exc}") from exc

    def _reference(self, batch: list[list[str]]) -> Chunk:
        """Rows through the csv-module path: every check, every error message."""
        assert self._header is not None
        width, first = len(self._header), self.rows + 1
        for n, row in enumerate(batch):
            if len(row) != width:
                raise CsvFileError(f"row {first + n}: {len(row)} values for {width} header columns")
        if not batch:
            return [], []
        columns = list(zip(*batch, strict=True))
        pks = list(columns[self._pk_index])
        if "" in pks:
            raise CsvFileError(f"row {first + pks.index('')}: empty primary key {self._obj.primary_key}")
        converted = [_json_column(h, self._obj.fields[h], columns[i], first) for i, h in self._used]
        ordered = [converted[s] for s in self._slots]
        self.rows += len(batch)
        return pks, [self._template % values for values in zip(*ordered, strict=True)]

    # --- fast path ----------------------------------------------------------------------
    def _fast(self, text: str) -> Chunk | None:
        """The block's rows, or None when it needs the reference path (which then decides)."""
        if self._control or '"' in text or "\\" in text:
            return None
        breaks = text.count("\n")
        if "\r" in text:
            lines = text.split("\r\n")
            if len(lines) - 1 != breaks or text.count("\r") != breaks:
                return None  # a lone CR or LF: the csv module decides what it means
        else:
            lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        if "" in lines:
            lines = [line for line in lines if line]
        assert self._header is not None
        width, n = len(self._header), len(lines)
        if not n:
            return [], []
        if set(map(str.count, lines, itertools.repeat(","))) != {width - 1}:
            return None
        block = ",".join(lines)
        # Rows joined by commas: an empty cell anywhere shows as ",," or at an end. One search
        # spares a scan of every string column.
        empties = width > 1 and (",," in block or block[0] == "," or block[-1] == ",")
        flat = block.split(",")
        obj = self._obj
        pks = flat[self._pk_index::width]
        if "" in pks:
            return None
        # Output columns in schema field order, each as (cells, needs quotes).
        values: dict[str, tuple[list[str], bool]] = {}
        for i, h in self._used:
            col, ftype = flat[i::width], obj.fields[h]
            pattern = {"date-time": DATETIME_RE, "date": DATE_RE}.get(ftype.format or "")
            if ftype.type == "string" and pattern is None:
                quoted, empty = True, empties and "" in col
            else:
                distinct = set(col)
                empty = "" in distinct
                distinct.discard("")
                if ftype.type == "number":
                    ok, quoted = _all_match(distinct, _JSON_NUMBER_RE), False
                elif ftype.type == "boolean":
                    ok, quoted = distinct <= {"true", "false"}, False
                else:
                    ok, quoted = pattern is not None and _all_dates(distinct, pattern, ftype.format or ""), True
                if not ok:
                    return None
            if empty:  # '' -> null; strings get their quotes here, so the column goes unquoted
                col = [f'"{c}"' if c else "null" for c in col] if quoted else [c or "null" for c in col]
                quoted = False
            values[h] = (col, quoted)
        # The record texts: column cells interleaved with the JSON between them, one join.
        parts, pending = [], "{"
        for f in obj.fields:
            lead = ("," if pending != "{" else "") + _encode_str(f) + ":"
            if f not in values:
                pending += lead + "null"
                continue
            quoted = values[f][1]
            parts.append(pending + lead + ('"' if quoted else ""))
            pending = '"' if quoted else ""
        parts.append(pending + "}\n")
        m = len(parts) - 1  # columns per row
        seps = [*parts[1:-1], parts[-1] + parts[0]]
        out = [""] * (2 * m * n)
        for j, f in enumerate(f for f in obj.fields if f in values):
            out[2 * j::2 * m] = values[f][0]
            out[2 * j + 1::2 * m] = [seps[j]] * n
        records = (parts[0] + "".join(out)).split("\n")
        records.pop()  # the dangling start of a next record
        self.rows += n
        return pks, records


class DeleteConverter(_StreamingCsv):
    """A delete file: no header, 1 or 2 columns (primary key, optional datetime)."""

    def __init__(self) -> None:
        super().__init__()
        self._line = 0

    def _convert(self, text: str) -> list[Chunk]:
        pks: list[str] = []
        try:
            for row in _reader(io.StringIO(text, newline="")):
                self._line += 1
                if row == []:
                    continue
                if len(row) > 2:
                    raise CsvFileError(f"line {self._line}: a delete file has 1 or 2 columns, found {len(row)}")
                if row[0] == "":
                    raise CsvFileError(f"line {self._line}: empty primary key")
                if len(row) == 2 and not valid_datetime(row[1]):
                    raise CsvFileError(f"line {self._line}: [{row[1]}] is not a valid date-time")
                pks.append(row[0])
        except csv.Error as exc:
            raise CsvFileError(f"line {self._line + 1}: {exc}") from exc
        self.rows += len(pks)
        return [(pks, [])] if pks else []


def convert(converter: _StreamingCsv, data: bytes, piece: int = 1 << 20) -> list[Chunk]:
    """A whole file through ``converter`` in ``piece``-byte feeds (tests, small files)."""
    out: list[Chunk] = []
    for i in range(0, len(data), piece):
        out += converter.feed(data[i:i + piece])
    return out + converter.close()
