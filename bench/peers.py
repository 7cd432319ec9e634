"""Peers: the same durable append through persist-queue and thingsboard-gateway's SQLite storage.

``python -m bench.peers [--quick]`` prints the rows; ``run(quick)`` returns them for results.md.

Workload (the same for everyone): the ~800-byte JSON records of bench/outbox.py, produced by ONE
producer in ONE process, in calls of ``BATCH`` records (one device poll), each call durable
before the next one starts; SQLite in WAL mode with synchronous=FULL. Compared:

* ours: ``Outbox.append(batch)`` (one transaction per call).
* raw: sqlite3 ``executemany`` of the batch + COMMIT, into the same table (the ceiling).
* persist-queue: ``SQLiteQueue.put(item)`` per record, as its API offers (each put is its own
  transaction: the library commits in ``with conn:`` around every insert; there is no batch put).
  Its connection is set to synchronous=FULL explicitly.
* thingsboard-gateway: ``SQLiteEventStorage.put(json)`` per record, as its connectors hand data to
  the gateway. Its put only queues the message in memory; a writer thread stores it later, so the
  time counted runs until every record is in its database file.

The peers run in their own throwaway virtualenvs under bench/out/ (created on first use with
pip; never the project's .venv), as subprocesses that print JSON. A peer that cannot be
installed or run is reported as skipped with the reason.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.config import OutboxConfig
from agent.outbox import Outbox
from bench.outbox import _raw_conn, _records

BATCH = 10
OUT = Path(__file__).resolve().parent / "out"
PEERS = {
    "persist-queue": ("venv-persistqueue", ["persist-queue"]),
    "thingsboard-gateway": ("venv-tbgw", ["thingsboard-gateway"]),
}

_PQ_SCRIPT = r"""
import json, sys, time
import persistqueue
from persistqueue import SQLiteQueue
payloads = json.load(open(sys.argv[1]))
batch = int(sys.argv[3])
q = SQLiteQueue(sys.argv[2], auto_commit=True, multithreading=False)
q._putter.execute("PRAGMA synchronous=FULL")
mode = q._putter.execute("PRAGMA journal_mode").fetchone()[0]
sync = q._putter.execute("PRAGMA synchronous").fetchone()[0]
t0 = time.perf_counter()
for i in range(0, len(payloads), batch):
    for p in payloads[i:i + batch]:
        q.put(p)
secs = time.perf_counter() - t0
assert q.qsize() == len(payloads), q.qsize()
print(json.dumps({"version": persistqueue.__version__, "seconds": secs, "n": len(payloads),
                  "journal_mode": mode, "synchronous": sync}))
"""

_TB_SCRIPT = r"""
import json, logging, os, sqlite3, sys, threading, time
from importlib.metadata import version
from thingsboard_gateway.storage.sqlite.sqlite_event_storage import SQLiteEventStorage
payloads = json.load(open(sys.argv[1]))
batch = int(sys.argv[3])
# The gateway's own defaults (tb_gateway.json "storage" section); the path is a directory + "/".
config = {"type": "sqlite", "data_file_path": os.path.join(sys.argv[2], ""), "messages_ttl_check_in_hours": 1,
          "messages_ttl_in_days": 7, "max_read_records_count": 1000}


class TbLogger(logging.Logger):
    def trace(self, *args, **kwargs):   # the gateway's logger class has a TRACE level
        pass


log = TbLogger("bench.tb")
log.addHandler(logging.NullHandler())
stop = threading.Event()
storage = SQLiteEventStorage(config, log, stop)
conn = storage._SQLiteEventStorage__write_database.db.connection
# The gateway opens with synchronous=NORMAL; the workload is FULL for everyone.
conn.execute("PRAGMA synchronous=FULL")
sync = conn.execute("PRAGMA synchronous").fetchone()[0]
db = os.path.join(sys.argv[2], "data.db")
probe = sqlite3.connect(db, timeout=30)
t0 = time.perf_counter()
for i in range(0, len(payloads), batch):
    for p in payloads[i:i + batch]:
        storage.put(p)
queued = time.perf_counter() - t0
deadline = time.monotonic() + 600
n = 0
while time.monotonic() < deadline:
    n = probe.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    if n >= len(payloads):
        break
    time.sleep(0.005)
secs = time.perf_counter() - t0
print(json.dumps({"version": version("thingsboard-gateway"), "seconds": secs, "n": n,
                  "put_returned_after_s": round(queued, 4), "synchronous": sync,
                  "journal_mode": probe.execute("PRAGMA journal_mode").fetchone()[0]}))
