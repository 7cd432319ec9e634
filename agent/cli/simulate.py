"""`solar-agent simulate sunspec|mqtt`: device simulators for rehearsing a site without hardware."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DESCRIPTION = """\
Run a device simulator in the foreground until Ctrl-C, to rehearse a site (config, doctor,
status) on a laptop or a gateway before the inverters are wired.

  sunspec   SunSpec inverters (model 1 + 103, or 113 with --float) on Modbus RTU or TCP, values
            from a deterministic PV day curve
  mqtt      an MQTT data logger (OpenDTU, Victron GX, SolarAssistant, Tasmota, Shelly, generic
            JSON) publishing to a broker every --interval seconds

Exit codes: 0 stopped by Ctrl-C/SIGTERM, 1 the simulator could not start, 2 usage error."""

_EPILOG = """\
examples:
  solar-agent simulate sunspec --rtu                      # makes a virtual RS-485 pair, prints its path
  solar-agent simulate sunspec --rtu /dev/ttyUSB1 --units 1,2
  solar-agent simulate sunspec --tcp 127.0.0.1:1502 --float
  solar-agent simulate sunspec --rtu --corpus 3=kostal_end_single_zero --corpus 4=der701_714_three_phase
  solar-agent simulate mqtt --profile opendtu --url mqtt://127.0.0.1:1883 --interval 5
"""

_PROFILES = ("opendtu", "victron", "solarassistant", "tasmota", "shelly", "generic")
_DEFAULT_DEVICE = {"opendtu": "114182912345"}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("simulate", help="run a SunSpec or MQTT device simulator (rehearse a site)",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=raw)
    kinds = p.add_subparsers(dest="simulator", metavar="KIND")
    kinds.required = True

    s = kinds.add_parser(
        "sunspec", help="SunSpec inverters on Modbus RTU or TCP", formatter_class=raw,
        description="SunSpec inverters (common model 1, inverter model 103, or 113 with --float) at --base. "
                    "With --rtu and no port, a virtual null-modem pair is made and the path for the "
                    "agent's config is printed.",
        epilog="examples:\n  solar-agent simulate sunspec --rtu\n"
               "  solar-agent simulate sunspec --tcp 127.0.0.1:1502 --units 1,2,3")
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--rtu", nargs="?", const="", metavar="PORT",
                       help="serve RTU on PORT (the simulator's side); no PORT: make a virtual pair")
    where.add_argument("--tcp", metavar="HOST:PORT", help="serve Modbus TCP (port 0: a free port)")
    s.add_argument("--units", default="1", metavar="1,2", help="unit ids to answer (default 1)")
    s.add_argument("--float", action="store_true", help="float inverter model 113 instead of 103")
    s.add_argument("--base", type=int, default=40000, help="SunSpec base address (default 40000)")
    s.add_argument("--baudrate", type=int, default=9600, help="RTU baud rate (default 9600)")
    s.add_argument("--link", type=Path, default=None, metavar="PATH",
                   help="with --rtu and no PORT: where to put the agent-side link (default: a temp dir)")
    s.add_argument("--corpus", action="append", default=[], metavar="UNIT=CASE",
                   help="also serve a device of the corpus (tests/cases/sunspec/CASE) as it is, on UNIT; repeat "
                        "for several (e.g. 3=kostal_end_single_zero): rehearse solar-agent scan on real shapes")
    s.set_defaults(func=_sunspec)

    m = kinds.add_parser(
        "mqtt", help="an MQTT data logger publishing to a broker", formatter_class=raw,
        description="Publish what a data logger of --profile publishes, QoS 1, every --interval seconds.",
        epilog="example:\n  solar-agent simulate mqtt --profile opendtu --url mqtt://127.0.0.1:1883 "
               "--device 114182912345")
    m.add_argument("--profile", choices=_PROFILES, required=True)
    m.add_argument("--url", default="mqtt://127.0.0.1:1883", help="broker (mqtt://host:port)")
    m.add_argument("--device", action="append", default=None, metavar="SERIAL",
                   help="device serial or id (repeat for several)")
    m.add_argument("--interval", type=float, default=5.0, metavar="S", help="seconds between cycles (default 5)")
    m.set_defaults(func=_mqtt)


def _say(text: str) -> None:
    print(text, flush=True)


@contextlib.contextmanager
def _stop_signals() -> Iterator[asyncio.Event]:
    """An event set by SIGINT or SIGTERM (a clean stop, exit 0).

    Installed before the "Ctrl-C to stop" line is printed, so a signal sent right after seeing
    that line can never hit Python's default handler instead.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _parse_units(text: str) -> tuple[int, ...] | None:
    try:
        units = tuple(int(u) for u in text.split(",") if u.strip())
    except ValueError:
        return None
    return units if units and all(1 <= u <= 247 for u in units) else None


def _parse_corpus(items: list[str]) -> dict[int, str] | str:
    """``["3=kostal_end_single_zero"]`` -> {3: "kostal_end_single_zero"}, or the error to print."""
    from agent.simulators.corpus import sunspec_cases

    out: dict[int, str] = {}
    for item in items:
        unit, sep, case = item.partition("=")
        if not sep or not unit.isdigit() or not 1 <= int(unit) <= 247:
            return f"--corpus must be UNIT=CASE with a unit id 1-247 (got {item!r})"
        try:
            known = sunspec_cases()
        except FileNotFoundError as exc:
            return str(exc)
        if case not in known:
            return f"--corpus: no SunSpec case {case!r}; one of {', '.join(known)}"
        out[int(unit)] = case
    return out


