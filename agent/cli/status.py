"""`solar-agent status`: what the running agent is doing, or the backlog it left when it is down.

Also home of the helpers the other socket commands share (`drain`, `outbox requeue`): where the
socket is, and the "agent is NOT running" message with its hint.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from agent.config import DEFAULT_CONFIG_PATH, ENV_CONFIG_PATH, AgentConfig, load_config
from agent.errors import ConfigError, OutboxError
from agent.outbox import read_stats

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
NOT_RUNNING_HINT = "systemctl status solar-agent; journalctl -u solar-agent -n 50"

_DESCRIPTION = f"""\
Show what the running agent is doing, read over its status socket:

  health      OK, DEGRADED or FAILED with the reasons (the README explains each one)
  devices     state, age of the last reading, errors by kind (timeout, crc, exception, ...)
  feeds       MQTT brokers: connected, messages, and why messages gave no reading
  lanes       stream and bulk: rows sent, last success, next retry, last error
  fleet       the gateway's own status records (solar_gateway_status): reported, queued, their lane
  components  only when one failed: restarts and its last error
  outbox      rows waiting, held for the clock, age of the oldest, dead letters, rejected inputs, drops
  clock       synchronised or not (readings are held with provisional times until it is)

When the agent is not running, the outbox file is read read-only instead: the backlog is shown,
nothing is changed, and the exit code is 3.

