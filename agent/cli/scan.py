"""`solar-agent scan rtu|tcp|mqtt`: commissioning. Find the devices of a site and print the config block."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import STANDARD_BAUDRATES

if TYPE_CHECKING:
    from agent.scan.results import ModbusScan

EXIT_FOUND = 0
EXIT_NOTHING = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Find the devices of a site and print a ready-to-paste block for site.toml. It only reads: on Modbus it
sends nothing but "read holding registers", on MQTT it subscribes and never publishes.

  rtu    an RS-485 port: detects the baud rate and parity (9600, 19200, 38400, 115200 x N, E, O),
         then sweeps unit ids 1-247 at the settings that answered, and reads each unit's SunSpec map
         (manufacturer, model, serial, models) at 40000, 0 and 50000
  tcp    a Modbus TCP endpoint (an inverter or a gateway): unit ids 1, 2, 3, 126, 247 (or --units)
  mqtt   a broker: listens to '#' for --seconds, recognises OpenDTU, Victron GX, SolarAssistant,
         Tasmota and Shelly by their topics, lists each device with a sample reading, and the
         topics nobody recognised

Stop the agent first on an RS-485 bus (sudo systemctl stop solar-agent): two masters on one line garble
each other, and the port can have only one user. Progress goes to stderr, results to stdout.

Exit codes: 0 something was found (the block is printed), 1 nothing found or the port/host/broker
could not be reached, 2 usage error (bad option, no such port)."""

