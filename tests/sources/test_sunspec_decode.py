"""SunSpec decoding: golden register images, tables, and Hypothesis on random register images."""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal
from pathlib import Path

import pytest
import sunspec2.device as ss_device
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import DeviceProtocolError
from agent.sources import sunspec
from tests.fuzz import examples

CASES = Path(__file__).parent.parent / "cases" / "sunspec"


def render(model_id: int, values: dict[str, object]) -> list[int]:
    """Register image of a model from pysunspec2 (an independent encoder)."""
    m = ss_device.Model(model_id=model_id)
    for k, v in values.items():
        getattr(m, k).set_value(v)
    raw = m.get_mb()
    return list(struct.unpack(f">{len(raw) // 2}H", raw))


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if (p / "registers.json").exists()))
def test_golden_case(case: str) -> None:
    regs = json.loads((CASES / case / "registers.json").read_text())
    expected = json.loads((CASES / case / "expected.jsonl").read_text().splitlines()[0])
    mid = regs["model_id"]
    assert sunspec.to_metrics({mid: sunspec.decode_model(mid, regs["registers"])}) == expected


@pytest.mark.parametrize(("raw", "sf", "expected"), [
    (1452, -2, 14.52), (812, -2, 8.12), (413, -1, 41.3), (5001, -2, 50.01), (3345, 0, 3345),
    (12, 3, 12000), (1, -3, 0.001), (9999, -4, 0.9999),
])
def test_scaled_values_are_exact(raw: int, sf: int, expected: float) -> None:
    regs = render(103, {"A": raw, "A_SF": sf})
    value = sunspec.decode_model(103, regs)["A"]
    assert value == expected
    assert repr(value) == repr(expected)        # 8.12, never 8.120000000000001


@pytest.mark.parametrize(("point", "regs_at", "sentinel"), [
    ("W", 14, [0x8000]),                         # int16
    ("A", 2, [0xFFFF]),                          # uint16
    ("WH", 24, [0, 0]),                          # acc32
    ("St", 38, [0xFFFF]),                        # enum16
    ("Evt1", 40, [0xFFFF, 0xFFFF]),              # bitfield32
])
def test_sentinels_are_none(point: str, regs_at: int, sentinel: list[int]) -> None:
    regs = render(103, {"A": 100, "A_SF": 0, "W": 1, "W_SF": 0, "WH": 5, "WH_SF": 0, "St": 4, "Evt1": 3})
    assert sunspec.decode_model(103, regs)[point] is not None
    regs[regs_at:regs_at + len(sentinel)] = sentinel
    assert sunspec.decode_model(103, regs)[point] is None


def test_sentinel_scale_factor_makes_every_linked_value_none() -> None:
    regs = render(103, {"PhVphA": 2309, "PhVphB": 2310, "W": 5, "W_SF": 0})   # V_SF left unset
    d = sunspec.decode_model(103, regs)
    assert d["PhVphA"] is None and d["PhVphB"] is None and d["V_SF"] is None
    assert d["W"] == 5


def test_float_model_nan_is_none_and_values_round_trip() -> None:
    regs = render(113, {"W": 3345.5, "PhVphA": 230.9, "Hz": 50.01})
    d = sunspec.decode_model(113, regs)
    assert (d["W"], d["PhVphA"], d["Hz"]) == (3345.5, 230.9, 50.01)
    assert d["VA"] is None and d["DCA"] is None


def test_common_model_and_device_id() -> None:
    regs = render(1, {"Mn": "Fronius Int'l", "Md": "Symo 10", "SN": "29/0042 x"})
    common = sunspec.decode_model(1, regs)
    assert common["Mn"] == "Fronius Int'l" and common["Opt"] is None
    assert sunspec.device_id(common) == "Fronius_Int_l-29_0042_x"
    assert sunspec.device_id({}, "bus0-unit3") == "bus0-unit3"


def test_wrong_model_id_raises() -> None:
    with pytest.raises(DeviceProtocolError):
        sunspec.decode_model(101, render(103, {}))
    with pytest.raises(DeviceProtocolError):
        sunspec.decode_model(103, render(103, {})[:20])


def _model160(modules: list[tuple[int, int, int]]) -> list[int]:
    # Hand layout (SunSpec 160): 8 fixed registers, then 20 per module.
    body = [0xFFFE, 0xFFFF, 0, 0, 0, 0, len(modules), 0xFFFF]       # DCA_SF=-2 DCV_SF=-1 DCW_SF=0 DCWH_SF=0
    for n, (dca, dcv, dcw) in enumerate(modules, start=1):
        idstr = [0x5056, 0x3000 + 0x30 + n] + [0] * 6                 # "PV" "0<n>"
        body += [n, *idstr, dca, dcv, dcw, 0, 1234, 0xFFFF, 0xFFFF, 0x8000, 4, 0, 0]
    return [160, len(body), *body]


def test_model_160_repeating_modules() -> None:
    d = sunspec.decode_model(160, _model160([(812, 4305, 3495), (0xFFFF, 4100, 0)]))
    assert d["N"] == 2
    mods = d["module"]
    assert isinstance(mods, list) and len(mods) == 2
    assert mods[0]["IDStr"] == "PV01" and mods[0]["DCA"] == 8.12 and mods[0]["DCV"] == 430.5
    assert mods[0]["DCWH"] == 1234 and mods[0]["Tmp"] is None and mods[0]["Tms"] is None
    assert mods[1]["DCA"] is None and mods[1]["DCV"] == 410.0
    strings = sunspec.string_metrics({160: d})
    assert strings == [(1, {"dc_current_a": 8.12, "dc_voltage_v": 430.5, "dc_power_w": 3495}),
                       (2, {"dc_current_a": None, "dc_voltage_v": 410.0, "dc_power_w": 0})]


