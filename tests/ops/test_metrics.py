"""The metrics registry renders text a Prometheus parser reads back exactly."""

from __future__ import annotations

import re

import pytest

from agent.metrics import AgentMetrics, Registry

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            out.append({"n": "\n", "\\": "\\", '"': '"'}[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


_Series = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> tuple[dict[str, tuple[str, str]], dict[_Series, float]]:
    """A small exposition-format 0.0.4 parser: (name -> (type, help), (name, labels) -> value)."""
    meta: dict[str, list[str]] = {}
    samples: dict[_Series, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            meta.setdefault(name, ["", ""])[1] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in ("counter", "gauge"), line
            assert name in meta, "HELP comes before TYPE"
            meta[name][0] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"unparsable line {line!r}"
            raw = m["labels"] or ""
            labels = _LABEL.findall(raw)
            assert "".join(f'{k}="{v}",' for k, v in labels).rstrip(",") == raw, f"bad labels {raw!r}"
            assert m["name"] in meta and meta[m["name"]][0], "TYPE precedes samples"
            key = (m["name"], frozenset((k, _unescape(v)) for k, v in labels))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = float(m["value"])
    return {k: (v[0], v[1]) for k, v in meta.items()}, samples


def test_render_round_trips_through_a_parser() -> None:
    m = AgentMetrics()
    nasty = 'bus0 "north"\\roof\nline2'
    m.received_events_total.inc(source="mqtt:opendtu")
    m.received_events_total.inc(41, source="mqtt:opendtu")
    m.device_errors_total.inc(device=nasty, kind="timeout")
    m.sent_events_total.inc(7, lane="stream")
    m.outbox_bytes.set(1234.5)
    m.oldest_undelivered_seconds.set(3.25)
    m.requests_total.inc(endpoint="stream", status="202")

    meta, samples = parse(m.render())

    p = AgentMetrics.PREFIX
    assert meta[p + "received_events_total"][0] == "counter"
    assert meta[p + "outbox_bytes"] == ("gauge", "Payload bytes waiting in the outbox.")
    assert samples[(p + "received_events_total", frozenset({("source", "mqtt:opendtu")}))] == 42
    assert samples[(p + "device_errors_total", frozenset({("device", nasty), ("kind", "timeout")}))] == 1
    assert samples[(p + "sent_events_total", frozenset({("lane", "stream")}))] == 7
    assert samples[(p + "sent_events_total", frozenset({("lane", "bulk")}))] == 0  # pre-seeded
    assert samples[(p + "outbox_bytes", frozenset())] == 1234.5
    assert samples[(p + "oldest_undelivered_seconds", frozenset())] == 3.25
    assert samples[(p + "outbox_events", frozenset())] == 0
    assert samples[(p + "requests_total", frozenset({("endpoint", "stream"), ("status", "202")}))] == 1
    for stage in ("source", "outbox", "stream", "bulk", "auth", "status"):
        assert (p + "errors_total", frozenset({("stage", stage)})) in samples
    expected = {"received_events_total", "sent_events_total", "errors_total", "events_discarded_total",
                "outbox_events", "outbox_bytes", "oldest_undelivered_seconds", "dead_letters",
                "device_errors_total", "requests_total", "held_events", "rejected_inputs",
                "source_inputs_total", "restarts_total"}
    assert set(meta) == {p + n for n in expected}


def test_help_text_is_escaped() -> None:
    r = Registry()
    r.gauge("g", "first line\nsecond \\ part")
    assert "# HELP g first line\\nsecond \\\\ part\n" in r.render()


def test_misuse_is_refused() -> None:
    r = Registry()
    c = r.counter("c_total", "c", labels=("a",))
    with pytest.raises(ValueError, match="cannot go down"):
        c.inc(-1, a="x")
    with pytest.raises(ValueError, match="expected labels"):
        c.inc(b="x")
    with pytest.raises(ValueError, match="already registered"):
        r.gauge("c_total", "again")
    with pytest.raises(ValueError, match="invalid"):
        r.counter("bad-name", "x")
    assert c.get(a="never") == 0


def test_special_values() -> None:
    r = Registry()
    g = r.gauge("g", "g", labels=("k",))
    g.set(float("inf"), k="a")
    g.set(float("nan"), k="b")
    g.set(-2, k="c")
    text = r.render()
    assert 'g{k="a"} +Inf' in text and 'g{k="b"} NaN' in text and 'g{k="c"} -2' in text
