"""`solar-agent support-bundle`: everything a maintainer needs about one gateway, in one tar.gz, no secret.

What goes in (``MANIFEST.txt`` lists each file, and each part that was skipped with the reason):

* ``config/site.toml``: the resolved config, as ``check-config`` prints it (the config holds no
  secret, only the paths of the files that do). A config that does not load goes in as its errors
  and its raw text with every secret-looking value masked;
* ``status.json``: the running agent's status and health (from its socket), else the outbox's
  totals read read-only;
* ``doctor.txt``: the doctor's checks that are safe while the agent runs (config, key file, MQTT
  brokers under their own client id, Data Cloud login and one dry run, clock, disk, outbox). The
  serial and Modbus checks run only when the agent does not: a second master on an RS-485 bus
  garbles the agent's requests, and an inverter's Modbus TCP server may take one client only;
* ``outbox/``: totals, the newest dead letters and rejected inputs (``MAX_ROWS`` each);
* ``versions.json``: the agent, Python, SQLite, the platform, every installed distribution;
* ``systemd/``: the unit file and its drop-ins, when present;
* ``journal.txt``: the journal's tail (``journalctl -u solar-agent``), when it can be read.

Secrets: nothing here opens a secret file to put it in the bundle. Every text that goes in passes
:class:`Scrubber` last: the log redaction (tokens, JWTs, PEM blocks, ``password=``-style pairs),
no ``Bearer`` word at all, and the exact contents of the secret files the config names (the
private key's body, the MQTT password files, the status token file), read only to be masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import io
import json
import os
import platform
import re
import socket
import sqlite3
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from agent import __version__
from agent.config import AgentConfig, config_errors, load_config, resolve_config_path, to_toml
from agent.errors import AgentError, ConfigError, OutboxError
from agent.log import redact
from agent.outbox import open_readonly, read_stats
from agent.records import format_time

__all__ = ["MAX_ROWS", "Bundle", "BundleOptions", "Scrubber", "build_bundle", "default_output", "write_bundle"]

MAX_ROWS: Final = 100
JOURNAL_LINES: Final = 2000
UNIT_FILES: Final = (Path("/etc/systemd/system/solar-agent.service"), Path("/lib/systemd/system/solar-agent.service"),
                     Path("/usr/lib/systemd/system/solar-agent.service"))
DROP_IN_DIRS: Final = (Path("/etc/systemd/system/solar-agent.service.d"),
                       Path("/run/systemd/system/solar-agent.service.d"))
DEFAULT_SOCKET: Final = Path("/run/solar-agent/status.sock")
# Shorter secret values are not masked literally: "pass" would mask half the log. They are still
# caught by the pattern rules wherever they appear as key=value.
MIN_LITERAL_SECRET: Final = 6

_BEARER_WORD = re.compile(r"(?i)\bbearer(?=\s|%20)")
# key = value lines of a raw TOML file whose key names a secret (not a *_path / *_file naming one).
_SECRET_LINE = re.compile(r"""(?im)^(\s*"?[A-Za-z0-9_.-]*(?:pass|secret|token|private|credential|apikey|api_key)"""
                          r"""[A-Za-z0-9_.-]*"?\s*=\s*)(.+)$""")
# SetCredential=NAME:VALUE puts the secret itself in a unit file.
_SET_CREDENTIAL = re.compile(r"(?m)^(\s*SetCredential(?:Encrypted)?\s*=\s*[^:\s]+:)(.*)$")


