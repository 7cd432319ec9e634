"""The MQTT simulator replays the corpus: its cycles, for any device and time, decode to what it expects.

The simulator (a test peer) never imports the decoders; this test is where the two meet. A template
case is checked against the decoders in test_profiles.py; here the substitutions (identity, clock) are.
"""

from __future__ import annotations

import pytest

from agent.config import MqttConfig
from agent.simulators.mqtt_publishers import GENERIC_FIELDS, PORTAL_ID, PROFILES, SIM_CASES, messages
from agent.sources.profiles import PROFILES as DECODERS

DEVICES = {"opendtu": ("114182912345", "1164a00cbf56"), "victron": ("20", "31"),
           "solarassistant": ("inverter_1", "inverter_2"), "tasmota": ("tasmota_5A9AE8", "home/attic/plug"),
           "shelly": ("shellyplusplugs-e86beae1a0b8", "home/garage/plug"), "generic": ("inv1", "inv7")}


def _cfg(profile: str) -> MqttConfig:
    extra: dict[str, object] = {}
    if profile == "victron":
        extra["portal_id"] = PORTAL_ID
    if profile == "generic":
        extra.update(topics=("site/+/telemetry",), fields=GENERIC_FIELDS, time_path="ts")
    return MqttConfig(name="sim", url="mqtt://127.0.0.1", profile=profile, **extra)  # type: ignore[arg-type]


def test_every_profile_has_a_template() -> None:
    assert set(SIM_CASES) == set(PROFILES) == set(DECODERS)


@pytest.mark.parametrize("profile", PROFILES)
def test_replayed_cycles_decode_to_what_the_simulator_expects(profile: str) -> None:
    decoder = DECODERS[profile].new_decoder(_cfg(profile))
    now = 1_800_000_000_000
    got, want = [], []
    for k in range(3):
        for device in DEVICES[profile]:
            t_s = 1_800_000_000 + 5 * k
            msgs, exp = messages(profile, device, t_s, feed="sim")
            now += 5_000
            for m in msgs:
                got += [(r.device_id, r.time_ms, dict(r.metrics)) for r in decoder.feed(m.topic, m.payload, now)]
            got += [(r.device_id, r.time_ms, dict(r.metrics)) for r in decoder.tick(now + 3_000)]
            want += [(e.device_id, e.time_ms if e.time_ms is not None else now, e.metrics) for e in exp]
    assert got == want
    assert len({g[0] for g in got}) == len({w[0] for w in want}) >= 2