def _model714(ports: list[tuple[int, int, int]], nprt: int | None = None) -> list[int]:
    fixed = [0, 0, nprt if nprt is not None else len(ports), 150, 6000, 0, 0, 0, 77, 0, 0, 0, 0,
             0xFFFE, 0xFFFF, 0, 0, 0]                                 # SFs: A -2, V -1, W 0, WH 0, Tmp 0
    body = list(fixed)
    for n, (dca, dcv, dcw) in enumerate(ports, start=1):
        body += [1, n, *([0] * 8), dca, dcv, dcw, 0, 0, 0, 10, 0, 0, 0, 0, 35, 1, 0, 0]
    return [714, len(body), *body]


def test_model_714_ports_counted_by_nprt() -> None:
    d = sunspec.decode_model(714, _model714([(812, 4305, 3495), (700, 4000, 2800)]))
    assert d["DCA"] == 1.5 and d["DCW"] == 6000 and d["DCWhInj"] == 77
    ports = d["Prt"]
    assert isinstance(ports, list) and [p["DCV"] for p in ports] == [430.5, 400.0]
    assert ports[1]["DCWhInj"] == 10 and ports[1]["Tmp"] == 35
    # A count larger than the block never reads past it.
    d = sunspec.decode_model(714, _model714([(812, 4305, 3495)], nprt=9))
    assert isinstance(d["Prt"], list) and len(d["Prt"]) == 1


def test_701_and_714_fill_metrics_without_inverter_model() -> None:
    ac = sunspec.decode_model(701, render(701, {
        "W": 3345, "W_SF": 0, "LNV": 2309, "V_SF": -1, "Hz": 50010, "Hz_SF": -3, "TotWhInj": 12345678901,
        "TotWh_SF": 0, "St": 1, "TmpCab": 41, "Tmp_SF": 0, "A": 1452, "A_SF": -2}))
    dc = sunspec.decode_model(714, _model714([(812, 4305, 3495)]))
    m = sunspec.to_metrics({701: ac, 714: dc})
    assert m["ac_power_w"] == 3345 and m["ac_voltage_v"] == 230.9 and m["ac_frequency_hz"] == 50.01
    assert m["ac_energy_wh"] == 12345678901 and m["operating_state"] == "ON" and m["ac_current_a"] == 14.52
    assert m["dc_power_w"] == 6000 and m["dc_current_a"] == 1.5 and m["dc_voltage_v"] == 430.5
    assert m["event_flags"] is None


# ---- Hypothesis ---------------------------------------------------------------------------

SENTINELS_16 = st.sampled_from([0x8000, 0xFFFF, 0, 0x7FFF, 1])
WORD = st.one_of(st.integers(0, 0xFFFF), SENTINELS_16)


@pytest.mark.fuzz
@settings(max_examples=examples(200), deadline=None)
@given(mid=st.sampled_from([1, 101, 102, 103, 111, 112, 113, 160, 701, 714]), data=st.data())
def test_random_images_never_crash(mid: int, data: st.DataObject) -> None:
    length = sunspec.model_def(mid).group.length - 2
    if mid in (160, 714):
        length += data.draw(st.integers(0, 3)) * sunspec.model_def(mid).group.groups[0].length
    body = data.draw(st.lists(WORD, min_size=length, max_size=length))
    d = sunspec.decode_model(mid, [mid, length, *body])
    for value in d.values():
        assert value is None or isinstance(value, (int, float, str, list))
        if isinstance(value, float):
            assert math.isfinite(value)
    sunspec.to_metrics({mid: d})
    sunspec.string_metrics({mid: d})


INT16 = st.integers(-32767, 32767)
SF = st.integers(-4, 4)


@settings(max_examples=200, deadline=None)
@given(w=INT16, w_sf=SF, a=st.integers(0, 0xFFFE), a_sf=SF, wh=st.integers(1, 0xFFFFFFFF),
       wh_sf=st.integers(0, 3), hz=st.one_of(st.just(0xFFFF), st.integers(0, 0xFFFE)), hz_sf=st.just(-32768))
def test_random_103_values_scaled_exactly(w: int, w_sf: int, a: int, a_sf: int, wh: int, wh_sf: int,
                                          hz: int, hz_sf: int) -> None:
    regs = render(103, {"W": w, "W_SF": w_sf, "A": a, "A_SF": a_sf, "WH": wh, "WH_SF": wh_sf, "Hz": hz})
    regs[17] = hz_sf & 0xFFFF                                       # Hz_SF = sentinel
    d = sunspec.decode_model(103, regs)

    def exact(raw: int, sf: int) -> float | int:
        return raw * 10**sf if sf >= 0 else float(Decimal(raw).scaleb(sf))

    assert d["W"] == exact(w, w_sf) and d["A"] == exact(a, a_sf) and d["WH"] == exact(wh, wh_sf)
    assert repr(d["A"]) == repr(exact(a, a_sf))
    assert d["Hz"] is None                                           # sentinel SF -> unknown, never a number
