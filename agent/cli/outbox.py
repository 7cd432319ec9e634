"""`solar-agent outbox ...`: look into the outbox file, requeue dead letters, export the backlog.

``stats``, ``peek``, ``dead-letters`` and ``export`` open the SQLite file read-only (``mode=ro``),
so they work the same whether the agent runs or not and never change the queue. ``requeue``
changes it: through the running agent's socket when it runs, else by opening the outbox itself
(which takes the outbox lock, so it can never race a running agent).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from agent.cli.status import add_config_args, human_age, human_bytes, load_for_socket
from agent.config import AgentConfig, load_config
from agent.errors import OutboxError, SchemaError
from agent.outbox import open_readonly, read_stats
from agent.outbox.store import BULK_LEASE_OF_ROW
from agent.records import CsvEncoder, format_time, load_schema

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

BUSY_TIMEOUT_MS = 5000

_DESCRIPTION = """\
Look into the outbox (the SQLite file of readings waiting for Data Cloud) and act on it.

  stats          rows, bytes, age of the oldest, dead letters, drops (read-only)
  peek           the oldest waiting rows (read-only)
  dead-letters   records Data Cloud refused, with its reason (read-only)
  rejected       inputs that could not become readings (poison MQTT messages), with the reason (read-only)
  requeue        put dead letters back in the queue (after fixing the cause, e.g. the schema)
  export         write the backlog as bulk-format CSV files for a manual upload (read-only)

The read-only commands work whether the agent runs or not. requeue goes through the running
agent (status socket) when it runs, else opens the outbox directly.
Exit codes: 0 ok, 1 the operation failed, 2 usage or config error."""

_EPILOG = """\
examples:
  solar-agent outbox stats
  solar-agent outbox peek -n 5
  solar-agent outbox dead-letters -n 50
  solar-agent outbox rejected --payload
  sudo solar-agent outbox requeue --all
  sudo solar-agent outbox requeue 5f1c...e2 9ab0...41
  solar-agent outbox export --out /tmp/backlog --max-file-bytes 100000000
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("outbox", help="inspect the outbox, requeue dead letters, export the backlog as CSV",
                       description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    cmds = p.add_subparsers(dest="outbox_command", metavar="ACTION")
    cmds.required = True
    raw = argparse.RawDescriptionHelpFormatter
    # `outbox stats --config X` as well as `outbox --config X stats`: the action's copies of the
    # options default to SUPPRESS, so they never overwrite a value given before the action.
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--config", "-c", metavar="CONFIG", default=argparse.SUPPRESS, help="site config file")
    after.add_argument("--socket", metavar="PATH", type=Path, default=argparse.SUPPRESS,
                       help="status socket (default: status.socket_path from the config)")

    s = cmds.add_parser("stats", parents=[after],
                        help="rows, bytes, oldest age, dead letters, drops", formatter_class=raw,
                        description="Totals of the outbox file, read-only.",
                        epilog="example:\n  solar-agent outbox stats")
    s.set_defaults(func=_stats)

    s = cmds.add_parser("peek", parents=[after],
                        help="the oldest waiting rows", formatter_class=raw,
                        description="The oldest rows in the queue (leased or not), read-only: when they were "
                                    "stored, attempts, and the record itself.",
                        epilog="example:\n  solar-agent outbox peek -n 5")
    s.add_argument("-n", type=int, default=10, metavar="N", help="how many rows (default 10)")
    s.set_defaults(func=_peek)

    s = cmds.add_parser("dead-letters", parents=[after],
                        help="records Data Cloud refused, with the reason", formatter_class=raw,
                        description="Records Data Cloud refused (HTTP 400), oldest first, with the server's "
                                    "reason. Fix the cause (schema, config), then `outbox requeue`.",
                        epilog="example:\n  solar-agent outbox dead-letters -n 50")
    s.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    s.set_defaults(func=_dead_letters)

    s = cmds.add_parser(
        "rejected", parents=[after], formatter_class=raw,
        help="inputs that could not become readings (poison MQTT messages)",
        description="Inputs the agent received but could not turn into readings (a payload the feed's "
                    "profile cannot decode), newest first, with the reason and how often each was seen. "
                    "They were recorded and then acknowledged, so the broker does not send them again. "
                    "The table keeps the newest 1000 distinct inputs. Read-only.",
        epilog="examples:\n  solar-agent outbox rejected\n  solar-agent outbox rejected -n 5 --payload")
    s.add_argument("-n", type=int, default=20, metavar="N", help="how many (default 20)")
    s.add_argument("--payload", action="store_true", help="show the first bytes of each payload")
    s.set_defaults(func=_rejected)

    s = cmds.add_parser("requeue", parents=[after],
                        help="put dead letters back in the queue", formatter_class=raw,
                        description="Move dead letters back into the queue so they are sent again. Through "
                                    "the running agent when it runs; else opens the outbox itself.",
                        epilog="examples:\n  sudo solar-agent outbox requeue --all\n"
                               "  sudo solar-agent outbox requeue EVENT_ID [EVENT_ID ...]")
    s.add_argument("event_ids", nargs="*", metavar="EVENT_ID", help="event ids from `outbox dead-letters`")
    s.add_argument("--all", action="store_true", help="every dead letter")
    s.set_defaults(func=_requeue)

    s = cmds.add_parser(
        "export", parents=[after], formatter_class=raw,
        help="write the backlog as bulk-format CSV files + MANIFEST.txt",
        description="Write every waiting row as Data Cloud bulk-format CSV (header in schema order, "
                    "files no larger than --max-file-bytes) plus MANIFEST.txt (row count, time range, "
                    "how to upload with a bulk job). Read-only: the rows STAY in the outbox until Data "
                    "Cloud accepts them from the agent; an upload of the files is an upsert by event_id, "
                    "so sending both is harmless.",
        epilog="example:\n  solar-agent outbox export --out /tmp/backlog")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="directory to write into (created)")
    s.add_argument("--max-file-bytes", type=int, default=150_000_000, metavar="N",
                   help="largest CSV file (default 150000000, the bulk API limit)")
    s.set_defaults(func=_export)


