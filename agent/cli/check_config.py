"""`solar-agent check-config [PATH]`: validate the site config and show what the agent would use."""

from __future__ import annotations

import argparse
import sys

from agent.config import (
    DEFAULT_CONFIG_PATH,
    ENV_CONFIG_PATH,
    AgentConfig,
    check_against_schema,
    config_errors,
    device_count,
    load_config,
    resolve_config_path,
    to_toml,
)
from agent.errors import ConfigError, SchemaError
from agent.records import load_schema

EXIT_OK = 0
EXIT_INVALID = 2  # same as agent.cli.EXIT_USAGE: a configuration error

_DESCRIPTION = f"""\
Check a site config file before (re)starting the agent. It checks:

  * TOML syntax (with the line and column of a mistake);
  * every key is known (typos get a "did you mean"), every value has the right type and range
    (no coercion: write 10_000_000, not "10MB");
  * the relations between keys: rtu buses need a port, tcp buses a host, unique bus, feed and
    device names and unit ids, mqtt:// or mqtts:// broker URLs, an https login_url (http only
    for a loopback emulator), a JWT audience Salesforce accepts (https://login.salesforce.com,
    https://test.salesforce.com for sandboxes, or an Experience Cloud site; never a My Domain,
    which goes in login_url), a token_file for a TCP status listener, ...;
  * no secret is written in the file (only paths to secret files, or credential:NAME);
  * the ingestion schema file loads and matches the Data Cloud rules.

It never reads secret files and never connects anywhere (that is `solar-agent doctor`).
On success it prints the resolved config (defaults filled in, paths absolute) and an OK line,
exit code 0. Otherwise it prints every error as "Error: ..." with a "Try: ..." hint, exit code 2.

PATH defaults to ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH}."""

_EPILOG = """\
examples:
  solar-agent check-config /etc/solar-agent/site.toml
  solar-agent check-config --quiet config/site.example.toml
  CREDENTIALS_DIRECTORY=/etc/credstore solar-agent check-config   # a file using credential:NAME
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check-config",
        help="validate the site config file and print the resolved configuration",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", metavar="PATH",
                   help=f"config file (default: ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH})")
    p.add_argument("--credentials-directory", metavar="DIR",
                   help="where credential:NAME paths point (default: $CREDENTIALS_DIRECTORY, set by systemd)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only the verdict, not the resolved config")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    path = resolve_config_path(args.path)
    try:
        cfg = load_config(path, credentials_dir=args.credentials_directory)
    except ConfigError as exc:
        return _report(str(path), config_errors(exc))
    try:
        schema = load_schema(cfg.datacloud.schema_path, cfg.datacloud.object_name)
    except SchemaError as exc:
        _print_error(exc.message,
                     exc.hint or "set datacloud.schema_path to the schema uploaded to the connector")
        print(f"{path}: the ingestion schema is not valid", file=sys.stderr)
        return EXIT_INVALID
    errors = check_against_schema(cfg, schema)
    if errors:
        return _report(str(path), errors)
    if not args.quiet:
        print(to_toml(cfg))
        print(_datacloud_summary(cfg))
    counts = ", ".join((
        _count(len(cfg.modbus), "modbus bus", "modbus buses"),
        _count(device_count(cfg), "device", "devices"),
        _count(len(cfg.mqtt), "mqtt feed", "mqtt feeds"),
    ))
    print(f"OK: {path} is valid ({counts}; schema {len(schema.fields)} fields)")
    return EXIT_OK


def _datacloud_summary(cfg: AgentConfig) -> str:
    """The login pair and the object's two names, spelled out: each pair is two settings."""
    dc = cfg.datacloud
    lines = [f"Data Cloud login: the token request goes to {dc.login_url.rstrip('/')}/services/oauth2/token "
             f"(datacloud.login_url); the JWT names audience {dc.audience} (datacloud.audience)."]
    if dc.audience.rstrip("/") != dc.login_url.rstrip("/"):
        lines.append("  Two settings on purpose: the request may go to a My Domain, the audience stays a "
                     "Salesforce login server (or an Experience Cloud site).")
    lines.append(f"Data Cloud records: connector {dc.source_name}, object endpoint {dc.endpoint_name} "
                 f"(datacloud.object_endpoint), checked against schema object {dc.object_name} "
                 "(datacloud.object_name).")
    if cfg.fleet.interval_seconds > 0:
        lines.append(f"Gateway status records: one every {cfg.fleet.interval_seconds:g}s ([fleet] interval_seconds) "
                     f"to object endpoint {dc.status_endpoint_name} (datacloud.status_object_endpoint).")
    else:
        lines.append("Gateway status records: off ([fleet] interval_seconds = 0).")
    return "\n".join(lines)


def _report(file: str, errors: tuple[ConfigError, ...] | list[ConfigError]) -> int:
    for err in errors:
        _print_error(err.message, err.hint)
    print(f"{file}: {_count(len(errors), 'error', 'errors')}; the agent will not start with this file",
          file=sys.stderr)
    return EXIT_INVALID


def _print_error(message: str, hint: str | None) -> None:
    print(f"Error: {message}", file=sys.stderr)
    if hint:
        print(f"Try: {hint}", file=sys.stderr)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"
