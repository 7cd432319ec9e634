"""Streaming bulk CSV conversion: the fast path gives the reference path's bytes and errors."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.emulator.bulkcsv import Chunk, CsvFileError, DeleteConverter, UpsertConverter, convert
from agent.emulator.schema import ObjectSchema, default_schema_path, load_schema
from agent.emulator.store import StagedJob

OBJ: ObjectSchema = load_schema(default_schema_path(), "event_id")["solar_panel_event"]
FIELDS = list(OBJ.fields)


class Traced(UpsertConverter):
    """Counts the blocks each path converted."""

    fast_blocks = 0
    reference_blocks = 0

    def _fast(self, text: str) -> Chunk | None:
        out = super()._fast(text)
        self.fast_blocks += out is not None
        self.reference_blocks += out is None
        return out


class ReferenceOnly(UpsertConverter):
    def _fast(self, text: str) -> Chunk | None:
        return None


def run(conv: UpsertConverter, data: bytes, piece: int) -> tuple[list[str], list[str]] | str:
    try:
        chunks = convert(conv, data, piece)
    except CsvFileError as exc:
        return f"error: {exc}"
    return [k for pks, _ in chunks for k in pks], [r for _, recs in chunks for r in recs]


def to_csv(header: list[str], rows: list[list[str]], newline: str = "\r\n") -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator=newline).writerows([header, *rows])
    return buf.getvalue().encode()


def plain_rows(n: int) -> list[list[str]]:
    return [[f"ev-{i}", "2024-05-01T00:00:00.123Z", "site-1", f"{i}.5", str(i * 7), "", "MPPT"] for i in range(n)]


PLAIN_HEADER = ["event_id", "date_time", "site_id", "ac_power_w", "ac_energy_wh", "temperature_c", "operating_state"]


def test_plain_file_goes_fast_and_matches_reference() -> None:
    data = to_csv(PLAIN_HEADER, plain_rows(5000))
    traced = Traced(OBJ, reject_unknown=True)
    fast = run(traced, data, 8192)
    assert traced.fast_blocks > 1 and traced.reference_blocks == 0
    assert fast == run(ReferenceOnly(OBJ, reject_unknown=True), data, 8192)
    assert not isinstance(fast, str)
    rec = json.loads(fast[1][7])
    assert list(rec) == FIELDS  # schema order, absent fields null
    assert rec["event_id"] == "ev-7" and rec["ac_power_w"] == 7.5 and rec["temperature_c"] is None
    assert rec["date_time"] == "2024-05-01T00:00:00.123Z" and rec["device_id"] is None


@pytest.mark.parametrize(("bad", "expected"), [
    ("abc", "error: row 4001: #/ac_power_w: [abc] is not a number"),
    ("inf", "error: row 4001: #/ac_power_w: [inf] is not a finite number"),
    ("nan", "error: row 4001: #/ac_power_w: [nan] is not a finite number"),
    ("01", 1.0),  # not a JSON spelling, but a number: stored as one
])
def test_odd_number_among_many_distinct_values(bad: str, expected: object) -> None:
    rows = plain_rows(5000)
    rows[4000][3] = bad
    data = to_csv(PLAIN_HEADER, rows)
    out = run(UpsertConverter(OBJ, reject_unknown=True), data, 1 << 20)
    assert out == run(ReferenceOnly(OBJ, reject_unknown=True), data, 4096)
    if isinstance(expected, str):
        assert out == expected
    else:
        assert not isinstance(out, str) and json.loads(out[1][4000])["ac_power_w"] == expected


def test_non_json_spellings_are_converted_like_the_reference() -> None:
    rows = plain_rows(200)
    rows[150][3] = "+1.50"
    data = to_csv(PLAIN_HEADER, rows)
    out = run(UpsertConverter(OBJ, reject_unknown=True), data, 1000)
    assert out == run(ReferenceOnly(OBJ, reject_unknown=True), data, 1000)
    assert not isinstance(out, str) and json.loads(out[1][150])["ac_power_w"] == 1.5


def test_quoted_newline_split_across_feeds() -> None:
    data = to_csv(["event_id", "site_id"], [["a", "x\r\ny"], ["b", 'say "hi"'], ["c", "z"]])
    for piece in range(1, len(data) + 1):
        out = run(UpsertConverter(OBJ, reject_unknown=True), data, piece)
        assert not isinstance(out, str)
        assert out[0] == ["a", "b", "c"]
        assert [json.loads(r)["site_id"] for r in out[1]] == ["x\r\ny", 'say "hi"', "z"]


def test_delete_file_streams_across_feeds() -> None:
    data = b'k0\n"k,1","2024-05-01T00:00:00.000Z"\n\nk2\n'
    for piece in (1, 3, 100):
        chunks = convert(DeleteConverter(), data, piece)
        assert [k for pks, _ in chunks for k in pks] == ["k0", "k,1", "k2"]
    with pytest.raises(CsvFileError, match="line 2"):
        convert(DeleteConverter(), b"k0\nk1,yesterday\n", 4)


def test_staged_job_ignores_a_batch_of_a_rolled_back_file(tmp_path: Path) -> None:
    staged = StagedJob(tmp_path / "s.sqlite", "upsert")
    stale = staged.begin_file()
    staged.add(stale, [(["a"], ["{}"])])
    staged.rollback_file()
    current = staged.begin_file()
    staged.add(stale, [(["late"], ["{}"])])  # a block still converting when its file was refused
    staged.add(current, [(["b"], ["{}"])])
    assert staged.commit_file() == 1 and staged.rows == 1
    staged.drop()
    assert not (tmp_path / "s.sqlite").exists()


# --- property: any file, any feed size, both paths agree ---------------------------------

_CELL = st.one_of(
    st.sampled_from(["", "0", "1", "-2.5", "1e3", "1.", ".5", "+1", "007", "true", "False", "x", "a b", "é",
                     "2024-05-01T00:00:00Z", "2024-05-01T00:00:00.1234Z", "2024-05-01", "1,2", 'q"q', "back\\slash",
                     "tab\there", "line\nbreak", "cr\rx"]),
    st.integers(-10**12, 10**12).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
)


@st.composite
def _files(draw: st.DrawFn) -> tuple[bytes, int]:
    header = draw(st.lists(st.sampled_from([*FIELDS, "nope"]), min_size=1, max_size=6, unique=True))
    if draw(st.booleans()) and "event_id" not in header:
        header.append("event_id")
    rows = draw(st.lists(st.lists(_CELL, min_size=len(header), max_size=len(header)), max_size=30))
    if rows and draw(st.booleans()):  # many rows of one shape: the many-distinct-values checks
        rows = rows + [[c if i else f"{c}{k}" for i, c in enumerate(rows[0])] for k in range(100)]
    if rows and draw(st.booleans()):
        rows[draw(st.integers(0, len(rows) - 1))].append("extra")
    data = to_csv(header, rows, draw(st.sampled_from(["\r\n", "\n"])))
    if draw(st.booleans()):
        data = b"\r\n" + data.replace(b"\n", b"\n\n", 1)  # blank lines are skipped
    return data, draw(st.integers(1, 300))


@settings(max_examples=300, deadline=None)
@given(_files(), st.booleans())
def test_fast_path_equals_reference(file: tuple[bytes, int], reject_unknown: bool) -> None:
    data, piece = file
    assert run(UpsertConverter(OBJ, reject_unknown=reject_unknown), data, piece) == run(
        ReferenceOnly(OBJ, reject_unknown=reject_unknown), data, piece)
