"""CsvEncoder's fast path writes the same bytes as json.loads + csv.writer, for any record.

The reference below is the encoder as it was before the fast path (kept here, independent of
agent.records, so a change on either side shows). Hypothesis draws records with every value kind
the schema allows and strings with quotes, commas, CR/LF, control characters and any unicode.
"""

from __future__ import annotations

import csv
import io
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.records import CsvEncoder, Reading, RecordBuilder, encode_json, load_schema

SCHEMA = load_schema()
COLUMNS = SCHEMA.names


def reference_rows(payloads: list[bytes]) -> bytes:
    """json.loads each payload, pick the columns, csv.writer with CRLF (the pre-fast-path encoder)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for p in payloads:
        rec = json.loads(p)
        cells: list[Any] = []
        for c in COLUMNS:
            v = rec.get(c)
            cells.append("" if v is None else ("true" if v is True else "false" if v is False else v))
        writer.writerow(cells)
    return buf.getvalue().encode()


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
)
# Strings JSON writes without an escape (the fast path's domain): commas, spaces, "null", digits,
# non-ASCII, DEL, U+2028 (json.dumps leaves it raw; csv.writer does not quote it).
plain_text = st.lists(st.sampled_from([",", "a", " ", "é", "☀", "\u2028", "\x7f", "null", "1.5", "true", ""]),
                      max_size=6).map("".join)
# Strings that need an escape in JSON, quotes in CSV, or both.
any_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(['"', ",", "\r", "\n", "a", "\\", "\x00", "\t"]), max_size=6).map("".join),
)


def _in_schema_order(rec: dict[str, Any]) -> dict[str, Any]:
    """As RecordBuilder builds them (fixed_dictionaries does not keep the key order)."""
    return {c: rec[c] for c in COLUMNS}


plain_records = st.fixed_dictionaries({c: st.one_of(scalars, plain_text) for c in COLUMNS}).map(_in_schema_order)
records = st.fixed_dictionaries(
    {c: st.one_of(scalars, plain_text, plain_text, any_text) for c in COLUMNS}).map(_in_schema_order)


@settings(max_examples=200, deadline=None)
@given(st.lists(plain_records, min_size=1, max_size=8))
def test_fast_path_records_match_the_reference(recs: list[dict[str, Any]]) -> None:
    payloads = [encode_json(r) for r in recs]
    enc = CsvEncoder(SCHEMA)
    assert all(enc._fast.fullmatch(p) for p in payloads), "these records must take the fast path"
    assert enc.rows(payloads) == reference_rows(payloads)


@settings(max_examples=150, deadline=None)
@given(st.lists(records, max_size=8))
def test_any_records_in_schema_order_match_the_reference(recs: list[dict[str, Any]]) -> None:
    payloads = [encode_json(r) for r in recs]
    assert CsvEncoder(SCHEMA).rows(payloads) == reference_rows(payloads)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(records, st.randoms(use_true_random=False), st.booleans()), min_size=1, max_size=6))
def test_mixed_batches_keep_order_across_fast_and_slow_rows(
        items: list[tuple[dict[str, Any], random.Random, bool]]) -> None:
    """Reordered keys, missing keys and extra keys take the slow path, in place within the batch."""
    payloads = []
    for rec, rnd, drop in items:
        keys = list(rec)
        rnd.shuffle(keys)
        if drop:
            keys = keys[1:]
        mangled = {k: rec[k] for k in keys}
        if rnd.random() < 0.3:
            mangled["not_a_column"] = "x"
        payloads.append(encode_json(mangled))
    assert CsvEncoder(SCHEMA).rows(payloads) == reference_rows(payloads)


def _builder_payload(**metrics: Any) -> bytes:
    builder = RecordBuilder(SCHEMA, site_id="site-1", customer_id="001XX", agent_version="0.1.0")
    return builder.encode(Reading("inv-1", 1_700_000_000_123, "sunspec-tcp", metrics)).payload


def test_builder_records_take_the_fast_path() -> None:
    """What the outbox stores is recognised by the fast pattern (else the speed-up is gone)."""
    enc = CsvEncoder(SCHEMA)
    plain = _builder_payload(ac_power_w=4321.5, event_flags=0, operating_state="MPPT")
    quoted = _builder_payload(ac_power_w=1e16, operating_state="MPPT, derated")
    for p in (plain, quoted):
        assert enc._fast.fullmatch(p) is not None
    assert enc.rows([plain, quoted]) == reference_rows([plain, quoted])
    assert b'"MPPT, derated"' in enc.rows([quoted])
    assert b",1e+16," in enc.rows([quoted])


@pytest.mark.parametrize("payload", [
    b'{"event_id":"a"}',                                   # missing columns
    encode_json({c: 'say "hi"' for c in COLUMNS}),         # escaped quote
    encode_json({c: "line\r\nbreak" for c in COLUMNS}),    # escaped CR/LF
    json.dumps({c: 1.5 for c in COLUMNS}).encode(),        # not compact (spaces)
    encode_json({c: "ünïcödé ☀" for c in COLUMNS}),
])
def test_edge_payloads_match_the_reference(payload: bytes) -> None:
    assert CsvEncoder(SCHEMA).rows([payload]) == reference_rows([payload])


def test_header_and_empty_batch() -> None:
    enc = CsvEncoder(SCHEMA)
    assert enc.header() == (",".join(COLUMNS) + "\r\n").encode()
    assert enc.rows([]) == b""


def test_invalid_json_still_raises() -> None:
    with pytest.raises(json.JSONDecodeError):
        CsvEncoder(SCHEMA).rows([b'{"event_id":"a",'])
