"""Golden-folder cases for every MQTT profile (tests/cases/mqtt/<profile>/<case>/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paho.mqtt.client import topic_matches_sub

from agent.config import MqttConfig
from agent.errors import ConfigError, PayloadError
from agent.records import IDENTITY_FIELDS, load_schema
from agent.sources.profiles import (
    MALFORMED,
    NO_READING_REASONS,
    PROFILES,
    UNRECOGNISED_TOPIC,
    is_discovery_topic,
    is_write_topic,
)
from agent.sources.profiles.opendtu import OpenDtuDecoder

CASES = Path(__file__).parent.parent / "cases" / "mqtt"
BASE_MS = 1_732_860_000_000
METRICS = set(load_schema().names) - set(IDENTITY_FIELDS)
READING = "reading"            # the outcome of a message that fed a reading (as the MQTT source counts it)
OUTCOMES = (READING, *NO_READING_REASONS)


def _cases() -> list[Path]:
    return sorted(p for p in CASES.glob("*/*") if (p / "input.jsonl").exists())


def _cfg(profile: str, extra: dict[str, object]) -> MqttConfig:
    kw = dict(extra)
    for key in ("topics", "fields"):
        if key in kw:
            kw[key] = tuple(tuple(x) if isinstance(x, list) else x for x in kw[key])  # type: ignore[union-attr]
    return MqttConfig(name="case", url="mqtt://127.0.0.1", profile=profile, **kw)  # type: ignore[arg-type]


def _messages(case: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (case / "input.jsonl").read_text().splitlines()]


def _payload(msg: dict[str, object]) -> bytes:
    return bytes.fromhex(str(msg["payload_hex"])) if "payload_hex" in msg else str(msg["payload"]).encode()


def test_every_profile_has_cases() -> None:
    assert {p.parent.name for p in _cases()} == set(PROFILES)


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_case_cites_its_source(case: Path) -> None:
    source = case / "SOURCE.md"
    assert source.exists(), f"{case}: every corpus case names where its frames come from (SOURCE.md)"
    assert len(source.read_text().split()) >= 20


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_case(case: Path) -> None:
    profile = case.parent.name
    cfg_file = case / "config.json"
    cfg = _cfg(profile, json.loads(cfg_file.read_text()) if cfg_file.exists() else {})
    decoder = PROFILES[profile].new_decoder(cfg)
    got, errors, tags, outcomes = [], 0, [], []
    last = BASE_MS
    messages = _messages(case)
    for n, msg in enumerate(messages):
        last = BASE_MS + int(str(msg["t"]))
        tags.append(n)
        try:
            got += decoder.feed(str(msg["topic"]), _payload(msg), last, tag=n)
            outcomes.append(decoder.outcome or READING)
        except PayloadError:
            errors += 1
            outcomes.append(MALFORMED)
    got += decoder.tick(last + 10_000)
    expected = [json.loads(x) for x in (case / "expected.jsonl").read_text().splitlines()]
    assert [{"device_id": r.device_id, "time_ms": r.time_ms, "metrics": dict(r.metrics)} for r in got] == expected
    errs = case / "errors"
    assert errors == (int(errs.read_text()) if errs.exists() else 0)
    want = [msg.get("outcome") for msg in messages]
    assert all(o in OUTCOMES for o in want), f"every input line names its outcome, one of {OUTCOMES}"
    assert [(m["topic"], o) for m, o in zip(messages, outcomes, strict=True)] == \
        [(m["topic"], o) for m, o in zip(messages, want, strict=True)]
    assert sorted(decoder.release()) == tags, "every message must be released for acking"
    assert all(r.source == f"mqtt-{profile}" for r in got)
    assert all(set(r.metrics) <= METRICS for r in got)


@pytest.mark.parametrize("case", [c for c in _cases() if c.parent.name != "generic"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_devices_own_traffic_is_never_unrecognised(case: Path) -> None:
    """What a supported device publishes is a reading, or known and left out for a reason; never unknown."""
    assert [m["topic"] for m in _messages(case) if m.get("outcome") == UNRECOGNISED_TOPIC] == []


@pytest.mark.parametrize("profile", [p for p in PROFILES if p != "generic"])
def test_another_familys_traffic_is_unrecognised(profile: str) -> None:
    """A feed with the wrong profile counts every message as unrecognised_topic (health then names one), and
    decodes none of them: no reading, no malformed payload. Commands and discovery documents stay ignored."""
    cfg = MqttConfig(name="case", url="mqtt://h", profile=profile,  # type: ignore[arg-type]
                     portal_id="e0ff50a097c0" if profile == "victron" else "")
    decoder = PROFILES[profile].new_decoder(cfg)
    seen = 0
    for case in _cases():
        if case.parent.name in (profile, "generic"):
            continue
        for msg in _messages(case):
            topic = str(msg["topic"])
            assert decoder.feed(topic, _payload(msg), BASE_MS, tag=None) == [], topic
            known = is_write_topic(topic) or is_discovery_topic(topic)
            assert decoder.outcome == ("ignored" if known else UNRECOGNISED_TOPIC), topic
            seen += 1
    assert decoder.tick(BASE_MS + 60_000) == []
    assert seen > 100


def test_tags_are_held_until_the_cycle_is_emitted() -> None:
    d = OpenDtuDecoder()
    d.feed("solar/114182912345/status/last_update", b"1732860000", BASE_MS, tag="lu")
    d.feed("solar/114182912345/0/power", b"1", BASE_MS, tag="p")
    d.feed("solar/114182912345/name", b"x", BASE_MS, tag="name")
    assert d.release() == ["name"]              # contributed nothing: ack right away
    out = d.feed("solar/114182912345/status/last_update", b"1732860005", BASE_MS + 5000, tag="lu2")
    assert [r.metrics for r in out] == [{"ac_power_w": 1.0}]
    assert d.release() == ["lu", "p"]           # ack after `out` is committed; lu2 is held by the next cycle
    d.reset()
    assert d.release() == [] and d.tick(BASE_MS + 60_000) == []


def test_idle_flush_keeps_the_cycle_whole() -> None:
    """A cycle flushed while quiet and then continued is re-emitted with the union (same event id)."""
    d = OpenDtuDecoder(idle_ms=1000)
    d.feed("solar/114182912345/status/last_update", b"1732860000", BASE_MS)
    d.feed("solar/114182912345/0/power", b"1", BASE_MS)
    first = d.tick(BASE_MS + 1500)
    d.feed("solar/114182912345/0/voltage", b"230", BASE_MS + 1600)
    second = d.tick(BASE_MS + 3000)
    assert [r.metrics for r in first] == [{"ac_power_w": 1.0}]
    assert [(r.time_ms, r.metrics) for r in second] == [(1732860000000, {"ac_power_w": 1.0, "ac_voltage_v": 230.0})]


@pytest.mark.parametrize(("topic", "write"), [
    ("solar/114182912345/cmd/limit_persistent_relative", True),
    ("W/e0ff50a097c0/vebus/257/Hub4/L1/AcPowerSetpoint", True),
    ("R/e0ff50a097c0/keepalive", True),
    ("cmnd/tasmota_5A9AE8/Power", True),
    ("solar_assistant/inverter_1/work_mode_priority/set", True),
    ("shellypro3em-08f9e0e67204/rpc", True),
    ("shellypro3em-08f9e0e67204/events/rpc", False),
    ("solar/114182912345/0/power", False),
    ("N/e0ff50a097c0/system/0/Dc/Pv/Power", False),
])
def test_read_only_filter(topic: str, write: bool) -> None:
    assert is_write_topic(topic) is write
    assert PROFILES["opendtu"].read_only(topic) is not write


def test_default_topics() -> None:
    def cfg(profile: str, **kw: object) -> MqttConfig:
        return MqttConfig(name="n", url="mqtt://h", profile=profile, **kw)  # type: ignore[arg-type]
    assert PROFILES["opendtu"].default_topics(cfg("opendtu")) == ["solar/#"]
    assert PROFILES["victron"].default_topics(cfg("victron", portal_id="abc")) == ["N/abc/#"]
    assert PROFILES["opendtu"].default_topics(cfg("opendtu", topics=("dtu1/#",))) == ["dtu1/#"]
    with pytest.raises(ConfigError, match="topics"):
        PROFILES["generic"].default_topics(cfg("generic", fields=(("ac_power_w", "W"),)))
    with pytest.raises(ConfigError, match="not a metric"):
        PROFILES["generic"].new_decoder(cfg("generic", topics=("a/+",), fields=(("watts", "W"),)))


@pytest.mark.parametrize("case", [c for c in _cases() if c.parent.name != "generic"],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_profile_recognises_its_topics_and_no_other_profile_does(case: Path) -> None:
    """``recognises`` (for commissioning) tells the families apart on every topic of the corpus."""
    profile = case.parent.name
    for line in (case / "input.jsonl").read_text().splitlines():
        topic = json.loads(line)["topic"]
        if is_write_topic(topic) or topic.startswith("homeassistant/"):
            continue
        assert PROFILES[profile].recognises(topic), topic
        assert [p for p in PROFILES if p != profile and PROFILES[p].recognises(topic)] == [], topic


@pytest.mark.parametrize(("profile", "topic"), [
    ("shelly", "shellypro3em-08f9e0e67204/events/rpc"),
    ("shelly", "home/garage/plug/status/switch:0"),
    ("shelly", "site/b/garage/plug/events/rpc"),
    ("tasmota", "tele/tasmota_5A9AE8/SENSOR"),
    ("tasmota", "tele/home/garage/tasmota_5A9AE8/SENSOR"),
    ("tasmota", "stat/home/garage/tasmota_5A9AE8/STATUS10"),
    ("opendtu", "solar/1164a00cbf56/0/power"),
    ("victron", "N/c0619ab1e2f3/pvinverter/20/Ac/L2/Power"),
    ("solarassistant", "solar_assistant/inverter_2/pv_power/state"),
])
def test_default_subscriptions_catch_multi_level_prefixes(profile: str, topic: str) -> None:
    portal = "c0619ab1e2f3" if profile == "victron" else ""
    cfg = MqttConfig(name="n", url="mqtt://h", profile=profile, portal_id=portal)  # type: ignore[arg-type]
    # paho's matcher: the broker's rule, not a copy of ours.
    assert any(topic_matches_sub(f, topic) for f in PROFILES[profile].default_topics(cfg)), topic