Exit codes: 0 the agent is running (even when DEGRADED: read the reasons), 2 bad config or
socket unusable (e.g. no permission: use sudo), 3 the agent is not running.
CONFIG defaults to ${ENV_CONFIG_PATH}, else {DEFAULT_CONFIG_PATH}."""

_EPILOG = """\
examples:
  sudo solar-agent status
  sudo solar-agent status --json | jq .outbox
  solar-agent status --socket /run/solar-agent/status.sock     # without reading a config file
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show devices, delivery lanes, outbox and clock of the running agent",
                       description=_DESCRIPTION, epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--json", action="store_true", help="print the raw status document (JSON) instead of a table")
    p.set_defaults(func=_main)


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--socket``, shared by the commands that talk to the running agent."""
    p.add_argument("--config", "-c", metavar="CONFIG", default=None, help="site config file")
    p.add_argument("--socket", metavar="PATH", type=Path, default=None,
                   help="status socket (default: status.socket_path from the config)")


def load_for_socket(args: argparse.Namespace) -> tuple[AgentConfig | None, Path]:
    """The config (None when only ``--socket`` was given and the config cannot be read) and the socket."""
    try:
        cfg = load_config(args.config)
    except ConfigError:
        if args.socket is None:
            raise
        return None, args.socket
    return cfg, args.socket or cfg.status.socket_path


def print_not_running(socket_path: Path, out: TextIO | None = None) -> None:
    out = out or sys.stdout
    print(f"solar-agent: the agent is NOT running (nothing answers on {socket_path})", file=out)
    print(f"Try: {NOT_RUNNING_HINT}", file=out)


def _main(args: argparse.Namespace) -> int:
    from agent.status import fetch_status

    cfg, socket_path = load_for_socket(args)
    status = asyncio.run(fetch_status(socket_path))
    if status is not None:
        if args.json:
            print(json.dumps(status, indent=2, default=str))
        else:
            print(render_status(status))
        return EXIT_OK
    return _agent_down(cfg, socket_path, as_json=args.json)


def _agent_down(cfg: AgentConfig | None, socket_path: Path, *, as_json: bool) -> int:
    doc: dict[str, Any] = {"running": False, "socket": str(socket_path)}
    lines: list[str] = []
    if cfg is None:
        lines.append("outbox   unknown (no readable config; pass --config to see the backlog)")
    else:
        path = cfg.outbox.path
        try:
            stats = read_stats(path)
        except OutboxError as exc:
            lines.append(f"outbox   {path}: {exc.message}" + (f" (Try: {exc.hint})" if exc.hint else ""))
            doc["outbox_error"] = exc.message
        else:
            doc["outbox"] = {"path": str(path), **asdict(stats)}
            age = None if stats.oldest_enqueued_ms is None else (time.time() * 1000 - stats.oldest_enqueued_ms) / 1000
            lines.append(f"outbox   {path} (read-only)")
            lines.append(f"  backlog      {stats.rows} rows, {human_bytes(stats.bytes)} waiting"
                         f"{'' if age is None else f', oldest {human_age(age)} old'}")
            if stats.held:
                lines.append(f"  held         {stats.held} readings waiting for the clock to synchronise")
            lines.append(f"  dead letters {stats.dead_letters}   rejected inputs {stats.rejected_inputs}   "
                         f"dropped when full {stats.dropped_total}")
            lines.append("  Nothing is lost: the agent delivers this backlog when it starts again.")
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        print_not_running(socket_path)
        for line in lines:
            print(line)
    return EXIT_NOT_RUNNING


# -- rendering (pure) -------------------------------------------------------------------------------


def human_age(seconds: float | None) -> str:
    """``None`` -> "never"; else 4s, 3m12s, 2h05m, 3d04h."""
    if seconds is None:
        return "never"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return ["  " + fmt.format(*headers).rstrip()] + ["  " + fmt.format(*r).rstrip() for r in rows]


def render_status(status: dict[str, Any]) -> str:
    """The status document as the technician's table; health first."""
    lines: list[str] = []
    health = status.get("health") or {}
    reasons = list(health.get("reasons") or [])
    if health.get("ok", not reasons):
        lines.append("health   OK")
    else:
        level = str(health.get("level") or "degraded").upper()
        lines.append(f"health   {level} ({len(reasons)} reason{'s' if len(reasons) != 1 else ''})")
        lines += [f"  - {r}" for r in reasons]
    lines.append(f"agent    {status.get('version', '?')}  site {status.get('site', '?')}  "
                 f"up {human_age(status.get('uptime_s'))}  lane {status.get('lane', '?')}")
    devices = status.get("devices") or []
    lines.append("")
    lines.append(f"devices  ({len(devices)})")
    if devices:
        rows = []
        for d in devices:
            errors = ", ".join(f"{k}={v}" for k, v in sorted((d.get("errors") or {}).items()) if v) or "-"
            rows.append([str(d.get("device", "?")), str(d.get("source", "")), str(d.get("state", "?")),
                         human_age(d.get("last_reading_age_s")), str(d.get("readings", 0)), errors])
        lines += _table(["DEVICE", "SOURCE", "STATE", "LAST READING", "READINGS", "ERRORS"], rows)
        for d in devices:
            if d.get("last_error"):
                lines.append(f"  {d.get('device')}: last error: {d['last_error']}")
    else:
        lines.append("  none configured")
    feeds = status.get("feeds") or []
    if feeds:
        lines.append("")
        lines.append(f"feeds    ({len(feeds)})")
        rows = []
        for f in feeds:
            outcomes = f.get("outcomes") or {}
            other = ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()) if k != "reading" and v) or "-"
            rows.append([str(f.get("feed", "?")), "yes" if f.get("connected") else "NO",
                         str(f.get("messages", 0)), str(outcomes.get("reading", 0)),
                         human_age(f.get("last_reading_age_s")), other])
        lines += _table(["FEED", "CONNECTED", "MESSAGES", "READINGS", "LAST READING", "NO READING"], rows)
        for f in feeds:
            if not f.get("connected") and f.get("last_connect_error"):
                lines.append(f"  {f.get('feed')}: {f['last_connect_error']}")
            if f.get("example_topic"):
                lines.append(f"  {f.get('feed')}: e.g. {f['example_topic']} -> {f.get('example_reason')}")
    lanes = status.get("lanes") or {}
    lines.append("")
    lines.append("lanes")
    rows = []
    for name, lane in lanes.items():
        retry = lane.get("retry_in_s")
        rows.append([name, str(lane.get("sent", 0)), human_age(lane.get("last_success_age_s")),
                     "-" if retry is None else human_age(retry), str(lane.get("consecutive_failures", 0)),
                     lane.get("last_error") or "-"])
    lines += _table(["LANE", "SENT", "LAST SUCCESS", "RETRY IN", "FAILURES", "LAST ERROR"], rows)
    lines += _render_fleet(status.get("fleet") or {})
    troubled = {n: c for n, c in (status.get("components") or {}).items()
                if c.get("restarts") or c.get("state") in ("restarting", "failed")}
    if troubled:
        lines.append("")
        lines.append("components")
        lines += _table(["COMPONENT", "STATE", "RESTARTS", "LAST ERROR"],
                        [[n, str(c.get("state")), str(c.get("restarts", 0)), str(c.get("last_error") or "-")]
                         for n, c in troubled.items()])
    ob = status.get("outbox") or {}
    lines.append("")
    lines.append(f"outbox   {ob.get('path', '?')}")
    cap = ob.get("max_bytes") or 0
    used = f" ({100 * ob.get('bytes', 0) / cap:.0f}% of {human_bytes(cap)})" if cap else ""
    lines.append(f"  rows {ob.get('rows', 0)}  bytes {human_bytes(ob.get('bytes'))}{used}  "
                 f"leased {ob.get('leased', 0)}  oldest {human_age(ob.get('oldest_age_s')) if ob.get('rows') else '-'}")
    if ob.get("held"):
        lines.append(f"  held {ob['held']} (readings waiting for the clock to synchronise, then queued)")
    lines.append(f"  dead letters {ob.get('dead_letters', 0)}  rejected inputs {ob.get('rejected_inputs', 0)}  "
                 f"dropped when full {ob.get('dropped_total', 0)}  file {human_bytes(ob.get('file_bytes'))}")
    if ob.get("dead_letters"):
        lines.append("  Try: solar-agent outbox dead-letters (why Data Cloud refused them)")
    if ob.get("rejected_inputs"):
        lines.append("  Try: solar-agent outbox rejected (messages that could not become readings)")
    clock = status.get("clock") or {}
    lines.append("")
    synced = clock.get("synced")
    lines.append(f"clock    {'synchronised' if synced else 'NOT synchronised'} (source {clock.get('source', '?')})")
    if synced is False:
        lines.append("  Try: timedatectl timesync-status (NTP needs UDP 123)")
    return "\n".join(lines)


def _render_fleet(fleet: dict[str, Any]) -> list[str]:
    """The gateway status records: how often, how many, what waits, and why their lane fails."""
    if not fleet:
        return []
    name = fleet.get("object", "solar_gateway_status")
    queued = f"{fleet.get('queued', 0)} queued, lane {fleet.get('lane', '?')}" if "lane" in fleet else \
        "no lanes (the schema file lacks the object)"
    if fleet.get("enabled"):
        head = (f"fleet    {name} every {human_age(fleet.get('interval_s'))}: {fleet.get('reports', 0)} reported, "
                f"last interval {fleet.get('last_interval') or '-'}, {queued}")
    else:
        head = f"fleet    {name} reports off ([fleet] interval_seconds = 0), {queued}"
    lines = ["", head]
    stream = (fleet.get("lanes") or {}).get("stream") or {}
    if stream.get("consecutive_failures"):
        lines.append(f"  last error: {stream.get('last_error') or '-'}")
        lines.append(f"  Try: upload the schema file shipped with this version (it holds {name}) and create a data "
                     f"stream on {name}; the records stay queued until then")
    return lines


__all__ = ["add_config_args", "human_age", "human_bytes", "load_for_socket", "print_not_running", "render_status"]