class Scrubber:
    """The last pass over every text of the bundle (see the module docstring)."""

    def __init__(self, literals: Iterable[str] = ()) -> None:
        # Longest first: a key's whole body is masked before any of its lines is.
        self.literals = sorted({s for s in literals if len(s) >= MIN_LITERAL_SECRET}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self.literals:
            text = text.replace(secret, "[REDACTED secret file content]")
        text = redact(text)
        return _BEARER_WORD.sub("[auth scheme]", text)


def secret_literals(cfg: AgentConfig) -> tuple[list[str], list[str]]:
    """The contents of the secret files the config names, to be masked; and the files that could not be read."""
    paths = [cfg.datacloud.private_key_path, *(f.password_file for f in cfg.mqtt), cfg.status.token_file]
    found: list[str] = []
    unread: list[str] = []
    for path in paths:
        if path is None:
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            unread.append(f"{path} ({exc.strerror or exc})")
            continue
        found.append(text.strip())
        # Line by line too (a key's body lines): a log line may hold a piece of it.
        found += [line.strip() for line in text.splitlines() if line.strip() and "-----" not in line]
    return found, unread


@dataclass(frozen=True, slots=True)
class Entry:
    name: str          # path inside the archive
    data: bytes
    what: str          # one line for the MANIFEST


@dataclass(slots=True)
class Bundle:
    entries: list[Entry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)     # (part, why)
    running: bool = False
    config_path: str = ""
    notes: list[str] = field(default_factory=list)
    scrub: Scrubber = field(default_factory=Scrubber)   # applied to every file, the MANIFEST included


@dataclass(frozen=True, slots=True)
class BundleOptions:
    """Where to look. Tests point these at their own files and peers."""

    config: str | None = None
    socket: Path | None = None
    credentials_dir: Path | None = None
    timeout_seconds: float = 10.0
    journal: bool = True
    journal_command: Sequence[str] = ("journalctl", "-u", "solar-agent", "-n", str(JOURNAL_LINES), "--no-pager",
                                      "--output", "short-iso-precise")
    unit_files: Sequence[Path] = UNIT_FILES
    drop_in_dirs: Sequence[Path] = DROP_IN_DIRS


Progress = Callable[[str, str], None]


async def build_bundle(opts: BundleOptions, progress: Progress) -> Bundle:
    """Collect every part (each in its own guard: a part that fails is skipped with its reason)."""
    b = Bundle()
    config_path = resolve_config_path(opts.config)
    b.config_path = str(config_path)
    # None: like every technician's command, $CREDENTIALS_DIRECTORY, else beside the config file.
    creds = opts.credentials_dir
    cfg: AgentConfig | None = None
    try:
        cfg = await asyncio.to_thread(load_config, config_path, credentials_dir=creds)
    except ConfigError as exc:
        errors = "\n".join(f"{e.message}" + (f"\n  Try: {e.hint}" if e.hint else "") for e in config_errors(exc))
        b.entries.append(Entry("config/errors.txt", errors.encode(), "why the config does not load"))
        raw = _read_text(config_path)
        if raw is not None:
            b.entries.append(Entry("config/site.toml.raw", _mask_raw_config(raw).encode(),
                                   "the config file as written, secret-looking values masked"))
        progress("config", "INVALID (see config/errors.txt)")
    else:
        literals, unread = await asyncio.to_thread(secret_literals, cfg)
        b.scrub = Scrubber(literals)
        for what in unread:
            b.notes.append(f"secret file {what} could not be read to mask its content; pattern masking only")
        b.entries.append(Entry("config/site.toml", to_toml(cfg).encode(),
                               "the resolved config (check-config); it names secret files, never holds them"))
        progress("config", f"ok ({cfg.source_file})")
    socket_path = opts.socket or (cfg.status.socket_path if cfg is not None else DEFAULT_SOCKET)
    await _status(b, cfg, socket_path, progress)
    await _doctor(b, opts, creds, progress)
    await asyncio.to_thread(_outbox, b, cfg, progress)
    b.entries.append(Entry("versions.json", _json(_versions()), "agent, Python, SQLite, platform, libraries"))
    progress("versions", "ok")
    await asyncio.to_thread(_unit_files, b, opts)
    progress("unit file", "ok" if any(e.name.startswith("systemd/") for e in b.entries) else "not found")
    if opts.journal:
        await _journal(b, opts, progress)
    else:
        b.skipped.append(("journal.txt", "--no-journal"))
        progress("journal", "skipped (--no-journal)")
    b.entries = [Entry(e.name, b.scrub.text(e.data.decode("utf-8", "replace")).encode(), e.what) for e in b.entries]
    return b


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _mask_raw_config(raw: str) -> str:
    text = _SECRET_LINE.sub(lambda m: m[1] + '"[REDACTED]"' if not m[1].rstrip(' ="').endswith(("_path", "_file"))
                            else m[0], raw)
    return re.sub(r"(?i)(://)[^/@\s\"']+@", r"\1[REDACTED]@", text)


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode()


async def _status(b: Bundle, cfg: AgentConfig | None, socket_path: Path, progress: Progress) -> None:
    from agent.status import fetch_status

    try:
        status = await fetch_status(socket_path, timeout_seconds=5.0)
    except AgentError as exc:
        b.skipped.append(("status.json (running agent)", f"{socket_path}: {exc.message}"))
        status = None
    if status is not None:
        b.running = True
        b.entries.append(Entry("status.json", _json(status), f"the running agent's status and health ({socket_path})"))
        progress("status", f"ok (the agent is running, {socket_path})")
        return
    doc: dict[str, Any] = {"running": False, "socket": str(socket_path)}
    if cfg is not None:
        try:
            doc["outbox"] = asdict(await asyncio.to_thread(read_stats, cfg.outbox.path))
        except OutboxError as exc:
            doc["outbox_error"] = exc.message
    b.entries.append(Entry("status.json", _json(doc), "the agent is NOT running: the outbox's totals, read-only"))
    progress("status", f"the agent is not running (nothing answers on {socket_path})")


async def _doctor(b: Bundle, opts: BundleOptions, creds: Path | None, progress: Progress) -> None:
    from agent.doctor import run_checks

    lines: list[str] = []
    counts = {"PASS": 0, "WARN": 0, "FAIL": 0}
    try:
        async for r in run_checks(opts.config, timeout_seconds=opts.timeout_seconds, devices=not b.running,
                                  credentials_dir=creds):
            counts[r.status] += 1
            lines.append(r.line())
            if r.hint and r.status != "PASS":
                lines.append(f"     Try: {r.hint}")
    except Exception as exc:  # a part of the bundle, never the whole: say what broke and go on
        lines.append(f"doctor stopped: {type(exc).__name__}: {exc}")
    if b.running:
        b.skipped.append(("doctor: serial port and modbus checks",
                          "the agent is running: a second Modbus master garbles its requests "
                          "(stop it and run `solar-agent doctor` for those)"))
    lines.append(f"doctor: {counts['PASS']} passed, {counts['WARN']} warning(s), {counts['FAIL']} failed")
    b.entries.append(Entry("doctor.txt", ("\n".join(lines) + "\n").encode(),
                           "solar-agent doctor" + (" (without the device checks: the agent runs)" if b.running
                                                   else " (every check)")))
    progress("doctor", f"{counts['PASS']} passed, {counts['WARN']} warning(s), {counts['FAIL']} failed")


def _outbox(b: Bundle, cfg: AgentConfig | None, progress: Progress) -> None:
    if cfg is None:
        b.skipped.append(("outbox/", "no config: the outbox's path is unknown"))
        progress("outbox", "skipped (no config)")
        return
    path = cfg.outbox.path
    try:
        stats = read_stats(path)
        with open_readonly(path) as conn:
            conn.execute("BEGIN")
            dead = _rows(conn, "dead_letters", "event_id, reason, rejected_ms, object, payload",
                         "ORDER BY rejected_ms DESC, event_id")
            rejected = _rows(conn, "rejected_inputs", "source, topic, reason, detail, payload_bytes, payload_head, "
                                                      "first_ms, last_ms, count", "ORDER BY last_ms DESC, id DESC")
            conn.execute("COMMIT")
    except OutboxError as exc:
        b.skipped.append(("outbox/", f"{path}: {exc.message}"))
        progress("outbox", f"skipped ({exc.message})")
        return
    b.entries.append(Entry("outbox/stats.json", _json({"path": str(path), **asdict(stats)}),
                           "outbox totals, read-only"))
    b.entries.append(Entry("outbox/dead_letters.jsonl", _jsonl(dead),
                           f"the newest {len(dead)} of {stats.dead_letters} dead letters (at most {MAX_ROWS})"))
    b.entries.append(Entry("outbox/rejected_inputs.jsonl", _jsonl(rejected),
                           f"the newest {len(rejected)} of {stats.rejected_inputs} rejected inputs "
                           f"(at most {MAX_ROWS})"))
    progress("outbox", f"ok ({stats.rows} rows, {stats.dead_letters} dead letters, "
                       f"{stats.rejected_inputs} rejected inputs)")


def _rows(conn: sqlite3.Connection, table: str, columns: str, order: str) -> list[dict[str, Any]]:
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    if not have:
        return []
    cols = [c.strip() for c in columns.split(",")]
    sql_cols = ", ".join(c if c in have else "NULL" for c in cols)
    out = []
    for row in conn.execute(f"SELECT {sql_cols} FROM {table} {order} LIMIT ?", (MAX_ROWS,)):
        doc = {}
        for name, value in zip(cols, row, strict=True):
            if isinstance(value, bytes):
                value = value.decode("utf-8", "backslashreplace")
            elif name.endswith("_ms") and isinstance(value, int):
                name, value = name[:-3], format_time(value)
            doc[name] = value
        out.append(doc)
    return out


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rows).encode()


