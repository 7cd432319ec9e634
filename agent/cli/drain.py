"""`solar-agent drain --now`: ask the running agent to deliver its backlog now."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from agent.cli.status import add_config_args, load_for_socket, print_not_running

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

_DESCRIPTION = """\
Ask the running agent (over its status socket) to deliver what waits in the outbox now, instead
of at the next flush interval, and cancel any retry backoff. Readings just polled and still
waiting for their group commit (outbox.commit_interval_ms) are committed first and go too. With
--bulk, the old part of the backlog goes to a Data Cloud bulk job now as well (useful after an
outage, when you do not want to wait for drain.bulk_after_seconds). The command waits for that delivery attempt (at most
about 10 s, longer for --bulk) and prints what happened.

Nothing is deleted: rows leave the outbox only when Data Cloud accepted them.

Exit codes: 0 the attempt went through (or nothing was waiting), 1 the attempt failed (the error
is shown; the agent keeps retrying by itself), 2 usage or config error, 3 the agent is not running."""

_EPILOG = """\
examples:
  sudo solar-agent drain --now
  sudo solar-agent drain --now --bulk        # backfill an outage with a bulk job right away
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("drain", help="deliver the outbox now (ask the running agent)", description=_DESCRIPTION,
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--now", action="store_true", help="deliver now (required: it says what the command does)")
    p.add_argument("--bulk", action="store_true", help="also start a bulk job for the old part of the backlog")
    add_config_args(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from agent.status import post_control

    if not args.now:
        print("Error: nothing to do without --now", file=sys.stderr)
        print("Try: solar-agent drain --now", file=sys.stderr)
        return EXIT_USAGE
    _, socket_path = load_for_socket(args)
    path = f"/control/drain?bulk={1 if args.bulk else 0}"
    result = asyncio.run(post_control(socket_path, path, timeout_seconds=60.0 if args.bulk else 30.0))
    if result is None:
        print_not_running(socket_path)
        print("The outbox keeps the backlog; the agent delivers it when it starts.")
        return EXIT_NOT_RUNNING
    return report(result)


def report(r: dict[str, Any]) -> int:
    """Print the agent's answer; the exit code says whether the attempt went through."""
    before, after = r.get("rows_before", 0), r.get("rows_after", 0)
    held = r.get("held", 0)
    if before == 0:
        if held:
            print(f"drain: nothing to deliver yet: {held} reading(s) are held until the clock synchronises "
                  "(then they are re-stamped, queued and delivered)")
            print("Try: timedatectl timesync-status (NTP needs UDP 123)")
        else:
            print("drain: the outbox was empty, nothing to deliver")
        return EXIT_OK
    print(f"drain: outbox {before} -> {after} rows; streamed {r.get('streamed', 0)} rows in "
          f"{r.get('stream_requests', 0)} request(s); bulk {r.get('bulk_sent', 0)} rows in "
          f"{r.get('bulk_jobs', 0)} job(s); lane {r.get('lane', '?')}")
    error = r.get("last_error") or ""
    delivered = r.get("streamed", 0) + r.get("bulk_sent", 0)
    if error and delivered == 0:
        retry = r.get("retry_in_s")
        print(f"Error: delivery failed: {error}" + ("" if retry is None else f" (next retry in {retry:.0f}s)"),
              file=sys.stderr)
        print("Try: solar-agent status (lanes), then journalctl -u solar-agent -n 50; 429 and 5xx recover by "
              "themselves, auth errors need the connected app checked (solar-agent doctor)", file=sys.stderr)
        return EXIT_FAILED
    if r.get("timed_out"):
        print("drain: still delivering in the background (the backlog is large); watch it with "
              "`solar-agent status`")
    if held:
        print(f"note: {held} reading(s) held until the clock synchronises; they are delivered after")
    if r.get("dead_letters"):
        print(f"note: {r['dead_letters']} dead letter(s) in the outbox; see `solar-agent outbox dead-letters`")
    return EXIT_OK
