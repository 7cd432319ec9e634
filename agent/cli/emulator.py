"""`solar-agent emulator`: run the local Data Cloud emulator standalone, for demos and site trials."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from agent.emulator import Emulator, EmulatorSettings, Faults

_EPILOG = """\
examples:
  solar-agent emulator --port 8443 --public-key /etc/solar-agent/jwt.pub --tls-dir /tmp/emu-tls
  solar-agent emulator --port 8080 --public-key jwt.pub --fault-status 503=0.1 --fault-status 429=0.05
  solar-agent emulator --public-key jwt.pub --fire-and-forget --object-endpoint solar_panel_event_7f3a=solar_panel_event

The emulator serves the login host, the core instance and the Data Cloud tenant on one base URL.
Point [datacloud] login_url at it (the snippet printed at start is ready to paste), and with
--tls-dir set ca_file to the printed CA. Change faults while it runs:
  curl -X POST URL/__emulator/faults -d '{"status_rates": {"500": 0.2}}'
  curl -X POST URL/__emulator/faults -d '{"answers": {"stream_insert": "html"}}'   # odd answers, see --help
  curl URL/__emulator/stats ; curl 'URL/__emulator/records?count_only=1' ; curl URL/__emulator/dropped
Admin routes have no authentication: keep the emulator on loopback (the default host).
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "emulator", help="run a local Salesforce Data Cloud emulator (login, token exchange, ingest API)",
        description="Run a faithful local Data Cloud Ingestion API emulator until SIGINT/SIGTERM.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: loopback only)")
    p.add_argument("--port", type=int, default=0, help="TCP port (default: a free port)")
    p.add_argument("--public-key", type=Path, required=True,
                   help="PEM public key or X.509 certificate that verifies the agent's JWT assertion")
    p.add_argument("--private-key", type=Path, default=None, metavar="PATH",
                   help="the agent's private key, for the config snippet printed at start (default: the "
                        "--public-key path with .key, as `solar-agent keygen` names the pair)")
    p.add_argument("--schema", type=Path, default=None, help="OpenAPI schema file (default: the shipped one)")
    p.add_argument("--client-id", default="solar-agent", help="connected app consumer key (JWT iss)")
    p.add_argument("--username", default="agent@solar.example", help="integration user (JWT sub)")
    p.add_argument("--source-name", default="solar_agent", help="Ingestion API connector name")
    p.add_argument("--db", type=Path, default=None, help="SQLite file for landed records (default: temporary)")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="serve HTTPS; the CA and server certificate are created here when absent")
    p.add_argument("--processing-delay", type=float, default=0.0, metavar="S",
                   help="seconds before streamed records land (Data Cloud: ~180)")
    p.add_argument("--bulk-processing", type=float, default=0.0, metavar="S", help="seconds a bulk job takes")
    p.add_argument("--rate-limit", type=float, default=250.0, metavar="RPS", help="ingest requests per second")
    p.add_argument("--audience", action="append", default=[], metavar="URL",
                   help="a JWT audience to accept (repeatable; default https://login.salesforce.com and "
                        "https://test.salesforce.com, as Salesforce: never the URL the login is posted to)")
    p.add_argument("--object-endpoint", action="append", default=[], metavar="ENDPOINT=OBJECT",
                   help="serve schema object OBJECT under the connector endpoint name ENDPOINT (repeatable)")
    p.add_argument("--fire-and-forget", action="store_true",
                   help="answer 202 to every well-formed streaming insert and drop invalid records when "
                        "processed (see GET /__emulator/dropped); default: a synchronous 400 with a report")
    p.add_argument("--reject-unknown-csv-columns", action="store_true",
                   help="refuse bulk files with columns that are not fields (default: ignore those columns)")
    p.add_argument("--lenient", action="store_true",
                   help="land schema mismatches in normal streaming unchecked and ignore unknown fields")
    p.add_argument("--fault-status", action="append", default=[], metavar="CODE=RATE",
                   help="answer CODE with probability RATE on ingest endpoints (repeatable)")
    p.add_argument("--fault-reset", type=float, default=0.0, metavar="RATE", help="drop connections unanswered")
    p.add_argument("--fault-lose-response", type=float, default=0.0, metavar="RATE",
                   help="accept, then drop the connection (the duplicate case)")
    p.add_argument("--latency", type=float, default=0.0, metavar="S", help="added latency per request")
    p.add_argument("--outage", action="store_true", help="start in an outage (clear it with the admin API)")
    p.set_defaults(func=_main)


