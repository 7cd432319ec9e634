"""A tiny in-process metrics registry rendered in the Prometheus text format 0.0.4.

No client library: the agent needs counters and gauges with labels, one process, one event loop.
Updates are plain dict operations (no awaits), so they are atomic with respect to the loop; a thread
(the outbox writer) must hand values back to the loop rather than touch the registry itself.

Names follow Vector's component spec (``received_events_total``, ``errors_total{stage}``, ...) with
the ``solar_agent_`` namespace prefix added by :class:`AgentMetrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "CONTENT_TYPE",
    "DISCARD_REASONS",
    "LANES",
    "STAGES",
    "AgentMetrics",
    "Counter",
    "Gauge",
    "Registry",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LabelKey = tuple[str, ...]

LANES = ("stream", "bulk")
STAGES = ("source", "outbox", "stream", "bulk", "auth", "status")
DISCARD_REASONS = ("outbox_full", "bad_record", "dead_letter")


def _escape_label(value: str) -> str:
    # The exposition format escapes exactly these three in label values.
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _check_name(name: str) -> None:
    ok = bool(name) and not name[0].isdigit() and all(c.isalnum() or c in "_:" for c in name)
    if not ok or not name.isascii():
        raise ValueError(f"invalid metric or label name {name!r}")


@dataclass(eq=False)
class _Metric:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    _values: dict[_LabelKey, float] = field(default_factory=dict, init=False, repr=False)

    kind: Literal["counter", "gauge"] = field(default="counter", init=False)

    def __post_init__(self) -> None:
        _check_name(self.name)
        for label in self.labels:
            _check_name(label)
        if not self.labels:
            # A metric without labels always has its one sample, so a scrape shows 0, not nothing.
            self._values[()] = 0.0

    def _key(self, labels: dict[str, str]) -> _LabelKey:
        if set(labels) != set(self.labels):
            raise ValueError(f"{self.name}: expected labels {self.labels}, got {tuple(sorted(labels))}")
        return tuple(str(labels[name]) for name in self.labels)

    def get(self, **labels: str) -> float:
        """The current value of one label set (0 when never touched)."""
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[tuple[dict[str, str], float]]:
        for key, value in sorted(self._values.items()):
            yield dict(zip(self.labels, key, strict=True)), value

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples():
            if labels:
                body = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
                lines.append(f"{self.name}{{{body}}} {_format_value(value)}")
            else:
                lines.append(f"{self.name} {_format_value(value)}")
        return "\n".join(lines) + "\n"


@dataclass(eq=False)
class Counter(_Metric):
    """A monotonically increasing count; ``inc`` refuses negative steps."""

    kind: Literal["counter", "gauge"] = field(default="counter", init=False)

    def sync(self, total: float, **labels: str) -> None:
        """Mirror a count kept elsewhere (a source's per-device error counters).

        A smaller total than before is a reset (a config reload built new sources); Prometheus'
        rate() treats a counter that goes down exactly so.
        """
        self._values[self._key(labels)] = float(total)

    def inc(self, n: float = 1, **labels: str) -> None:
        if n < 0:
            raise ValueError(f"{self.name}: a counter cannot go down (inc {n})")
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + n


@dataclass(eq=False)
class Gauge(_Metric):
    """A value that goes up and down (backlog size, age of the oldest row)."""

    kind: Literal["counter", "gauge"] = field(default="gauge", init=False)

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = float(value)

    def inc(self, n: float = 1, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + n


class Registry:
    """Owns the metrics of one process, in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name!r} is already registered")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labels: Iterable[str] = ()) -> Counter:
        metric = Counter(name, help, tuple(labels))
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labels: Iterable[str] = ()) -> Gauge:
        metric = Gauge(name, help, tuple(labels))
        self._add(metric)
        return metric

    def render(self) -> str:
        """All metrics in the text exposition format 0.0.4."""
        return "".join(metric.render() for metric in self._metrics.values())


class AgentMetrics:
    """Every metric the agent exports, created once on one registry.

    Label values used by the agent: ``lane`` stream|bulk; ``stage`` source|outbox|stream|bulk|auth;
    ``reason`` outbox_full|bad_record|dead_letter; ``kind`` timeout|protocol|payload|connection.
    """

    PREFIX = "solar_agent_"

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry or Registry()
        r, p = self.registry, self.PREFIX
        self.received_events_total = r.counter(
            p + "received_events_total", "Readings accepted into the outbox, per source.", ("source",))
        self.sent_events_total = r.counter(
            p + "sent_events_total", "Records Data Cloud accepted, per delivery lane.", ("lane",))
        self.errors_total = r.counter(
            p + "errors_total", "Errors per pipeline stage.", ("stage",))
        self.events_discarded_total = r.counter(
            p + "events_discarded_total", "Records that will never be delivered, by reason.", ("reason",))
        self.outbox_events = r.gauge(p + "outbox_events", "Records waiting in the outbox.")
        self.outbox_bytes = r.gauge(p + "outbox_bytes", "Payload bytes waiting in the outbox.")
        self.oldest_undelivered_seconds = r.gauge(
            p + "oldest_undelivered_seconds", "Age of the oldest record still in the outbox.")
        self.dead_letters = r.gauge(p + "dead_letters", "Records in the dead-letter table.")
        self.held_events = r.gauge(
            p + "held_events", "Readings held until the clock is synchronised (not yet in the queue).")
        self.rejected_inputs = r.gauge(
            p + "rejected_inputs", "Inputs recorded in the rejected_inputs table (capped, newest kept).")
        self.source_inputs_total = r.counter(
            p + "source_inputs_total",
            "Inputs (MQTT messages) per source and outcome: reading, or why none came of it.",
            ("source", "outcome"))
        self.restarts_total = r.counter(
            p + "restarts_total", "Restarts of a supervised component after a failure.", ("component",))
        self.device_errors_total = r.counter(
            p + "device_errors_total", "Device read failures, per device and kind.", ("device", "kind"))
        self.requests_total = r.counter(
            p + "requests_total", "HTTP requests to Data Cloud, per endpoint and status.",
            ("endpoint", "status"))
        # Known label values start at 0 so a dashboard's rate() sees the series before the first event.
        for lane in LANES:
            self.sent_events_total.inc(0, lane=lane)
        for stage in STAGES:
            self.errors_total.inc(0, stage=stage)
        for reason in DISCARD_REASONS:
            self.events_discarded_total.inc(0, reason=reason)

    def render(self) -> str:
        return self.registry.render()
