"""Hypothesis: every profile's feed survives any topic/payload, raising PayloadError at most.

Hostile numbers (5,000 digits, 1e999, NaN, nesting 12,000 deep) are in the mix: the issue that made
one message take a site offline was a ValueError from json.loads, not a decoding bug.
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import MqttConfig
from agent.errors import PayloadError
from agent.records import IDENTITY_FIELDS, Reading, load_schema
from agent.sources.profiles import NO_READING_REASONS, PROFILES
from tests.fuzz import examples

METRICS = set(load_schema().names) - set(IDENTITY_FIELDS)
CFG = {
    name: MqttConfig(name="fuzz", url="mqtt://127.0.0.1", profile=name, portal_id="abc",  # type: ignore[arg-type]
                     topics=("site/+/telemetry", "tele/#"), time_path="ts",
                     fields=(("ac_power_w", "W"), ("operating_state", "st"), ("ac_energy_wh", "a.b.0")))
    for name in PROFILES
}
# Topics shaped like the real ones, so the fuzzer reaches the decoders rather than the filters.
LEVEL = st.sampled_from(["solar", "114182912345", "0", "1", "status", "last_update", "power", "yieldtotal",
                         "N", "abc", "pvinverter", "20", "Ac", "Power", "system", "Dc", "Battery", "Soc",
                         "solar_assistant", "inverter_1", "battery_1", "pv_power", "device_mode", "state",
                         "tele", "SENSOR", "stat", "STATUS10", "shelly1", "events", "rpc", "em:0", "em1:1",
                         "emdata:0", "site", "inv1", "telemetry", "full_publish_completed", "", "+"])
TOPIC = st.one_of(st.lists(LEVEL, min_size=1, max_size=7).map("/".join), st.text(max_size=40))
JSONV = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
        st.sampled_from(["value", "ENERGY", "Power", "Total", "method", "params", "ts", "em:0", "total_act_power",
                         "a_pf", "StatusSNS", "W", "st", "a", "b", "emdata:0", "total_act"]), kids, max_size=5),
    max_leaves=20)
# Numbers and shapes that break parsers rather than decoders: Python refuses ints of over 4300 digits
# (a ValueError, not a JSONDecodeError), json.loads accepts NaN/Infinity, deep nesting recurses.
HOSTILE_NUMBER = st.one_of(
    st.integers(300, 6000).map(lambda n: "9" * n), st.sampled_from(["1e999", "-1e999", "NaN", "Infinity", "-0",
                                                                     "-Infinity", "1e-999", "0x10", "1_000"]),
    st.integers(1, 12_000).map(lambda n: "[" * n + "]" * n))
HOSTILE_JSON = st.tuples(st.sampled_from([
    '{{"ENERGY":{{"Power":{0},"Total":{0}}}}}', '{{"value":{0}}}', "{0}", '{{"W":{0},"ts":{0}}}',
    '{{"method":"NotifyStatus","params":{{"ts":{0},"em:0":{{"total_act_power":{0}}}}}}}',
    '{{"StatusSNS":{{"ENERGY":{{"Power":[{0},{0}]}}}}}}']), HOSTILE_NUMBER).map(lambda t: t[0].format(t[1]).encode())
PAYLOAD = st.one_of(st.binary(max_size=60), JSONV.map(lambda v: json.dumps(v).encode()),
                    st.floats(allow_nan=True).map(lambda f: str(f).encode()), HOSTILE_JSON)


def _check(readings: list[Reading]) -> None:
    for r in readings:
        assert set(r.metrics) <= METRICS, r
        for v in r.metrics.values():
            assert v is None or isinstance(v, str) or math.isfinite(v), r
        assert isinstance(r.device_id, str) and r.device_id
        assert isinstance(r.time_ms, int) and r.time_ms > 0


@pytest.mark.fuzz
@settings(max_examples=examples(150), deadline=None)
@given(profile=st.sampled_from(sorted(PROFILES)),
       msgs=st.lists(st.tuples(TOPIC, PAYLOAD, st.integers(0, 5000)), max_size=25))
def test_feed_never_crashes(profile: str, msgs: list[tuple[str, bytes, int]]) -> None:
    decoder = PROFILES[profile].new_decoder(CFG[profile])
    now = 1_732_860_000_000
    for n, (topic, payload, dt) in enumerate(msgs):
        now += dt
        with contextlib.suppress(PayloadError):
            _check(decoder.feed(topic, payload, now, tag=n))
            assert decoder.outcome in (None, *NO_READING_REASONS)
        decoder.device_of(topic)
    _check(decoder.tick(now + 60_000))
    assert sorted(decoder.release()) == list(range(len(msgs))), "a message was never released for acking"


# Real topics of each family, so every hostile payload reaches the JSON and number parsing.
REAL_TOPICS = {
    "generic": ["site/inv1/telemetry"],
    "opendtu": ["solar/114182912345/0/power", "solar/114182912345/status/last_update",
                "solar/1164a00cbf56/1/yieldtotal"],
    "victron": ["N/abc/pvinverter/20/Ac/Power", "N/abc/system/0/Dc/Battery/Soc"],
    "solarassistant": ["solar_assistant/inverter_1/pv_power/state",
                       "solar_assistant/battery_1/state_of_charge/state"],
    "tasmota": ["tele/plug1/SENSOR", "stat/plug1/STATUS10"],
    "shelly": ["shelly1/events/rpc", "shelly1/status/em:0", "shelly1/status/switch:0", "shelly1/status/emdata:0"],
}


@pytest.mark.fuzz
@settings(max_examples=examples(200), deadline=None)
@given(data=st.data(), profile=st.sampled_from(sorted(PROFILES)))
def test_hostile_payloads_on_real_topics_raise_payload_error_at_most(data: st.DataObject, profile: str) -> None:
    decoder = PROFILES[profile].new_decoder(CFG[profile])
    topic = data.draw(st.sampled_from(REAL_TOPICS[profile]))
    payload = data.draw(st.one_of(HOSTILE_JSON, HOSTILE_NUMBER.map(str.encode)))
    with contextlib.suppress(PayloadError):
        _check(decoder.feed(topic, payload, 1_732_860_000_000, tag=1))
        assert decoder.outcome in (None, *NO_READING_REASONS)
    _check(decoder.tick(1_732_860_060_000))
    assert decoder.release() == [1], "the message was never released for acking"