def _faults(args: argparse.Namespace) -> Faults:
    rates: dict[int, float] = {}
    for item in args.fault_status:
        code, sep, rate = item.partition("=")
        try:
            rates[int(code)] = float(rate)
        except ValueError:
            raise ValueError(f"--fault-status {item!r} is not CODE=RATE, e.g. --fault-status 503=0.1") from None
        if not sep:
            raise ValueError(f"--fault-status {item!r} is not CODE=RATE, e.g. --fault-status 503=0.1")
    return Faults(status_rates=rates, reset_rate=args.fault_reset, lose_response_rate=args.fault_lose_response,
                  latency_seconds=args.latency, outage=args.outage)


def _pairs(items: list[str], flag: str, form: str, example: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        left, sep, right = item.partition("=")
        if not sep or not left or not right:
            raise ValueError(f"{flag} {item!r} is not {form}, e.g. {flag} {example}")
        out.append((left, right))
    return tuple(out)


def _snippet(emu: Emulator, settings: EmulatorSettings, private_key: Path) -> str:
    lines = [
        "[datacloud]",
        f'login_url = "{emu.url}"',
    ]
    if settings.audiences:
        lines.append(f'audience = "{settings.audiences[0]}"')
    lines += [
        f'client_id = "{settings.client_id}"',
        f'username = "{settings.username}"',
        f'private_key_path = "{private_key}"',
        f'source_name = "{settings.source_name}"',
    ]
    endpoint = next((e for e, o in settings.object_endpoints if o == settings.object_name), None)
    if endpoint is not None:
        lines.append(f'object_endpoint = "{endpoint}"')
    lines.append(f'object_name = "{settings.object_name}"')
    if emu.ca_file is not None:
        lines.append(f'ca_file = "{emu.ca_file}"')
    return "\n".join(lines)


async def _serve(settings: EmulatorSettings, faults: Faults, private_key: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator(settings) as emu:
        emu.set_faults(faults)
        print(f"Data Cloud emulator listening on {emu.url}", flush=True)
        if emu.ca_file is not None:
            print(f"CA certificate: {emu.ca_file}", flush=True)
        print("Paste into the site config:\n" + _snippet(emu, settings, private_key), flush=True)
        await stop.wait()
        print("stopping", flush=True)


def _main(args: argparse.Namespace) -> int:
    try:
        pem = args.public_key.read_bytes()
    except OSError as exc:
        print(f"Error: can't read --public-key {args.public_key}: {exc.strerror}", file=sys.stderr)
        print("Try: openssl rsa -in jwt.key -pubout -out jwt.pub", file=sys.stderr)
        return 2
    try:
        faults = _faults(args)
        settings = EmulatorSettings(
            host=args.host, port=args.port, public_key_pem=pem, client_id=args.client_id,
            username=args.username, source_name=args.source_name, schema_path=args.schema, db_path=args.db,
            tls_dir=args.tls_dir, processing_delay_seconds=args.processing_delay,
            bulk_processing_seconds=args.bulk_processing, rate_limit_rps=args.rate_limit,
            validate_streaming=not args.lenient, reject_unknown_fields=not args.lenient,
            audiences=tuple(args.audience), fire_and_forget=args.fire_and_forget,
            reject_unknown_csv_columns=args.reject_unknown_csv_columns,
            object_endpoints=_pairs(args.object_endpoint, "--object-endpoint", "ENDPOINT=OBJECT",
                                    "solar_panel_event_7f3a=solar_panel_event"))
        with contextlib.suppress(KeyboardInterrupt):
            private_key = (args.private_key or args.public_key.with_suffix(".key")).absolute()
            asyncio.run(_serve(settings, faults, private_key))
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        print("Try: solar-agent emulator --help", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"Error: can't listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        print("Try: another --port, or 0 for a free one", file=sys.stderr)
        return 2
    return 0
