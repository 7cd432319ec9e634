"""The ``solar-agent`` command. One module per subcommand group; each has ``register(subparsers)``.

Exit codes: 0 ok, 1 the check or operation failed, 2 usage or configuration error, 3 agent not
running (status). Errors print ``Error: ...`` and, when we know one, ``Try: ...``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import (
    check_config,
    demo,
    doctor,
    drain,
    emulator,
    keygen,
    outbox,
    run,
    scan,
    simulate,
    status,
    support_bundle,
)
from agent.errors import AgentError

_GROUPS = (run, check_config, status, doctor, scan, outbox, drain, support_bundle, keygen, emulator, simulate, demo)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="solar-agent",
        description=(
            "Gateway agent that reads solar inverters (SunSpec Modbus RTU/TCP, MQTT) and delivers every "
            "reading to Salesforce Data Cloud through a durable local outbox."
        ),
        epilog=("Start here on a new site: solar-agent check-config /etc/solar-agent/site.toml, "
                "then solar-agent doctor."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"solar-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # `solar-agent status | head`: the reader left. Not an error of ours; say nothing more (stdout
        # is gone) and keep the interpreter from complaining about the closed pipe at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except AgentError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"Try: {exc.hint}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