sys.stdout.flush()
os._exit(0)   # its database threads are daemons polling a stop event; no need to wait for them
"""


_CAVEATS = {
    "persist-queue": "one transaction (one fsync) per put; ",
    "thingsboard-gateway": ("NOT the same guarantee: put() only queues in memory (all puts returned after "
                            "put_returned_after_s), its writer thread commits up to 1000 queued records per "
                            "transaction, so records are lost on a crash until then; timed until all are stored; "),
}


def _venv_python(name: str) -> tuple[Path | None, str]:
    """The peer venv's python, creating it on first use; (None, reason) when that fails."""
    venv, packages = PEERS[name]
    root = OUT / venv
    py = root / "bin" / "python"
    stamp = root / ".bench-installed"
    if stamp.exists():
        return py, ""
    OUT.mkdir(parents=True, exist_ok=True)
    steps = [[sys.executable, "-m", "venv", str(root)],
             [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages]]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"{' '.join(cmd[-2:])}: {exc}"
        if proc.returncode != 0:
            tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            return None, f"pip install {' '.join(packages)} failed: {tail[:300]}"
    stamp.touch()
    return py, ""


def _run_peer(name: str, script: str, payload_file: Path, workdir: Path) -> dict[str, Any]:
    py, reason = _venv_python(name)
    if py is None:
        return {"skipped": reason}
    workdir.mkdir()
    try:
        proc = subprocess.run([str(py), "-c", script, str(payload_file), str(workdir), str(BATCH)],
                              capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": "did not finish within 900 s"}
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        return {"skipped": f"exit code {proc.returncode}: {tail[:400]}"}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _raw_rate(path: Path, records: list[Any]) -> float:
    conn = _raw_conn(path)
    rows = [(r.event_id, len(r.payload), 0, r.time_ms, r.payload) for r in records]
    sql = "INSERT OR IGNORE INTO events (event_id, bytes, enqueued_ms, time_ms, payload) VALUES (?, ?, ?, ?, ?)"
    t0 = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[i:i + BATCH])
        conn.execute("COMMIT")
    secs = time.perf_counter() - t0
    conn.close()
    return len(rows) / secs


async def _ours_rate(path: Path, records: list[Any]) -> float:
    async with Outbox(OutboxConfig(path=path, synchronous="full")) as box:
        t0 = time.perf_counter()
        for i in range(0, len(records), BATCH):
            await box.append(records[i:i + BATCH])
        return len(records) / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Ours and raw first, then each peer on the same records (2,000 quick, 10,000 full)."""
    n = 2000 if quick else 10_000
    records = _records(n)
    size = sum(len(r.payload) for r in records) // n
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_s:
        tmp = Path(tmp_s)
        payload_file = tmp / "payloads.json"
        payload_file.write_text(json.dumps([r.payload.decode() for r in records]))
        raw = _raw_rate(tmp / "raw.db", records)
        ours = asyncio.run(_ours_rate(tmp / "ours.db", records))
        peers = {"persist-queue": _run_peer("persist-queue", _PQ_SCRIPT, payload_file, tmp / "pq"),
                 "thingsboard-gateway": _run_peer("thingsboard-gateway", _TB_SCRIPT, payload_file, tmp / "tb")}
    rows: list[dict[str, Any]] = [
        {"name": f"durable append, 1 producer, {BATCH} records/call, ~{size} B, FULL: ours vs raw sqlite3 "
                 "executemany", "ours": round(ours), "raw": round(raw), "ratio": round(ours / raw, 2),
         "unit": "records/s"},
    ]
    labels = {"persist-queue": "SQLiteQueue.put per record", "thingsboard-gateway": "SQLiteEventStorage.put per record"}
    for name, res in peers.items():
        label = f"same workload: ours vs {name} {res.get('version', '')} ({labels[name]})".replace("  ", " ")
        if "skipped" in res:
            rows.append({"name": label, "ours": round(ours), "raw": None, "ratio": None, "unit": "records/s",
                         "skipped": res["skipped"]})
            continue
        rate = res["n"] / res["seconds"]
        extra = {k: v for k, v in res.items() if k not in ("version", "seconds", "n")}
        caveat = _CAVEATS.get(name, "")
        rows.append({"name": label, "ours": round(ours), "raw": round(rate), "ratio": round(ours / rate, 2),
                     "unit": "records/s",
                     "note": f"{name} at {rate / raw:.2f}x raw sqlite3 executemany; {caveat}{json.dumps(extra)}"})
    return rows


def _main() -> None:
    from bench._common import console_line
    for row in run(quick="--quick" in sys.argv):
        print(console_line(row))
        if row.get("note"):
            print(f"      note: {row['note']}")


if __name__ == "__main__":
    _main()