_EPILOG = """\
examples:
  sudo systemctl stop solar-agent
  sudo solar-agent scan rtu --port /dev/serial/by-id/usb-FTDI_FT232R-if00-port0
  sudo solar-agent scan rtu --port /dev/ttyUSB0 --baud 9600 --parity N --units 1-10   # quick
  solar-agent scan tcp --host 192.168.1.50
  solar-agent scan mqtt --url mqtt://192.168.1.20:1883 --seconds 60
  solar-agent scan mqtt --url mqtt://127.0.0.1 --json | jq .scan.devices
then append the printed block to /etc/solar-agent/site.toml and run solar-agent check-config.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("scan", help="find the devices of a site (RS-485, Modbus TCP, MQTT) and print their config",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw)
    kinds = p.add_subparsers(dest="scan_kind", metavar="KIND")
    kinds.required = True

    r = kinds.add_parser(
        "rtu", help="an RS-485 port: line settings, unit ids, SunSpec maps", formatter_class=raw,
        description="Detect the line settings of the bus on --port, then sweep the unit ids at the settings that "
                    "answered. Takes about a minute for the whole range at the default timeout; the time it may "
                    "take at most is printed first. Stop the agent first: two masters garble each other.",
        epilog="examples:\n  sudo solar-agent scan rtu --port /dev/ttyUSB0\n"
               "  sudo solar-agent scan rtu --port /dev/ttyUSB0 --baud 19200 --parity E --units 1-32\n"
               "  sudo solar-agent scan rtu --port /dev/ttyUSB0 --all-bases   # a unit silent at 40000")
    r.add_argument("--port", required=True, help="the serial port (/dev/ttyUSB0, better /dev/serial/by-id/...)")
    r.add_argument("--baud", default="9600,19200,38400,115200", metavar="9600,19200",
                   help="baud rates to try, in order (default 9600,19200,38400,115200; add 4800 if needed)")
    r.add_argument("--parity", default="N,E,O", metavar="N,E,O", help="parities to try (default N,E,O)")
    r.add_argument("--units", default="1-247", metavar="1-247", help="unit ids to sweep, e.g. 1-10 or 1,2,126")
    r.add_argument("--timeout", type=float, default=0.25, metavar="S",
                   help="seconds to wait for each answer (default 0.25; raise it for slow inverters)")
    r.add_argument("--all-bases", action="store_true",
                   help="probe silent unit ids at 0 and 50000 too (three times slower)")
    r.add_argument("--name", default="rs485", help="the bus name in the printed block (default rs485)")
    r.add_argument("--json", action="store_true", help="print the findings and the block as JSON")
    r.set_defaults(func=_rtu)

    t = kinds.add_parser(
        "tcp", help="a Modbus TCP endpoint: unit ids, SunSpec maps", formatter_class=raw,
        description="Probe the unit ids behind --host:--port at 40000, 0 and 50000 and read each SunSpec map. "
                    "An inverter that answers every unit id as itself is listed once.",
        epilog="examples:\n  solar-agent scan tcp --host 192.168.1.50\n"
               "  solar-agent scan tcp --host 192.168.1.60 --port 1502 --units 1-10   # a gateway to RS-485")
    t.add_argument("--host", required=True, help="the inverter's or gateway's address")
    t.add_argument("--port", type=int, default=502, help="the Modbus TCP port (default 502)")
    t.add_argument("--units", default="1,2,3,126,247", metavar="1,2,3", help="unit ids to probe")
    t.add_argument("--timeout", type=float, default=1.0, metavar="S", help="seconds per answer (default 1.0)")
    t.add_argument("--name", default="", help="the bus name in the printed block (default lan_<host>)")
    t.add_argument("--json", action="store_true", help="print the findings and the block as JSON")
    t.set_defaults(func=_tcp)

    m = kinds.add_parser(
        "mqtt", help="a broker: which device families publish, with sample readings", formatter_class=raw,
        description="Subscribe to '#' for --seconds and recognise each device family by its topics. Never "
                    "publishes: a Victron GX shows only while some client sends its keepalive "
                    "(mosquitto_pub -t R/<portal id>/keepalive -m '' does, or a running agent).",
        epilog="examples:\n  solar-agent scan mqtt --url mqtt://192.168.1.20:1883\n"
               "  solar-agent scan mqtt --url mqtts://broker.lan:8883 --ca-file ca.pem --username site "
               "--password-file /etc/solar-agent/mqtt.pass")
    m.add_argument("--url", required=True, help="mqtt://host[:port] or mqtts://host[:port]")
    m.add_argument("--seconds", type=float, default=30.0, metavar="S",
                   help="how long to listen (default 30; OpenDTU publishes every 5 s, Tasmota every 300 s)")
    m.add_argument("--username", default="", help="broker user")
    m.add_argument("--password-file", type=Path, default=None, metavar="FILE", help="file holding the password")
    m.add_argument("--ca-file", type=Path, default=None, metavar="FILE", help="CA (PEM) of an mqtts:// broker")
    m.add_argument("--json", action="store_true", help="print the findings and the block as JSON")
    m.set_defaults(func=_mqtt)


def _usage(message: str, hint: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    print(f"Try: {hint}", file=sys.stderr)
    return EXIT_USAGE


def parse_units(text: str) -> tuple[int, ...] | None:
    """``1-10,126`` -> (1, ..., 10, 126); None when not unit ids 1-247."""
    units: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if sep else int(lo)
            if not 1 <= first <= last <= 247:
                return None
            units += range(first, last + 1)
    except ValueError:
        return None
    return tuple(dict.fromkeys(units)) or None


def _quiet_pymodbus(args: argparse.Namespace) -> None:
    if not args.verbose:
        # A scan times out on purpose at every empty unit id; pymodbus logs each as an error.
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _rtu(args: argparse.Namespace) -> int:
    from agent.scan.progress import Progress
    from agent.scan.results import LineSettings
    from agent.scan.rtu import RtuPlan, scan_rtu

    units = parse_units(args.units)
    if units is None:
        return _usage(f"--units must be unit ids 1-247 (got {args.units!r})", "--units 1-10 or --units 1,2,126")
    try:
        bauds = [int(b) for b in args.baud.split(",") if b.strip()]
    except ValueError:
        bauds = []
    if not bauds or any(b not in STANDARD_BAUDRATES for b in bauds):
        return _usage(f"--baud must be baud rates from {', '.join(map(str, STANDARD_BAUDRATES))} (got {args.baud!r})",
                      "--baud 9600,19200")
    parities = [p.strip().upper() for p in args.parity.split(",") if p.strip()]
    if not parities or any(p not in ("N", "E", "O") for p in parities):
        return _usage(f"--parity must be N, E and/or O (got {args.parity!r})", "--parity N,E")
    if not 0 < args.timeout <= 10:
        return _usage(f"--timeout must be 0-10 seconds (got {args.timeout})", "--timeout 0.5")
    if not Path(args.port).exists():
        return _usage(f"{args.port}: no such serial port", "ls -l /dev/serial/by-id/ lists the adapters")
    _quiet_pymodbus(args)
    settings = tuple(LineSettings(b, p) for p in dict.fromkeys(parities) for b in dict.fromkeys(bauds))
    plan = RtuPlan(args.port, settings, units, args.timeout, args.all_bases)
    result = asyncio.run(scan_rtu(plan, Progress()))
    return _report_modbus(result, args)


def _tcp(args: argparse.Namespace) -> int:
    from agent.scan.progress import Progress
    from agent.scan.tcp import scan_tcp

    units = parse_units(args.units)
    if units is None:
        return _usage(f"--units must be unit ids 1-247 (got {args.units!r})", "--units 1,2,3")
    if not 1 <= args.port <= 65535:
        return _usage(f"--port must be a TCP port 1-65535 (got {args.port})", "--port 502")
    if not 0 < args.timeout <= 30:
        return _usage(f"--timeout must be 0-30 seconds (got {args.timeout})", "--timeout 2")
    _quiet_pymodbus(args)
    result = asyncio.run(scan_tcp(args.host, args.port, units, args.timeout, Progress()))
    return _report_modbus(result, args)


def _report_modbus(result: ModbusScan, args: argparse.Namespace) -> int:
    from agent.scan.rtu import describe
    from agent.scan.toml import modbus_block

    block = modbus_block(result, args.name or None)
    if args.json:
        print(json.dumps({"scan": result.to_json(), "toml": block}, indent=2))
    else:
        if result.error:
            print(f"Error: {result.error}", file=sys.stderr)
            if result.hint:
                print(f"Try: {result.hint}", file=sys.stderr)
        where = f"{result.where}" + (f" at {result.settings}" if result.settings else "")
        sunspec = sum(u.sunspec for u in result.units)
        print(f"{where}: {sunspec} SunSpec unit(s) found in {result.elapsed_s:.1f}s ({result.probes} requests)")
        for u in result.units:
            print(f"  {describe(u)}")
        for s, why in result.refused.items():
            print(f"  {s}: the port refused these settings ({why})")
        for s in result.garbled:
            print(f"  {s}: garbled replies (a unit at another parity, two units with one id, or noise)")
        if result.slow:
            print(f"  unit(s) {', '.join(map(str, result.slow))} answered after --timeout {args.timeout:g}s: "
                  "others this slow may have been missed; scan again with --timeout 1")
        if block:
            print("\nAppend to site.toml, then run solar-agent check-config:\n")
            print(block)
        elif not result.error:
            print(_nothing_hint(result.transport))
    return EXIT_FOUND if block else EXIT_NOTHING


def _nothing_hint(transport: str) -> str:
    if transport == "rtu":
        return ("Nothing answered. Check: the agent is stopped; A/B not swapped; 120 ohm termination at both ends "
                "of the line; the inverters have Modbus/SunSpec enabled; --baud 4800 or a longer --timeout; "
                "--all-bases for a unit silent at 40000.")
    return ("No SunSpec unit answered. Check that Modbus TCP is enabled on the device (installer menu), the port, "
            "and --units (gateways number their RS-485 units).")


def _mqtt(args: argparse.Namespace) -> int:
    from agent.scan.mqtt import scan_mqtt
    from agent.scan.progress import Progress
    from agent.scan.toml import mqtt_block, sample_text

    if not 0 < args.seconds <= 3600:
        return _usage(f"--seconds must be 0-3600 (got {args.seconds})", "--seconds 60")
    if not args.url.startswith(("mqtt://", "mqtts://")):
        return _usage(f"--url must be mqtt://host[:port] or mqtts://host[:port] (got {args.url!r})",
                      "--url mqtt://192.168.1.20:1883")
    if args.password_file is not None and not args.username:
        return _usage("--password-file needs --username", "--username site --password-file FILE")
    result = asyncio.run(scan_mqtt(args.url, args.seconds, Progress(), username=args.username,
                                   password_file=args.password_file, ca_file=args.ca_file))
    block = mqtt_block(result)
    if args.json:
        print(json.dumps({"scan": result.to_json(), "toml": block}, indent=2))
        return EXIT_FOUND if block else EXIT_NOTHING
    if result.error:
        print(f"Error: {result.error}", file=sys.stderr)
        if result.hint:
            print(f"Try: {result.hint}", file=sys.stderr)
        return EXIT_NOTHING
    print(f"{result.url}: {result.messages} messages in {result.elapsed_s:.1f}s, "
          f"{len(result.devices)} device(s) in {len(result.feeds)} famil{'y' if len(result.feeds) == 1 else 'ies'}")
    for dev in result.devices:
        print(f"  {dev.profile:<14} {dev.device_id}: {sample_text(dev.sample) or dev.note or 'no reading yet'}")
    if result.unrecognised_total:
        print(f"  {result.unrecognised_total} message(s) on topics no profile recognises, e.g.:")
        for topic, n in list(result.unrecognised.items())[:10]:
            print(f"    {topic}  ({n})")
        print("  (a generic feed can read JSON from such topics: profile = \"generic\" with fields)")
    if block:
        print("\nAppend to site.toml, then run solar-agent check-config:\n")
        print(block)
    else:
        print("No device family recognised. Is the data logger publishing to this broker (mosquitto_sub -v -t '#')? "
              "A Victron GX publishes only while it gets keepalives; Tasmota sends SENSOR every TelePeriod "
              "(300 s by default): listen longer with --seconds.")
    return EXIT_FOUND if block else EXIT_NOTHING
