"""`solar-agent doctor`: check a site end to end, one PASS/FAIL/WARN line per check."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import TYPE_CHECKING

from agent.config import DEFAULT_CONFIG_PATH, ENV_CONFIG_PATH

if TYPE_CHECKING:
    from agent.clock import ClockGuard

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_DESCRIPTION = f"""\
Check everything the agent needs, in the order you would fix it, and print one line per check:
PASS, FAIL (with a "Try:" line) or WARN.

  config              the site config and the ingestion schema are valid
  private key         datacloud.private_key_path is readable and mode 0600
  serial port BUS     each rtu bus's port exists and opens (dialout group)
  modbus BUS/unitN    each device answers and is SunSpec; the models found
  mqtt FEED           each broker accepts a connection and grants the subscriptions
                      (under its own client id: the agent's session is left alone)
  datacloud login     a token is obtained (JWT bearer + a360 exchange)
  datacloud test      a synthetic record passes /actions/test (a dry run: nothing is stored)
  datacloud status    with [fleet] reports on: a synthetic gateway status record passes too
                      (the connector knows solar_gateway_status)
  clock               the system clock is synchronised (WARN when not)
  disk                free space vs outbox.min_free_bytes
  outbox              PRAGMA quick_check, read-only (fine while the agent runs)

Each check gives up after --timeout seconds, so doctor never hangs. On an RS-485 bus, stop the
agent first (systemctl stop solar-agent): two masters on one bus garble each other's requests.

Exit codes: 0 no FAIL (WARN allowed), 1 at least one FAIL, 2 usage error or a config that cannot be used.
CONFIG defaults to ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH}."""

_EPILOG = """\
examples:
  sudo solar-agent doctor
  sudo solar-agent doctor --config /etc/solar-agent/site.toml --timeout 5
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check config, key, devices, brokers, Data Cloud login, clock, disk, outbox",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="CONFIG", default=None, help="site config file")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                   help="give up on one check after this long (default 15)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    quiet = () if args.verbose else ("pymodbus", "agent", "aiohttp")
    # The checks report failures themselves; library logs would repeat them as noise. The levels
    # are restored afterwards: main() may run in a process that goes on (tests, a REPL).
    saved = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return asyncio.run(run(args.config, timeout_seconds=args.timeout))
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


async def run(config: str | None, *, timeout_seconds: float = 15.0, clock: ClockGuard | None = None) -> int:
    """Print every check as it completes and the summary; returns the exit code."""
    from agent.doctor import run_checks

    counts = {"PASS": 0, "WARN": 0, "FAIL": 0}
    config_failed = False
    async for result in run_checks(config, clock=clock, timeout_seconds=timeout_seconds):
        counts[result.status] += 1
        config_failed = config_failed or (result.name == "config" and result.status == "FAIL")
        print(result.line(), flush=True)
        if result.hint and result.status != "PASS":
            print(f"     Try: {result.hint}", flush=True)
    verdict = "some checks FAILED" if counts["FAIL"] else "all checks passed"
    if counts["WARN"] and not counts["FAIL"]:
        verdict += " (read the WARN lines)"
    print(f"doctor: {counts['PASS']} passed, {counts['WARN']} warning(s), {counts['FAIL']} failed: {verdict}")
    if config_failed:
        return EXIT_USAGE          # like every command: a config that cannot be used is exit 2
    return EXIT_FAILED if counts["FAIL"] else EXIT_OK