# -- read-only access ------------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> AgentConfig:
    return load_config(args.config)


def _fail(exc: OutboxError) -> int:
    print(f"Error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"Try: {exc.hint}", file=sys.stderr)
    return EXIT_FAILED


def _when(ms: int | None) -> str:
    return "-" if ms is None else format_time(ms)


def _now_ms() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp() * 1000)


def _stats(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        st = read_stats(cfg.outbox.path)
    except OutboxError as exc:
        return _fail(exc)
    age = None if st.oldest_enqueued_ms is None else (_now_ms() - st.oldest_enqueued_ms) / 1000
    cap = cfg.outbox.max_bytes
    print(f"outbox        {cfg.outbox.path}")
    print(f"rows          {st.rows} ({st.leased} leased by a delivery in progress)")
    print(f"bytes         {human_bytes(st.bytes)} of {human_bytes(cap)} cap ({100 * st.bytes / cap:.1f}%)"
          if cap else f"bytes         {human_bytes(st.bytes)}")
    print(f"oldest        {'-' if age is None else human_age(age) + ' old (' + _when(st.oldest_enqueued_ms) + ')'}")
    print(f"held          {st.held} (readings waiting for the clock to synchronise, then re-stamped and queued)")
    print(f"dead letters  {st.dead_letters}")
    print(f"rejected      {st.rejected_inputs} distinct inputs that could not become readings "
          f"(`solar-agent outbox rejected`)")
    print(f"dropped       {st.dropped_total} (by when_full={cfg.outbox.when_full}, since the file was created)")
    print(f"file          {human_bytes(st.file_bytes)} (with WAL)")
    return EXIT_OK


def _peek(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        with open_readonly(cfg.outbox.path) as conn:
            rows = conn.execute(
                f"SELECT seq, event_id, enqueued_ms, attempts, {_lease_col(conn)}, retry_at_ms, payload, "
                f"{_object_col(conn)} "
                "FROM events ORDER BY seq LIMIT ?", (max(0, args.n),)).fetchall()
    except OutboxError as exc:
        return _fail(exc)
    if not rows:
        held = _held_count(cfg)
        if held:
            print(f"no rows in the queue, but {held} reading(s) are held until the clock synchronises "
                  "(then they are re-stamped and queued)")
            print("Try: timedatectl timesync-status (NTP needs UDP 123)")
        else:
            print("the outbox is empty: everything was delivered")
        return EXIT_OK
    for seq, event_id, enqueued_ms, attempts, lease_id, retry_at_ms, payload, obj in rows:
        state = f"leased #{lease_id}" if lease_id is not None else (
            f"retry at {_when(retry_at_ms)}" if retry_at_ms and retry_at_ms > _now_ms() else "waiting")
        print(f"#{seq} {event_id}  stored {_when(enqueued_ms)}  attempts {attempts}  {state}{_of(obj)}")
        print(f"    {bytes(payload).decode('utf-8', 'replace')}")
    return EXIT_OK


def _dead_letters(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        with open_readonly(cfg.outbox.path) as conn:
            total = conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            rows = conn.execute(
                f"SELECT event_id, reason, rejected_ms, payload, {_object_col(conn, 'dead_letters')} FROM dead_letters "
                "ORDER BY rejected_ms, event_id LIMIT ?", (max(0, args.n),)).fetchall()
    except OutboxError as exc:
        return _fail(exc)
    if not rows:
        print("no dead letters: Data Cloud accepted every record so far")
        return EXIT_OK
    for event_id, reason, rejected_ms, payload, obj in rows:
        print(f"{event_id}  rejected {_when(rejected_ms)}{_of(obj)}")
        print(f"    reason: {reason}")
        print(f"    record: {bytes(payload).decode('utf-8', 'replace')}")
    print(f"{len(rows)} of {total} dead letter(s) shown")
    print("Try: fix the cause (schema in Data Cloud, site config), then: solar-agent outbox requeue --all")
    return EXIT_OK


def _object_col(conn: sqlite3.Connection, table: str = "events") -> str:
    """The ``object`` column, or NULL in a file the agent has not migrated yet (readings only)."""
    return "object" if any(r[1] == "object" for r in conn.execute(f"PRAGMA table_info({table})")) else "NULL"


def _lease_col(conn: sqlite3.Connection) -> str:
    """A row's bulk lease: in the row, or a range of seqs (bulk_ranges) in a file migrated to have them."""
    ranges = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bulk_ranges'").fetchone()
    return BULK_LEASE_OF_ROW if ranges else "lease_id"


def _of(obj: str | None) -> str:
    """Rows of another object than the readings say which (the gateway's status records)."""
    return "" if obj is None else f"  object {obj}"


def _held_count(cfg: AgentConfig) -> int:
    try:
        return read_stats(cfg.outbox.path).held
    except OutboxError:
        return 0


def _rejected(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        with open_readonly(cfg.outbox.path) as conn:
            has = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'rejected_inputs'").fetchone()
            total, seen = conn.execute("SELECT count(*), coalesce(sum(count), 0) FROM rejected_inputs").fetchone() \
                if has else (0, 0)
            rows = conn.execute(
                "SELECT source, topic, reason, detail, payload_bytes, payload_head, first_ms, last_ms, count "
                "FROM rejected_inputs ORDER BY last_ms DESC, id DESC LIMIT ?", (max(0, args.n),)).fetchall() \
                if has else []
    except OutboxError as exc:
        return _fail(exc)
    if not rows:
        print("no rejected inputs: every message so far could be decoded")
        return EXIT_OK
    for source, topic, reason, detail, size, head, first_ms, last_ms, count in rows:
        times = f"seen {count}x, last {_when(last_ms)}" + ("" if count == 1 else f", first {_when(first_ms)}")
        print(f"{source}  {reason}  {times}")
        print(f"    topic:  {topic}")
        print(f"    error:  {detail}")
        if args.payload:
            shown = bytes(head).decode("utf-8", "backslashreplace")
            more = f" ... ({size} bytes in all)" if size > len(head) else ""
            print(f"    payload: {shown}{more}")
    print(f"{len(rows)} of {total} distinct rejected input(s) shown ({seen} messages in all)")
    print("Try: check the feed's profile against what the device publishes (README: supported devices)")
    return EXIT_OK


# -- requeue ----------------------------------------------------------------------------------------------


def _requeue(args: argparse.Namespace) -> int:
    from agent.status import post_control

    if args.all == bool(args.event_ids):
        print("Error: give either --all or one or more EVENT_IDs", file=sys.stderr)
        print("Try: solar-agent outbox dead-letters (to see the ids), then solar-agent outbox requeue --all",
              file=sys.stderr)
        return EXIT_USAGE
    cfg, socket_path = load_for_socket(args)
    body = {"all": True} if args.all else {"ids": list(args.event_ids)}
    answer = asyncio.run(post_control(socket_path, "/control/requeue", body))
    if answer is not None:
        moved = int(answer.get("requeued", 0))
        how = "by the running agent"
    else:
        if cfg is None:
            print("Error: the agent is not running and no config names the outbox", file=sys.stderr)
            print("Try: solar-agent outbox requeue --config /etc/solar-agent/site.toml ...", file=sys.stderr)
            return EXIT_USAGE
        try:
            moved = asyncio.run(_requeue_directly(cfg, None if args.all else list(args.event_ids)))
        except OutboxError as exc:
            return _fail(exc)
        how = "in the outbox file (the agent is not running; it sends them when it starts)"
    wanted = "all" if args.all else str(len(args.event_ids))
    print(f"requeued {moved} dead letter(s) of {wanted} asked, {how}")
    if not args.all and moved < len(args.event_ids):
        print(f"Error: {len(args.event_ids) - moved} of the ids are not dead letters (already requeued, or "
              "mistyped)", file=sys.stderr)
        print("Try: solar-agent outbox dead-letters (the ids to copy)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _requeue_directly(cfg: AgentConfig, ids: list[str] | None) -> int:
    from agent.outbox import Outbox

    async with Outbox(cfg.outbox) as ob:
        return await ob.requeue_dead_letters(ids)


# -- export -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportResult:
    files: tuple[Path, ...]
    rows: int
    first_time: str | None
    last_time: str | None
    object_name: str = ""                 # the object endpoint the files are for (a bulk job's "object")
    others: tuple[ExportResult, ...] = ()  # the other objects' files (gateway status records)


@dataclass(frozen=True, slots=True)
class ExportObject:
    """One object to export: which rows (``obj``: None = the readings), its CSV encoder, its endpoint name."""

    obj: str | None
    encoder: CsvEncoder
    object_name: str


def export_backlog(outbox_path: Path, out_dir: Path, encoder: CsvEncoder, *, max_file_bytes: int,
                   object_name: str, source_name: str, chunk_rows: int = 5000,
                   others: tuple[ExportObject, ...] = ()) -> ExportResult:
    """Write every queued row as bulk CSV files (each <= ``max_file_bytes``) and MANIFEST.txt.

    The readings go to ``<object_name>-NNNN.csv``; each of ``others`` (the gateway status records)
    to files of its own, with its own header: a bulk job takes one object.
    """
    targets = (ExportObject(None, encoder, object_name), *others)
    for t in targets:
        if max_file_bytes <= len(t.encoder.header()):
            raise OutboxError(f"--max-file-bytes {max_file_bytes} is smaller than the CSV header",
                              hint="use at least 1000000")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[ExportResult] = []
    with open_readonly(outbox_path) as conn:
        conn.execute("BEGIN")   # one snapshot: rows the agent delivers meanwhile do not tear the export
        # An outbox the agent has not migrated yet (migration 4) holds readings only.
        has_object = any(r[1] == "object" for r in conn.execute("PRAGMA table_info(events)"))
        for t in targets:
            if t.obj is not None and not has_object:
                continue
            cond, args = ("", ()) if not has_object else (
                ("AND object IS NULL", ()) if t.obj is None else ("AND object = ?", (t.obj,)))
            results.append(_export_rows(conn, out_dir, t, cond, args, max_file_bytes, chunk_rows))
        conn.execute("COMMIT")
    main, *rest = results
    result = ExportResult(main.files, main.rows, main.first_time, main.last_time, object_name,
                          tuple(r for r in rest if r.rows))
    (out_dir / "MANIFEST.txt").write_text(_manifest(result, outbox_path, source_name, max_file_bytes),
                                          encoding="utf-8")
    return result


def _export_rows(conn: sqlite3.Connection, out_dir: Path, t: ExportObject, cond: str, args: tuple[str, ...],
                 max_file_bytes: int, chunk_rows: int) -> ExportResult:
    header = t.encoder.header()
    files: list[Path] = []
    rows = 0
    first = last = None
    current = None
    size = 0
    try:
        after = 0
        while True:
            chunk = conn.execute(f"SELECT seq, time_ms, payload FROM events WHERE seq > ? {cond} ORDER BY seq LIMIT ?",
                                 (after, *args, chunk_rows)).fetchall()
            if not chunk:
                break
            after = chunk[-1][0]
            for _, time_ms, payload in chunk:
                line = t.encoder.rows([bytes(payload)])
                if len(header) + len(line) > max_file_bytes:
                    raise OutboxError(f"one row is {len(line)} bytes, over --max-file-bytes {max_file_bytes}",
                                      hint="raise --max-file-bytes")
                if current is None or size + len(line) > max_file_bytes:
                    if current is not None:
                        current.close()
                    path = out_dir / f"{t.object_name}-{len(files) + 1:04d}.csv"
                    current = path.open("wb")
                    files.append(path)
                    current.write(header)
                    size = len(header)
                current.write(line)
                size += len(line)
                rows += 1
                first = time_ms if first is None else min(first, time_ms)
                last = time_ms if last is None else max(last, time_ms)
    finally:
        if current is not None:
            current.close()
    return ExportResult(tuple(files), rows, None if first is None else format_time(first),
                        None if last is None else format_time(last), t.object_name)


def _manifest(r: ExportResult, outbox_path: Path, source_name: str, max_file_bytes: int) -> str:
    parts = []
    for part in (r, *r.others):
        names = "\n".join(f"  {p.name}  {p.stat().st_size} bytes" for p in part.files) or \
            "  (none: the outbox was empty)"
        parts.append(f"""object     {part.object_name} (Ingestion API connector source {source_name})
rows       {part.rows}
time range {part.first_time or '-'} .. {part.last_time or '-'} (event times, UTC)
files (CSV, RFC 4180, header in schema order, each <= {max_file_bytes} bytes):
{names}
""")
    objects = ", ".join(f'"{part.object_name}"' for part in (r, *r.others))
    return f"""solar-agent outbox export
exported   {format_time(_now_ms())} from {outbox_path}

{chr(10).join(parts)}
These rows are STILL IN THE OUTBOX: the agent keeps them until Data Cloud accepts them, and will
send them itself when it can. Uploading these files as well is harmless: records are upserted by
event_id, so a row sent twice lands once.

To upload them yourself with a Data Cloud bulk job (Ingestion API, at most 100 files and 150 MB
per file per job; one job per object, {objects}):
  1. POST   https://<DC instance>/api/v1/ingest/jobs
            {{"object": "{r.object_name}", "sourceName": "{source_name}", "operation": "upsert"}}
  2. PUT    https://<DC instance>/api/v1/ingest/jobs/<job id>/batches   (Content-Type: text/csv),
            once per file of that object
  3. PATCH  https://<DC instance>/api/v1/ingest/jobs/<job id>   {{"state": "UploadComplete"}}
  4. GET    https://<DC instance>/api/v1/ingest/jobs/<job id>   until "JobComplete" (or "Failed")
with a Data Cloud token (the a360 token exchange) in "Authorization: Bearer ...".
"""


def _export(args: argparse.Namespace) -> int:
    from agent.fleet import STATUS_FIELDS, STATUS_OBJECT

    cfg = _config(args)
    schema = load_schema(cfg.datacloud.schema_path, cfg.datacloud.object_name)
    others: tuple[ExportObject, ...] = ()
    try:
        status_schema = load_schema(cfg.datacloud.schema_path, STATUS_OBJECT, STATUS_FIELDS)
    except SchemaError:
        pass       # a schema file without the status object: only readings can be exported for it
    else:
        others = (ExportObject(STATUS_OBJECT, CsvEncoder(status_schema), cfg.datacloud.status_endpoint_name),)
    try:
        result = export_backlog(cfg.outbox.path, args.out, CsvEncoder(schema), max_file_bytes=args.max_file_bytes,
                                object_name=cfg.datacloud.endpoint_name, source_name=cfg.datacloud.source_name,
                                others=others)
    except OutboxError as exc:
        return _fail(exc)
    except OSError as exc:
        print(f"Error: cannot write into {args.out}: {exc.strerror}", file=sys.stderr)
        print("Try: --out a directory you can write to, with room for the backlog (df -h)", file=sys.stderr)
        return EXIT_FAILED
    print(f"exported {result.rows} rows into {len(result.files)} CSV file(s) in {args.out}"
          f" ({result.first_time or '-'} .. {result.last_time or '-'})")
    for other in result.others:
        print(f"  and {other.rows} {other.object_name} rows (the gateway's status records) into "
              f"{len(other.files)} CSV file(s) of their own: one bulk job per object")
    print(f"see {args.out / 'MANIFEST.txt'} for how to upload them with a bulk job")
    print("the rows stay in the outbox until Data Cloud accepts them from the agent")
    return EXIT_OK
