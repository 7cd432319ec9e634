"""The ready-to-paste site-config block of a scan: ``[[modbus]]`` with ``[[modbus.devices]]``, or ``[[mqtt]]``.

Appended to a site file it passes ``solar-agent check-config`` (the tests load it with ``load_config``).
Only SunSpec units become devices; what the scan saw but the agent cannot read is written as comments,
so the technician sees it where the decision is made. Keys are written even at their default values
(``baudrate = 9600``): the block says what was found, not what happens to be the default.
"""

from __future__ import annotations

import json
import re
from typing import Final

from agent.scan.results import FoundUnit, ModbusScan, MqttScan

_NAME_BAD: Final = re.compile(r"[^A-Za-z0-9_-]+")
_SHOWN_METRICS: Final = ("ac_power_w", "dc_power_w", "grid_power_w", "battery_soc_pct", "ac_energy_wh")


def bus_name(scan: ModbusScan) -> str:
    """``rs485`` for a serial bus, ``lan_<host>`` for a TCP endpoint (a valid config name)."""
    if scan.transport == "rtu":
        return "rs485"
    host = scan.where.rsplit(":", 1)[0]
    return ("lan_" + _NAME_BAD.sub("_", host).strip("_"))[:64]


def modbus_block(scan: ModbusScan, name: str | None = None) -> str:
    """The ``[[modbus]]`` table of a scan that found SunSpec units ("" when it found none)."""
    sunspec = [u for u in scan.units if u.sunspec]
    if not sunspec:
        return ""
    lines = ["[[modbus]]", f"name = {_s(name or bus_name(scan))}", f"transport = {_s(scan.transport)}"]
    if scan.transport == "rtu":
        assert scan.settings is not None, "an rtu scan with units knows its settings"
        lines += [f"port = {_s(scan.where)}", f"baudrate = {scan.settings.baudrate}",
                  f"parity = {_s(scan.settings.parity)}"]
    else:
        host, _, port = scan.where.rpartition(":")
        lines += [f"host = {_s(host)}", f"tcp_port = {int(port)}"]
    for u in scan.units:
        if not u.sunspec:
            lines.append(_comment(f"unit {u.unit_id} answers Modbus but is not SunSpec ({u.note}): not added"))
    for settings, units in scan.other_settings.items():
        lines.append(_comment(f"units {', '.join(map(str, units))} answered at {settings} instead: a bus has one "
                              "speed and parity; set them alike on the devices"))
    for u in sunspec:
        lines += ["", "[[modbus.devices]]", f"unit_id = {u.unit_id}"]
        if u.base != 40000:
            lines.append(f"base_address = {u.base}")
        lines.append(_comment(_unit_comment(u)))
    return "\n".join(lines) + "\n"


def _unit_comment(u: FoundUnit) -> str:
    who = " ".join(x for x in (u.manufacturer, u.model) if x) or "unnamed device"
    models = ", ".join(map(str, u.models))
    also = f"; also answers as unit {', '.join(map(str, u.also_unit_ids))}" if u.also_unit_ids else ""
    return f"{who}, serial {u.serial or '-'}, SunSpec models {models} at {u.base}: device {u.device_id}{also}"


def mqtt_block(scan: MqttScan) -> str:
    """One ``[[mqtt]]`` table per device family seen ("" when none)."""
    tables: list[str] = []
    for feed in scan.feeds:
        lines = ["[[mqtt]]", f"name = {_s(feed.name)}", f"url = {_s(scan.url)}", f"profile = {_s(feed.profile)}"]
        if feed.topics:
            lines.append("topics = [" + ", ".join(_s(t) for t in feed.topics) + "]")
        if feed.portal_id:
            lines.append(f"portal_id = {_s(feed.portal_id)}")
        if scan.username:
            lines.append(f"username = {_s(scan.username)}")
        if scan.password_file:
            lines.append(f"password_file = {_s(scan.password_file)}")
        if scan.ca_file:
            lines.append(f"ca_file = {_s(scan.ca_file)}")
        if feed.profile == "shelly":
            lines.append(_comment('energy_direction = "export"   for a meter in a PV inverter\'s feed'))
        for dev in scan.devices:
            if dev.profile == feed.profile and (not feed.portal_id or dev.device_id.startswith(feed.portal_id + "/")):
                lines.append(_comment(f"{dev.device_id}: {sample_text(dev.sample) or dev.note or 'no reading yet'}"))
        tables.append("\n".join(lines) + "\n")
    return "\n".join(tables)


def sample_text(metrics: dict[str, float | int | str | None]) -> str:
    """A few telling values of a reading: ``ac_power_w=412.3 ac_energy_wh=1234567``."""
    shown = [k for k in _SHOWN_METRICS if metrics.get(k) is not None]
    if not shown:
        shown = [k for k, v in metrics.items() if v is not None][:3]
    return " ".join(f"{k}={metrics[k]}" for k in shown)


def _s(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's; DEL, which JSON leaves bare, is escaped too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _comment(text: str) -> str:
    return "# " + " ".join(text.split())


__all__ = ["bus_name", "modbus_block", "mqtt_block", "sample_text"]