def _sunspec(args: argparse.Namespace) -> int:
    units = _parse_units(args.units)
    if units is None:
        print(f"Error: --units must be unit ids 1-247 separated by commas (got {args.units!r})", file=sys.stderr)
        print("Try: --units 1,2", file=sys.stderr)
        return EXIT_USAGE
    corpus = _parse_corpus(args.corpus)
    if isinstance(corpus, str):
        print(f"Error: {corpus}", file=sys.stderr)
        print("Try: --corpus 3=kostal_end_single_zero (ls tests/cases/sunspec)", file=sys.stderr)
        return EXIT_USAGE
    if set(corpus) & set(units):
        print(f"Error: unit ids {sorted(set(corpus) & set(units))} are in --units and --corpus", file=sys.stderr)
        print("Try: give corpus devices unit ids of their own, e.g. --units 1,2 --corpus 3=...", file=sys.stderr)
        return EXIT_USAGE
    tcp: tuple[str, int] | None = None
    if args.tcp is not None:
        host, sep, port = args.tcp.rpartition(":")
        if not sep or not host or not port.isdigit():
            print(f"Error: --tcp must be HOST:PORT (got {args.tcp!r})", file=sys.stderr)
            print("Try: --tcp 127.0.0.1:1502", file=sys.stderr)
            return EXIT_USAGE
        tcp = (host, int(port))
    if not args.verbose:
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(_serve_sunspec(args, units, tcp, corpus))
    except BrokenPipeError:
        raise                # the reader of our output left (`| head`): main() ends quietly
    except OSError as exc:
        print(f"Error: cannot start the simulator: {exc}", file=sys.stderr)
        print("Try: another port (is something listening there already?), or check the serial port's path",
              file=sys.stderr)
        return EXIT_FAILED


async def _serve_sunspec(args: argparse.Namespace, units: tuple[int, ...], tcp: tuple[str, int] | None,
                         corpus: dict[int, str]) -> int:
    from agent.simulators.ptypair import PtyPair
    from agent.simulators.sunspec_device import SunSpecSimulator

    sim = SunSpecSimulator(units, base_address=args.base, float_model=args.float, corpus=corpus)
    model = 113 if args.float else 103
    cases = "".join(f", unit {u} {c} (corpus)" for u, c in sorted(corpus.items()))
    async with contextlib.AsyncExitStack() as stack:
        stop = stack.enter_context(_stop_signals())
        if tcp is not None:
            await stack.enter_async_context(sim.serve_tcp(*tcp))
            _say(f"SunSpec simulator: units {list(units)} (models 1, {model}) at base {args.base}{cases} "
                 f"on Modbus TCP {tcp[0]}:{sim.port}")
            _say(f'In site.toml: [[modbus]] transport = "tcp"  host = "{tcp[0]}"  tcp_port = {sim.port}')
        else:
            port = args.rtu
            if not port:
                link = args.link or Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="solar-agent-sim-"))) / "ttyAGENT"
                pair = stack.enter_context(PtyPair(None, link))
                port = pair.a
                _say(f"virtual RS-485 pair: simulator on {pair.a}, agent side {pair.b}")
                _say(f'In site.toml: [[modbus]] transport = "rtu"  port = "{pair.b}"  baudrate = {args.baudrate}')
            await stack.enter_async_context(sim.serve_rtu(port, baudrate=args.baudrate))
            _say(f"SunSpec simulator: units {list(units)} (models 1, {model}) at base {args.base}{cases} "
                 f"on RTU {port}")
        _say("Ctrl-C to stop.")
        await stop.wait()
    _say("simulator stopped")
    return EXIT_OK


def _mqtt(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        print("Error: --interval must be > 0 seconds", file=sys.stderr)
        print("Try: --interval 5", file=sys.stderr)
        return EXIT_USAGE
    if not args.url.startswith("mqtt://"):
        print(f"Error: the simulator publishes over plain mqtt:// only (got {args.url!r})", file=sys.stderr)
        print("Try: --url mqtt://127.0.0.1:1883 (a local broker)", file=sys.stderr)
        return EXIT_USAGE
    devices = tuple(args.device or [_DEFAULT_DEVICE.get(args.profile, "sim01")])
    try:
        return asyncio.run(_publish(args.profile, args.url, devices, args.interval))
    except BrokenPipeError:
        raise                # the reader of our output left (`| head`): main() ends quietly
    except (OSError, TimeoutError) as exc:
        # Also when the broker goes away while we publish: say so and end, without a traceback.
        print(f"Error: cannot publish to {args.url}: {exc or type(exc).__name__}", file=sys.stderr)
        print("Try: is the broker running? (systemctl status mosquitto; mosquitto -p 1883)", file=sys.stderr)
        return EXIT_FAILED


async def _publish(profile: str, url: str, devices: tuple[str, ...], interval: float) -> int:
    with _stop_signals() as stop:
        await _publish_until(stop, profile, url, devices, interval)
    _say("simulator stopped")
    return EXIT_OK


async def _publish_until(stop: asyncio.Event, profile: str, url: str, devices: tuple[str, ...],
                         interval: float) -> None:
    from agent.simulators.mqtt_publishers import MqttPublisher

    async with MqttPublisher(profile, url, devices, interval_seconds=interval,
                             client_id=f"solar-agent-sim-{profile}") as publisher:
        _say(f"MQTT simulator: {profile} devices {list(devices)} publishing to {url} every {interval:g}s")
        _say(f'In site.toml: [[mqtt]] url = "{url}"  profile = "{profile}". Ctrl-C to stop.')
        # Our own ticker rather than publisher.run(): a stop waits for the cycle in flight to be
        # PUBACKed instead of cancelling it, whose worker thread would then block the exit.
        while not stop.is_set():
            await publisher.publish_cycle(int(time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
