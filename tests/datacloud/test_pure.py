"""Pure parts of the Data Cloud client: body splitting, backoff, pacing, hints, URL rules, CSV files."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.datacloud import Backoff, JobBudget, Pacer, auth_hint, normalise_url, split
from agent.datacloud._http import parse_retry_after, validation_report
from agent.datacloud.auth import read_private_key
from agent.datacloud.bulk import _CsvSpool
from agent.errors import AuthError
from agent.records import CsvEncoder, load_schema, streaming_body

payload_lists = st.lists(st.binary(min_size=1, max_size=120), max_size=60)


@given(payload_lists, st.integers(min_value=40, max_value=2000))
@settings(max_examples=300, deadline=None)
def test_split_is_exact_ordered_and_within_limit(payloads: list[bytes], limit: int) -> None:
    bodies = split(payloads, limit)
    assert [i for body in bodies for i in body] == list(range(len(payloads)))
    for body in bodies:
        size = len(streaming_body([payloads[i] for i in body]))
        assert size <= limit or len(body) == 1
    # Greedy: the next record would not have fitted into the previous body.
    for prev, nxt in itertools.pairwise(bodies):
        assert len(streaming_body([payloads[i] for i in [*prev, nxt[0]]])) > limit


@given(payload_lists)
@settings(max_examples=200, deadline=None)
def test_streaming_body_is_the_records_in_a_data_array(payloads: list[bytes]) -> None:
    # The Ingestion API's streaming body: {"data": [record, ...]} (datacloud-api.md [INS]); built
    # in one join, it must still be exactly the envelope around the comma-separated records.
    assert streaming_body(payloads) == b'{"data":[' + b",".join(payloads) + b"]}"
    records = [{"n": i} for i in range(len(payloads))]
    assert json.loads(streaming_body([json.dumps(r).encode() for r in records])) == {"data": records}


def test_split_boundary_counts_envelope_and_commas() -> None:
    p = [b"x" * 10] * 3
    exact = len(streaming_body(p))  # 11 + 30 + 2 commas
    assert split(p, exact) == [[0, 1, 2]]
    assert split(p, exact - 1) == [[0, 1], [2]]
    assert split([], 100) == []
    assert split([b"y" * 500], 100) == [[0]]  # an oversized record still gets its own body


def test_backoff_capped_full_jitter_and_reset() -> None:
    b = Backoff(1.0, 8.0, seed=7)
    delays = [b.next_delay() for _ in range(10)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8, 8, 8]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[4:]) > 4  # it does reach past the early ceilings
    assert Backoff(1.0, 8.0, seed=7).next_delay() == delays[0]  # seedable
    b.reset()
    assert b.attempt == 0 and b.next_delay() <= 1.0


def test_backoff_huge_attempt_does_not_overflow() -> None:
    b = Backoff(0.5, 60.0, rng=random.Random(1))
    b.attempt = 10_000
    assert 0 <= b.next_delay() <= 60.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, d: float) -> None:
        self.slept.append(d)
        self.t += d


async def test_pacer_spaces_requests_and_backs_off() -> None:
    clock = FakeClock()
    p = Pacer(10.0, min_rps=1.0, max_rps=20.0, increase_rps=1.0, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await p.wait()
    assert clock.slept == pytest.approx([0.1] * 4)
    p.on_throttle(None)
    assert p.rate == 5.0
    p.on_throttle(30.0)  # Retry-After holds everything until then
    assert p.rate == 2.5
    start = clock.t
    await p.wait()
    assert clock.t - start == pytest.approx(30.0, abs=0.5)
    for _ in range(100):
        p.on_success()
    assert p.rate == 20.0  # additive increase, capped
    for _ in range(20):
        p.on_throttle(None)
    assert p.rate == 1.0  # multiplicative decrease, floored


def test_pacer_reserves_slots_for_concurrent_callers() -> None:
    clock = FakeClock()
    p = Pacer(4.0, clock=clock, sleep=clock.sleep)
    assert [p.reserve() for _ in range(4)] == pytest.approx([0, 0.25, 0.5, 0.75])


async def test_job_budget_hourly_and_concurrent() -> None:
    clock = FakeClock()
    budget = JobBudget(per_hour=3, concurrent=2, clock=clock, sleep=clock.sleep)
    await budget.acquire()
    await budget.acquire()
    assert budget.delay() is None  # both slots busy
    budget.release()
    budget.release()
    await budget.acquire()
    budget.release()
    assert budget.delay() == pytest.approx(3600.0)
    await budget.acquire()  # waits out the hour on the fake clock
    assert clock.slept == [pytest.approx(3600.0)]


@pytest.mark.parametrize(("description", "needle"), [
    ("invalid_grant user hasn't approved this consumer", "pre-authorized"),
    ("invalid_grant audience is invalid", "https://test.salesforce.com"),
    ("invalid_grant expired authorization code", "NTP"),
    ("invalid_grant invalid assertion", "NTP"),
    ("invalid_grant invalid assertion", "certificate"),
    ("invalid_grant invalid signature", "certificate"),
    ("invalid_client_id client identifier invalid", "consumer key"),
])
def test_auth_hints(description: str, needle: str) -> None:
    assert needle in auth_hint(description)


@pytest.mark.parametrize(("url", "expected"), [
    ("abc.c360a.salesforce.com", "https://abc.c360a.salesforce.com"),
    ("https://abc.c360a.salesforce.com/", "https://abc.c360a.salesforce.com"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("http://localhost:1", "http://localhost:1"),
    ("http://[::1]:9", "http://[::1]:9"),
])
def test_normalise_url(url: str, expected: str) -> None:
    assert normalise_url(url, "x") == expected


@pytest.mark.parametrize("url", ["http://login.salesforce.com", "http://10.0.0.5", "ftp://x", "https://"])
def test_normalise_url_refuses(url: str) -> None:
    with pytest.raises(AuthError) as info:
        normalise_url(url, "datacloud.login_url")
    assert info.value.hint


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 2099 00:00:10 GMT", now=4070908800.0) == pytest.approx(10.0)


def test_validation_report_shapes() -> None:
    body = json.dumps({"details": {"validationReport": {"a": 1}}}).encode()
    assert validation_report(body) == [{"a": 1}]
    assert validation_report(b"<html>") == []


def test_private_key_mode_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    with pytest.raises(AuthError) as info:
        read_private_key(key)
    assert str(key) in info.value.message and "chmod 600" in (info.value.hint or "")
    key.chmod(0o600)
    assert read_private_key(key).startswith(b"-----BEGIN")
    with pytest.raises(AuthError, match="cannot read"):
        read_private_key(tmp_path / "missing.pem")


def _record(i: int) -> bytes:
    return json.dumps({"event_id": f"id-{i}", "date_time": "2024-01-01T00:00:00.000Z",
                       "operating_state": "a,\"quoted\"\nline" if i % 7 == 0 else "MPPT",
                       "ac_power_w": i * 1.5}).encode()


@given(st.integers(min_value=0, max_value=400), st.integers(min_value=1, max_value=40))
@settings(max_examples=30, deadline=None)
def test_csv_spool_files_are_bounded_and_complete(n: int, kb: int) -> None:
    import csv
    import io
    encoder = CsvEncoder(load_schema())
    spool = _CsvSpool(encoder, 600 + kb * 200, None)
    payloads = [_record(i) for i in range(n)]
    files: list[bytes] = []
    start = 0
    while start < len(payloads):
        written, nbytes, full = spool.add(payloads, start)
        assert nbytes == sum(len(p) for p in payloads[start:start + written])
        start += written
        if full:
            f = spool.take()
            assert f is not None
            files.append(f.read())
            f.close()
    f = spool.take()
    if f is not None:
        files.append(f.read())
        f.close()
    ids = []
    for data in files:
        assert len(data) <= spool.max_bytes
        rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
        assert rows[0] == list(encoder.columns)
        assert len(rows) > 1
        ids += [r[0] for r in rows[1:]]
    assert ids == [f"id-{i}" for i in range(n)]
