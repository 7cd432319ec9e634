"""agent/records.py as the outbox sees it: encode -> stored bytes -> decode is lossless; table tests."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import RecordError, SchemaError
from agent.records import (
    EVENT_NAMESPACE,
    IDENTITY_FIELDS,
    Reading,
    RecordBuilder,
    decode_json,
    event_id,
    format_time,
    load_schema,
    parse_schema,
)

SCHEMA = load_schema()
BUILDER = RecordBuilder(SCHEMA, site_id="site-1", customer_id="cust-1", agent_version="1.2.3")
METRIC_FIELDS = [f for f in SCHEMA.fields if f.name not in IDENTITY_FIELDS]

_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_text = st.text(max_size=40)


def _value_for(f: Any) -> st.SearchStrategy[Any]:
    if f.type == "number":
        return st.none() | st.integers(-(2**53), 2**53) | _finite
    if f.type == "boolean":
        return st.none() | st.booleans()
    if f.format == "date-time":
        return st.none() | st.integers(0, 253402300799999).map(format_time)
    if f.format == "date":
        return st.none() | st.dates().map(lambda d: f"{d.year:04d}-{d.month:02d}-{d.day:02d}")
    return st.none() | _text


readings = st.builds(
    Reading,
    device_id=st.text(min_size=1, max_size=30),
    time_ms=st.integers(0, 253402300799999),
    source=_text,
    metrics=st.fixed_dictionaries({}, optional={f.name: _value_for(f) for f in METRIC_FIELDS}),
    clock_quality=st.sampled_from(["synced", "restamped", "unsynced"]),
)


@settings(max_examples=300, deadline=None)
@given(readings)
def test_encode_decode_round_trip(reading: Reading) -> None:
    enc = BUILDER.encode(reading)
    decoded = decode_json(enc.payload)
    assert list(decoded) == list(SCHEMA.names)                     # every field, in schema order
    assert decoded["event_id"] == enc.event_id == event_id("site-1", reading.device_id, reading.time_ms)
    assert enc.time_ms == reading.time_ms
    assert decoded["date_time"] == format_time(reading.time_ms)
    assert decoded["device_id"] == reading.device_id and decoded["source"] == reading.source
    for name, value in reading.metrics.items():
        assert decoded[name] == value and type(decoded[name]) is type(value)   # floats survive exactly
    for name in set(SCHEMA.names) - set(reading.metrics) - set(IDENTITY_FIELDS):
        assert decoded[name] is None
    assert enc.payload == json.dumps(decoded, separators=(",", ":"), ensure_ascii=False).encode()   # compact


@pytest.mark.parametrize(("ms", "text"), [
    (0, "1970-01-01T00:00:00.000Z"),
    (1, "1970-01-01T00:00:00.001Z"),
    (999, "1970-01-01T00:00:00.999Z"),
    (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
    (951_782_400_000, "2000-02-29T00:00:00.000Z"),
    (253402300799999, "9999-12-31T23:59:59.999Z"),
])
def test_format_time(ms: int, text: str) -> None:
    assert format_time(ms) == text


def test_event_id_is_deterministic_and_keyed_by_site_device_time() -> None:
    a = event_id("site-1", "inv1", 1000)
    assert a == event_id("site-1", "inv1", 1000)
    assert len({a, event_id("site-2", "inv1", 1000), event_id("site-1", "inv2", 1000),
                event_id("site-1", "inv1", 1001)}) == 4
    # The separator keeps ("a", "bc") and ("ab", "c") apart.
    assert event_id("a", "bc", 1) != event_id("ab", "c", 1)
    metrics = {"ac_power_w": 1.0}
    one = BUILDER.encode(Reading("inv1", 1000, "x", metrics))
    two = RecordBuilder(SCHEMA, "site-1", "other-customer").encode(Reading("inv1", 1000, "y", {"ac_power_w": 2.0}))
    assert one.event_id == two.event_id == a


@given(st.text(), st.text(), st.integers(min_value=0, max_value=2**63))
def test_event_id_is_uuid5_of_the_namespace_and_name(site: str, device: str, ms: int) -> None:
    # event_id writes uuid.uuid5 out by hand; an id that drifted from it would make every replay of
    # an outbox written by an earlier version a new row in Data Cloud instead of an upsert.
    name = f"{site}\x1f{device}\x1f{ms}"
    try:
        expected = str(uuid.uuid5(EVENT_NAMESPACE, name))
    except UnicodeEncodeError:              # a lone surrogate: neither can encode it
        with pytest.raises(UnicodeEncodeError):
            event_id(site, device, ms)
        return
    assert event_id(site, device, ms) == expected


def test_event_id_of_a_known_reading_never_changes() -> None:
    # Computed with uuid.uuid5 by the first release: the ids already in outboxes and in Data Cloud.
    assert event_id("site-1", "inv1", 1000) == "c030f80a-8c27-5e8d-a0a6-d2d8ac7bff73"
    assert uuid.uuid5(uuid.NAMESPACE_URL, "urn:solar-agent:solar_panel_event") == EVENT_NAMESPACE


def test_nan_and_unknown_metrics_are_record_errors() -> None:
    with pytest.raises(RecordError):
        BUILDER.encode(Reading("inv1", 0, "x", {"ac_power_w": float("nan")}))
    with pytest.raises(RecordError):
        BUILDER.encode(Reading("inv1", 0, "x", {"no_such_field": 1}))
    with pytest.raises(RecordError):
        BUILDER.encode(Reading("inv1", 0, "x", {"ac_power_w": "high"}))


def _doc(props: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {n: {"type": "string"} for n in IDENTITY_FIELDS}
    base["date_time"] = {"type": "string", "format": "date-time"}
    base.update(props)
    event = {"type": "object", "properties": base}
    return {"openapi": "3.0.3", "components": {"schemas": {"solar_panel_event": event}}}


@pytest.mark.parametrize(("doc", "match"), [
    ({**_doc({}), "openapi": "3.1.0"}, "3.0"),
    (_doc({"bad__name": {"type": "number"}}), "no '__'"),
    (_doc({"version": {"type": "number"}}), "reserved"),
    (_doc({"nested": {"type": "object", "properties": {}}}), "nested"),
    (_doc({"listy": {"type": "array"}}), "nested"),
    (_doc({"when": {"type": "string", "format": "time"}}), "unsupported"),
    (_doc({"AC_POWER": {"type": "number"}, "ac_power": {"type": "number"}}), "duplicate"),
    ({"openapi": "3.0.3", "components": {"schemas": {"other": {"type": "object", "properties": {}}}}}, "no object"),
])
def test_schema_rule_violations_raise(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(SchemaError, match=match):
        parse_schema(doc)


def test_schema_missing_identity_field_raises() -> None:
    doc = _doc({})
    del doc["components"]["schemas"]["solar_panel_event"]["properties"]["event_id"]
    with pytest.raises(SchemaError, match="event_id"):
        parse_schema(doc)


def test_shipped_schema_is_valid_and_round_trips_as_json() -> None:
    assert SCHEMA.names[0] == "event_id"
    assert json.loads(json.dumps({n: None for n in SCHEMA.names})) == dict.fromkeys(SCHEMA.names)
