"""Hypothesis: every profile's feed survives any topic/payload, raising PayloadError at most."""

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
from agent.sources.profiles import PROFILES
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
PAYLOAD = st.one_of(st.binary(max_size=60), JSONV.map(lambda v: json.dumps(v).encode()),
                    st.floats(allow_nan=True).map(lambda f: str(f).encode()))


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
        decoder.device_of(topic)
    _check(decoder.tick(now + 60_000))
    assert sorted(decoder.release()) == list(range(len(msgs))), "a message was never released for acking"
