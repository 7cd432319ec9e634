"""`solar-agent support-bundle`: one tar.gz with what a maintainer needs to look at a gateway (agent/bundle.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from agent.config import DEFAULT_CONFIG_PATH, ENV_CONFIG_PATH

EXIT_OK = 0
EXIT_FAILED = 1

_DESCRIPTION = f"""\
Write one tar.gz a technician can send to the maintainers, with a MANIFEST.txt of what is inside
and what was skipped and why:

  config/site.toml       the resolved config (it names the secret files, never holds them)
  status.json            the running agent's status and health; when it is down, the outbox's totals
  doctor.txt             the doctor's checks; while the agent runs, without the serial and Modbus
                         checks (two masters on one bus garble each other)
  outbox/                totals, the newest 100 dead letters and 100 rejected inputs
  versions.json          agent, Python, SQLite, platform and library versions
  systemd/               the unit file and its drop-ins, when present
  journal.txt            the last 2000 journal lines of the unit, when readable (sudo)

No secret goes in: the private key, passwords and tokens are never copied, and every file is
scrubbed of token, key and password material (including the exact contents of the secret files
the config names) before it is written. The archive is created with mode 0600.

Exit codes: 0 written (read the "skipped" lines), 1 the archive could not be written, 2 usage error.
CONFIG defaults to ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH}."""

_EPILOG = """\
examples:
  sudo solar-agent support-bundle
  sudo solar-agent support-bundle -o /tmp/site-042.tar.gz
  sudo solar-agent support-bundle --config /etc/solar-agent/site.toml --no-journal
  tar -tzf solar-agent-support-*.tar.gz          # what is inside; MANIFEST.txt says why
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("support-bundle", help="write one tar.gz (config, status, doctor, outbox, versions, journal) "
                                              "for the maintainers, without secrets",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", metavar="FILE", type=Path, default=None,
                   help="the archive to write (default: ./solar-agent-support-<host>-<UTC time>.tar.gz)")
    p.add_argument("--config", "-c", metavar="CONFIG", default=None, help="site config file")
    p.add_argument("--socket", metavar="PATH", type=Path, default=None,
                   help="status socket (default: status.socket_path from the config)")
    p.add_argument("--credentials-directory", metavar="DIR", type=Path, default=None,
                   help="where credential:NAME paths point (default: $CREDENTIALS_DIRECTORY, else the "
                        "config file's directory, where the unit loads them from)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up on one doctor check after this long (default 10)")
    p.add_argument("--no-journal", action="store_true", help="leave the journal out")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from agent.bundle import BundleOptions, build_bundle, default_output, write_bundle

    out: Path = args.output or default_output()
    if out.exists() and out.is_dir():
        print(f"Error: {out} is a directory", file=sys.stderr)
        print(f"Try: -o {out / default_output().name}", file=sys.stderr)
        return 2

    def progress(part: str, what: str) -> None:
        print(f"support-bundle: {part:10} {what}", flush=True)

    opts = BundleOptions(config=args.config, socket=args.socket, credentials_dir=args.credentials_directory,
                         timeout_seconds=args.timeout, journal=not args.no_journal)
    # The checks report their failures in doctor.txt; library logs would only repeat them on the
    # screen. The levels are restored afterwards (main() may run in a process that goes on).
    quiet = () if args.verbose else ("pymodbus", "agent", "aiohttp")
    saved = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        bundle = asyncio.run(build_bundle(opts, progress))
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    try:
        size = write_bundle(bundle, out)
    except OSError as exc:
        print(f"Error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        print("Try: -o a file in a directory you can write to (e.g. /tmp), or sudo", file=sys.stderr)
        return EXIT_FAILED
    print(f"support-bundle: wrote {out} ({size} bytes, {len(bundle.entries) + 1} files, "
          f"{len(bundle.skipped)} part(s) skipped: see MANIFEST.txt)")
    print("Send this file to the maintainers; it holds no key, password or token.")
    return EXIT_OK