def _versions() -> dict[str, Any]:
    dists = sorted(((d.metadata["Name"] or "?", d.version) for d in importlib.metadata.distributions()),
                   key=lambda nv: nv[0].lower())
    return {
        "agent": __version__,
        "python": sys.version,
        "python_executable": sys.executable,
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": socket.gethostname(),
        "distributions": {name: version for name, version in dists},
    }


def _unit_files(b: Bundle, opts: BundleOptions) -> None:
    unit = next((p for p in opts.unit_files if p.is_file()), None)
    if unit is None:
        b.skipped.append(("systemd/solar-agent.service", "no unit file in " + ", ".join(map(str, opts.unit_files))))
    else:
        text = _read_text(unit)
        if text is None:
            b.skipped.append(("systemd/solar-agent.service", f"{unit} cannot be read"))
        else:
            b.entries.append(Entry("systemd/solar-agent.service", _mask_unit(text).encode(), f"the unit file ({unit})"))
    for d in opts.drop_in_dirs:
        for conf in sorted(d.glob("*.conf")) if d.is_dir() else []:
            text = _read_text(conf)
            if text is not None:
                b.entries.append(Entry(f"systemd/drop-ins/{d.parent.name}-{conf.name}", _mask_unit(text).encode(),
                                       f"a drop-in of the unit ({conf})"))


