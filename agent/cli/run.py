"""`solar-agent run`: the service itself (what systemd starts)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from agent.config import DEFAULT_CONFIG_PATH, ENV_CONFIG_PATH, load_config

_DESCRIPTION = f"""\
Run the agent in the foreground: read every configured Modbus bus and MQTT feed, commit each
reading to the outbox, and deliver the outbox to Data Cloud (streaming, bulk after long outages).

Logs go to stdout as key=value lines (journald adds priorities when JOURNAL_STREAM is set).
Signals: SIGTERM/SIGINT stop cleanly (exit 0, within 20 s in every state); SIGHUP reloads the
config if it is valid and keeps the running one otherwise. A component that fails (a source, a
delivery lane) is restarted on its own and shown in `solar-agent status`. Exit 70 means the outbox
could not commit (disk full or I/O error): systemd restarts the service, and nothing that was
accepted is lost.

CONFIG defaults to ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH}. Check it first with
`solar-agent check-config`."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="run the agent (the systemd service's command)", description=_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", metavar="CONFIG", default=None, help="site config file")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from agent.log import setup_logging
    from agent.runtime import STOP_DEADLINE_SECONDS, Agent

    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    # pymodbus logs every timeout at ERROR with a frame dump; the Modbus source logs them itself, rate-limited.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    cfg = load_config(args.config)
    return asyncio.run(Agent(cfg, hard_exit_seconds=STOP_DEADLINE_SECONDS).run())
