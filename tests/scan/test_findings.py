"""The pure parts of `solar-agent scan`: the MQTT survey over the whole corpus, the RTU plan, and the
config blocks, which must load with the agent's own config loader when appended to a site file."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from paho.mqtt.client import topic_matches_sub

from agent.cli.scan import parse_units
from agent.config import MqttConfig, load_config
from agent.scan.modbus_probe import crc16, late_frame_unit
from agent.scan.mqtt import Survey, suggest_topics
from agent.scan.progress import Progress
from agent.scan.results import FoundUnit, LineSettings, ModbusScan, MqttScan
from agent.scan.rtu import COMMON_UNITS, Heard, RtuPlan, line_settings, live_settings
from agent.scan.tcp import merge_aliases
from agent.scan.toml import modbus_block, mqtt_block
from agent.sources.profiles import PROFILES, is_discovery_topic, is_write_topic
from tests.cli.conftest import write_config
from tests.fuzz import examples
from tests.sources.test_profiles_fuzz import PAYLOAD, TOPIC

CASES = Path(__file__).resolve().parents[1] / "cases" / "mqtt"
BASE_MS = 1_732_860_000_000


def _cases() -> list[Path]:
    return sorted(p for p in CASES.glob("*/*") if (p / "input.jsonl").exists() and p.parent.name != "generic")


def _messages(case: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (case / "input.jsonl").read_text().splitlines()]


def _survey(case: Path, url: str = "mqtt://192.168.1.20:1883") -> tuple[Survey, MqttScan]:
    survey = Survey(url)
    last = BASE_MS
    for msg in _messages(case):
        payload = bytes.fromhex(str(msg["payload_hex"])) if "payload_hex" in msg else str(msg["payload"]).encode()
        last = BASE_MS + int(str(msg["t"]))
        survey.add(str(msg["topic"]), payload, last)
    scan = MqttScan(url, 30.0)
    scan.feeds, scan.devices = survey.finish(last)
    return survey, scan


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_survey_recognises_every_corpus_device_and_reads_it_like_the_agent(case: Path) -> None:
    profile = case.parent.name
    survey, scan = _survey(case)
    assert survey.unrecognised == {} and survey.unrecognised_total == 0
    assert {f.profile for f in scan.feeds} == {profile}
    expected = [json.loads(x) for x in (case / "expected.jsonl").read_text().splitlines()]
    # The corpus runner names its feed "case"; the scan names it after the profile, as its block does.
    want = {str(e["device_id"]).replace("case/", f"{profile}/", 1) for e in expected}
    assert {d.device_id for d in scan.devices if d.sample} == want
    # The feed the block configures subscribes to every data topic the device published.
    for feed in scan.feeds:
        cfg = MqttConfig(name="n", url="mqtt://h", profile=feed.profile,  # type: ignore[arg-type]
                         topics=feed.topics, portal_id=feed.portal_id)
        filters = PROFILES[feed.profile].default_topics(cfg)
        for msg in _messages(case):
            topic = str(msg["topic"])
            if not (is_write_topic(topic) or is_discovery_topic(topic)):
                assert any(topic_matches_sub(f, topic) for f in filters), (topic, filters)


def test_topics_are_suggested_only_where_the_defaults_miss_the_device() -> None:
    assert suggest_topics("opendtu", {"solar/114182912345/0/power"}) == ()
    assert suggest_topics("opendtu", {"home/pv/roof/114172220001/0/power", "home/pv/garage/dtu/status"}) == \
        ("home/pv/garage/#", "home/pv/roof/#")
    assert suggest_topics("opendtu", {"solar/114182912345/0/power", "dtu2/114182912345/0/power"}) == \
        ("solar/#", "dtu2/#")
    assert suggest_topics("shelly", {"a/b/c/d/e/plug/status/switch:0"}) == ("a/b/c/d/e/plug/#",)
    assert suggest_topics("victron", {"N/c0619ab1e2f3/pvinverter/20/Ac/Power"}, "c0619ab1e2f3") == ()


def test_foreign_topics_are_listed_and_commands_are_not_data() -> None:
    survey = Survey("mqtt://h")
    survey.add("site/boiler/temperature", b"61.5", BASE_MS)
    survey.add("site/boiler/temperature", b"61.6", BASE_MS)
    survey.add("cmnd/tasmota_5A9AE8/Power", b"ON", BASE_MS)
    survey.add("homeassistant/sensor/x/config", b"{}", BASE_MS)
    feeds, devices = survey.finish(BASE_MS)
    assert survey.unrecognised == {"site/boiler/temperature": 2} and survey.skipped == 2
    assert feeds == [] and devices == []


def test_the_mqtt_block_loads_with_the_agents_config_loader(tmp_path: Path) -> None:
    blocks = []
    for case in ("opendtu/multilevel_prefix_two_dtus", "victron/three_phase_pvinverters", "shelly/pro4pm_channels",
                 "tasmota/three_phase_totals", "solarassistant/inverter_battery"):
        _, scan = _survey(CASES / case)
        scan.username, scan.password_file = "site", str(tmp_path / "mqtt.pass")
        blocks.append(mqtt_block(scan))
    block = "\n".join(blocks)
    cfg = load_config(write_config(tmp_path, extra="\n" + block).config)
    feeds = {f.profile: f for f in cfg.mqtt}
    assert set(feeds) == {"opendtu", "victron", "shelly", "tasmota", "solarassistant"}
    assert feeds["opendtu"].topics == ("home/pv/garage/#", "home/pv/roof/#")
    assert feeds["victron"].portal_id == "e0ff50a097c0" and feeds["victron"].topics == ()
    assert all(f.url == "mqtt://192.168.1.20:1883" and f.username == "site" for f in cfg.mqtt)


def _unit(unit: int, base: int | None = 40000, serial: str = "", **kw: object) -> FoundUnit:
    return FoundUnit(unit, base, (1, 103) if base is not None else (), "Acme", "X-10", serial or f"S{unit}",
                     "1.0", f"Acme-{serial or f'S{unit}'}", **kw)  # type: ignore[arg-type]


def test_the_modbus_blocks_load_with_the_agents_config_loader(tmp_path: Path) -> None:
    rtu = ModbusScan("rtu", "/dev/serial/by-id/usb-FTDI-if00-port0", settings=LineSettings(19200, "E"),
                     units=[_unit(1), _unit(4, base=0), _unit(9, base=None, note="no SunSpec map: ...")],
                     other_settings={"9600 8N1": [17]})
    tcp = ModbusScan("tcp", "192.168.1.50:1502", units=[_unit(1, also_unit_ids=(2, 3)), _unit(126, base=50000)])
    block = modbus_block(rtu) + "\n" + modbus_block(tcp)
    assert "unit 9 answers Modbus but is not SunSpec" in block and "9600 8N1" in block
    cfg = load_config(write_config(tmp_path, extra="\n" + block).config)
    bus, lan = cfg.modbus
    assert (bus.name, bus.transport, bus.port, bus.baudrate, bus.parity) == \
        ("rs485", "rtu", "/dev/serial/by-id/usb-FTDI-if00-port0", 19200, "E")
    assert [(d.unit_id, d.base_address) for d in bus.devices] == [(1, None), (4, 0)]
    assert (lan.name, lan.host, lan.tcp_port) == ("lan_192_168_1_50", "192.168.1.50", 1502)
    assert [(d.unit_id, d.base_address) for d in lan.devices] == [(1, None), (126, 50000)]
    assert modbus_block(ModbusScan("rtu", "/dev/ttyUSB0")) == ""


def test_a_device_answering_every_unit_id_is_listed_once() -> None:
    merged = merge_aliases([_unit(2, serial="A"), _unit(1, serial="A"), _unit(3, serial="B"), _unit(126, serial="A")])
    assert [(u.unit_id, u.also_unit_ids) for u in merged] == [(1, (2, 126)), (3, ())]


def test_the_rtu_plan_detects_with_common_ids_and_bounds_its_time() -> None:
    settings = line_settings()
    assert settings[0] == LineSettings(9600, "N") and len(settings) == 12
    assert [str(s) for s in settings[:5]] == ["9600 8N1", "19200 8N1", "38400 8N1", "115200 8N1", "9600 8E1"]
    plan = RtuPlan("/dev/ttyUSB0", settings)
    assert plan.detect_units == COMMON_UNITS
    # 12 settings x 5 ids x 3 bases x 0.25 s, plus 247 ids x 0.25 s: the promise printed before a full scan.
    assert plan.estimate_seconds() == pytest.approx(45 + 61.75)
    assert RtuPlan("p", settings, units=(5, 6)).detect_units == (5, 6)
    assert RtuPlan("p", settings, units=tuple(range(10, 40))).detect_units == (10, 11, 12, 13, 14)
    heard = {LineSettings(9600, "N"): Heard(), LineSettings(19200, "N"): Heard([1]),
             LineSettings(19200, "E"): Heard(garbled=3), LineSettings(9600, "E"): Heard([1, 2])}
    assert live_settings(heard) == [LineSettings(9600, "E"), LineSettings(19200, "N")]


@pytest.mark.parametrize(("text", "units"), [("1-3", (1, 2, 3)), ("1,2,126", (1, 2, 126)), ("5-6,1", (5, 6, 1)),
                                             ("247", (247,)), ("0-3", None), ("1-248", None), ("3-1", None),
                                             ("a", None), ("", None)])
def test_unit_lists(text: str, units: tuple[int, ...] | None) -> None:
    assert parse_units(text) == units


@pytest.mark.fuzz
@settings(max_examples=examples(100), deadline=None)
@given(msgs=st.lists(st.tuples(TOPIC, PAYLOAD), max_size=30))
# Found on a fresh Debian: a portal id that is no config name ('em:0'), and two that become the same one.
@example(msgs=[("N/em:0/solar/solar/solar", b"")])
@example(msgs=[("N/a:b/solar/x", b""), ("N/a;b/solar/x", b"")])
def test_the_survey_survives_any_traffic_and_its_block_still_loads(msgs: list[tuple[str, bytes]],
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    survey = Survey("mqtt://192.168.1.20:1883")
    for n, (topic, payload) in enumerate(msgs):
        survey.add(topic, payload, BASE_MS + n)
    scan = MqttScan("mqtt://192.168.1.20:1883", 1.0)
    scan.feeds, scan.devices = survey.finish(BASE_MS + len(msgs))
    assert survey.messages == len(msgs) == survey.skipped + survey.unrecognised_total + \
        sum(f.messages for f in scan.feeds)
    block = mqtt_block(scan)
    if block:
        load_config(write_config(tmp_path_factory.mktemp("cfg"), extra="\n" + block).config)


def test_progress_rewrites_one_line_on_a_terminal_and_keeps_notes() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    for out, is_tty in ((tty, True), (plain, False)):
        p = Progress(out, tty=is_tty)
        p.status("unit 1")
        p.status("unit 2")
        p.note("unit 2 answers")
        p.done()
    stamp = r"\[\s*\d+\.\ds\] "
    # On a terminal: the transient line rewritten in place, then cleared before the note that stays.
    assert re.fullmatch(rf"\r{stamp}unit 1\r{stamp}unit 2\r *\r{stamp}unit 2 answers\n", tty.getvalue())
    assert re.fullmatch(rf"{stamp}unit 2 answers\n", plain.getvalue())


def test_a_late_answer_is_told_from_noise_by_its_crc() -> None:
    # The known answer the reference prototype checked against a real pymodbus frame (shared/field-protocols.md,
    # client_raw.py): 01 03 00 00 00 0A -> CRC bytes C5 CD, low byte first.
    assert crc16(bytes.fromhex("01030000000A")).to_bytes(2, "little") == bytes.fromhex("C5CD")
    frame = bytes.fromhex("0203045375 6E53".replace(" ", ""))
    frame += crc16(frame).to_bytes(2, "little")
    assert late_frame_unit(frame, asked=3) == 2
    assert late_frame_unit(frame, asked=2) is None                    # the unit asked: not late
    assert late_frame_unit(frame[:-1] + b"\x00", asked=3) is None     # bad CRC: noise
    assert late_frame_unit(b"\x02\x03", asked=3) is None
