"""Date and date-time values: the documented format yyyy-MM-ddTHH:mm:ss.SSSZ ([SCH] "Requirements
for Ingestion API Schema File", [GS]) names real instants only. The bulk path judges a column with a
few searches over all its values (calendar_ok); it must agree with the per-value rule everywhere."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.emulator.schema import calendar_ok, valid_date, valid_datetime
from tests.fuzz import examples


def _n(k: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=k, max_size=k)


# Every string of the date-time *shape*, most of them impossible instants.
shaped_datetimes = st.builds(
    lambda y, mo, d, h, mi, s, ms: f"{y}-{mo}-{d}T{h}:{mi}:{s}{ms}Z",
    _n(4), st.sampled_from([f"{m:02d}" for m in range(0, 16)]) | _n(2),
    st.sampled_from([f"{d:02d}" for d in range(0, 33)]) | _n(2),
    st.sampled_from([f"{h:02d}" for h in range(0, 26)]) | _n(2), _n(2), _n(2),
    st.sampled_from(["", ".5", ".25", ".999"]),
)
real_datetimes = st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)).map(
    lambda t: f"{t.year:04d}-" + t.strftime("%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z")


@pytest.mark.fuzz
@settings(max_examples=examples(500), deadline=None)
@given(st.lists(shaped_datetimes | real_datetimes, min_size=1, max_size=30))
def test_column_rule_equals_the_value_rule(values: list[str]) -> None:
    assert calendar_ok(values, "date-time") == all(valid_datetime(v) for v in values)
    dates = [v[:10] for v in values]
    assert calendar_ok(dates, "date") == all(valid_date(d) for d in dates)


@pytest.mark.fuzz
@settings(max_examples=examples(300), deadline=None)
@given(real_datetimes)
def test_every_real_instant_is_valid(value: str) -> None:
    assert valid_datetime(value) and calendar_ok([value], "date-time")


def test_table() -> None:
    good = ["2024-02-29T00:00:00Z", "2000-02-29T23:59:59.999Z", "0001-01-01T00:00:00Z", "2024-12-31T23:59:59.1Z"]
    bad = ["2024-13-01T00:00:00Z", "2024-00-10T00:00:00Z", "2024-05-32T00:00:00Z", "2024-05-00T00:00:00Z",
           "2024-05-01T24:00:00Z", "2024-05-01T23:60:00Z", "2024-05-01T23:59:60Z", "2023-02-29T00:00:00Z",
           "1900-02-29T00:00:00Z", "2024-02-30T00:00:00Z", "2024-04-31T00:00:00Z", "0000-01-01T00:00:00Z"]
    for v in good:
        assert valid_datetime(v) and calendar_ok([v], "date-time"), v
    for v in bad:
        assert not valid_datetime(v) and not calendar_ok([*good, v], "date-time"), v