def _mask_unit(text: str) -> str:
    return _SET_CREDENTIAL.sub(lambda m: m[1] + "[REDACTED]", text)


async def _journal(b: Bundle, opts: BundleOptions, progress: Progress) -> None:
    cmd = list(opts.journal_command)
    try:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        why = f"{cmd[0]} is not available ({exc.strerror or exc})"
        b.skipped.append(("journal.txt", why))
        progress("journal", f"skipped ({why})")
        return
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=max(opts.timeout_seconds, 10.0))
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        why = f"{' '.join(cmd)} did not finish within {max(opts.timeout_seconds, 10.0):g}s"
        b.skipped.append(("journal.txt", why))
        progress("journal", f"skipped ({why})")
        return
    text = out.decode("utf-8", "replace")
    problem = err.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not text.strip() or text.strip() == "-- No entries --":
        why = (problem[0] if problem else text.strip() or "no output") + f" (exit {proc.returncode})"
        if "permission" in why.lower() or "not seeing messages" in why.lower():
            why += "; run with sudo or as a member of systemd-journal"
        b.skipped.append(("journal.txt", why))
        progress("journal", f"skipped ({why})")
        return
    b.entries.append(Entry("journal.txt", out, f"the last {JOURNAL_LINES} journal lines of the unit ({cmd[0]})"))
    if problem:
        b.notes.append(f"journalctl said: {problem[0]}")
    progress("journal", f"ok ({text.count(chr(10))} lines)")


def manifest(b: Bundle, out: Path) -> str:
    lines = [
        "solar-agent support bundle",
        f"created    {format_time(time.time_ns() // 1_000_000)} on {socket.gethostname()}",
        f"agent      {__version__}, {'RUNNING' if b.running else 'NOT running'}",
        f"config     {b.config_path}",
        f"archive    {out.name}",
        "",
        "Secrets: no secret file is in this bundle. Every file passed a last scrub: tokens, JWTs, PEM",
        "blocks, the values of password-, token- and secret-like keys, and the exact contents of the",
        "secret files the config names are replaced by [REDACTED ...].",
        "",
        "files:",
    ]
    lines += [f"  {e.name:34} {len(e.data):>9} bytes  {e.what}" for e in b.entries]
    lines += ["", "skipped:"] + ([f"  {name}: {why}" for name, why in b.skipped] or ["  nothing"])
    if b.notes:
        lines += ["", "notes:"] + [f"  {n}" for n in b.notes]
    return b.scrub.text("\n".join(lines) + "\n")


def default_output(now_ms: int | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime((now_ms or time.time_ns() // 1_000_000) / 1000))
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "gateway"
    return Path(f"solar-agent-support-{host}-{stamp}.tar.gz")


def write_bundle(b: Bundle, out: Path) -> int:
    """Write the archive atomically (a temp file renamed), mode 0600; returns its size.

    Raises:
        OSError: the directory cannot be written.
    """
    out = out.resolve()
    root = out.name.removesuffix(".tar.gz").removesuffix(".tgz")
    files = [*b.entries, Entry("MANIFEST.txt", manifest(b, out).encode(), "this list")]
    fd, tmp = tempfile.mkstemp(prefix=".support-bundle-", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh, tarfile.open(fileobj=fh, mode="w:gz") as tar:
            now = time.time()
            for e in files:
                info = tarfile.TarInfo(f"{root}/{e.name}")
                info.size = len(e.data)
                info.mtime = int(now)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(e.data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out.stat().st_size
